"""``python -m context_research.device_lock sample --root PID --out FILE [--interval S] [--devices JSON]``:
the contention sampler, which ``ContentionMonitor`` starts."""

import sys

from .lockfile import _sampler_main

if sys.argv[1:2] == ["sample"]:
    sys.exit(_sampler_main(sys.argv[2:]))
sys.exit("usage: python -m context_research.device_lock sample --root PID --out FILE [--interval S] [--devices JSON]")
