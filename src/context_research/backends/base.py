"""The serving-backend interface: start, stop, warmup, generate."""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..records import GenerationRequest, RequestRecord


class ServingBackend(abc.ABC):
    """A running model server the client can stream from.

    ``mode`` is ``"real"`` for the vLLM engine and ``"simulated"`` for the opt-in stand-in; it is
    stamped into every artifact.
    """

    mode: str = "real"

    def __init__(self, model: dict[str, Any], serving: dict[str, Any], log_path: str | os.PathLike):
        self.model = model
        self.serving = serving
        self.log_path = Path(log_path)

    @property
    def served_name(self) -> str:
        return self.model.get("served_name") or self.model["name"]

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server and return once it answers; raise EngineStartError if it cannot."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server and everything it spawned. Safe to call twice."""

    @abc.abstractmethod
    async def generate(self, req: GenerationRequest, run_t0: float) -> RequestRecord:
        """Serve one request and measure it."""

    async def warmup(self, requests: list[GenerationRequest]) -> list[RequestRecord]:
        import time

        t0 = time.perf_counter()
        return [await self.generate(r, t0) for r in requests]

    def metrics_text(self) -> str | None:
        """Prometheus exposition text, or None when the backend has none."""
        return None

    def gauges(self, names: tuple[str, ...]) -> dict[str, float] | None:
        """The current values of the gauges ``names`` (``engine_metrics.parse_gauges``), or None
        when the backend has no /metrics. A backend that can ask for just these overrides it."""
        from ..engine_metrics import parse_gauges

        text = self.metrics_text()
        return None if text is None else parse_gauges(text, names)

    def exit_reason(self) -> str | None:
        """None while the server runs; once it has exited, why (for failed rows and the error)."""
        return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode}


BACKEND_MODES = {"vllm": "real", "simulated": "simulated"}


def backend_mode(serving: dict[str, Any]) -> str:
    """``real`` or ``simulated``: what every artifact of a run with these settings is stamped with."""
    kind = serving.get("backend", "vllm")
    try:
        return BACKEND_MODES[kind]
    except KeyError:
        raise ConfigError(f"config key 'serving.backend': unknown backend {kind!r}; "
                          f"known: {', '.join(BACKEND_MODES)}") from None
