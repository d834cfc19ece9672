"""``python -m context_research.device_lock sample --root PID --out FILE [--interval S] [--devices JSON]``:
the contention sampler (``sampler.main``), which ``sampler.ContentionMonitor`` starts."""

import sys

from .sampler import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["sample"]:
        sys.exit(main(sys.argv[2:]))
    sys.exit("usage: python -m context_research.device_lock sample --root PID --out FILE [--interval S] [--devices JSON]")
