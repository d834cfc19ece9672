"""One line per finished sweep point on stderr."""

from __future__ import annotations

import sys
import time


class PointProgress:
    """One line per finished sweep point on stderr (the rule's log): index, share done, elapsed
    time and a naive ETA, so a long sweep in a log file shows where it is."""

    def __init__(self, experiment: str, total: int, stream=None):
        self.experiment = experiment
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def point(self, label: str, detail: str = "") -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.experiment} {self.done}/{self.total} {self.done / max(self.total, 1):4.0%}] {label}"
              f"{': ' + detail if detail else ''} (elapsed {elapsed:.0f} s, eta ~{eta:.0f} s)",
              file=self.stream, flush=True)
