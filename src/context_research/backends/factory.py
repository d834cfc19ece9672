"""The backend a validated config asks for: the real vLLM server, or the opt-in simulated one.

Apart from ``base`` so that the backends import the interface and the interface imports no
backend.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from .base import ServingBackend


def make_backend(model: dict[str, Any], serving: dict[str, Any], log_path: str | os.PathLike) -> ServingBackend:
    """The backend the (validated) config asks for."""
    kind = serving.get("backend", "vllm")
    if kind == "vllm":
        from .vllm_server import VllmServerBackend

        return VllmServerBackend(model, serving, log_path)
    if kind == "simulated":
        from ..config import SIMULATED_OPT_IN_ENV
        from .simulated import SimulatedBackend

        if os.environ.get(SIMULATED_OPT_IN_ENV) != "1":
            raise ConfigError(f"serving.backend is 'simulated' but {SIMULATED_OPT_IN_ENV}=1 is not set")
        return SimulatedBackend(model, serving, log_path)
    raise ConfigError(f"config key 'serving.backend': unknown backend {kind!r}")
