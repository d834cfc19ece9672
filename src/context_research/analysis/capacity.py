"""Capacity search: the highest Poisson request rate whose SLO attainment meets a target.

This is DistServe's goodput (Zhong et al., OSDI'24): the largest request rate a system sustains
while at least ``attainment_target`` of its requests meet every SLO. It is a property of the
system found by probing rates, unlike ``vllm bench serve``'s per-run goodput (requests meeting
both SLOs per second of one run; ``analysis.latency.goodput``).

The search is a state machine (``CapacitySearch``) that knows nothing of engines: ask it for
``next_rate()``, measure that rate, ``record()`` the attainment, repeat until ``next_rate()`` is
None. Rules, in order:

1. bracket: probe ``start_rate_rps``; while every probe passes, multiply the rate by
   ``growth_factor``; while every probe fails, divide it, down to ``min_rate_rps``;
2. bisect: once a passing rate ``low`` is below a failing rate ``high``, probe their geometric
   mean (rates span orders of magnitude; the relative tolerance is the stopping rule);
3. stop when ``high / low - 1 <= rel_tol`` (converged), after ``max_probes`` probes (budget; a
   budget spent while every probe passed says so, since the capacity is then only a lower bound),
   when growth passes ``max_rate_rps`` with every probe passing (not bracketed above) or when even
   ``min_rate_rps`` fails (no passing rate).

The capacity reported is ``low``, the highest rate that passed (a lower bound: never a rate that
was not seen to pass), with the bracket [low, high]. Bisection assumes attainment falls as the
rate rises; a probe that breaks that (a pass above a fail) is kept as a row and noted.
A probe that could not be measured (``attainment=None``) counts as a failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

CONVERGED = "converged"
BUDGET = "probe budget exhausted"
BUDGET_ALL_PASSED = "probe budget exhausted with every probe passing: capacity is at least capacity_low_rps"
NOT_BRACKETED = "every probe passed up to max_rate_rps: capacity is at least capacity_low_rps"
NONE_PASSED = "even min_rate_rps missed the attainment target"


@dataclass(frozen=True)
class Probe:
    rate_rps: float
    attainment: float | None
    passed: bool
    phase: str  # "bracket" or "bisect"


@dataclass
class CapacitySearch:
    start_rate_rps: float
    attainment_target: float = 0.9
    rel_tol: float = 0.1
    max_probes: int = 8
    growth_factor: float = 2.0
    min_rate_rps: float = 0.01
    max_rate_rps: float = 1e4
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self):
        if not (self.start_rate_rps > 0 and self.growth_factor > 1 and self.rel_tol > 0 and self.max_probes >= 1
                and 0 < self.attainment_target <= 1 and 0 < self.min_rate_rps <= self.max_rate_rps):
            raise ValueError(f"invalid capacity search settings: {self!r}")

    # -- the bracket ----------------------------------------------------------------------------
    @property
    def low(self) -> float | None:
        """The highest rate that passed."""
        return max((p.rate_rps for p in self.probes if p.passed), default=None)

    @property
    def high(self) -> float | None:
        """The lowest failing rate above ``low`` (any failing rate when none passed)."""
        low = self.low
        return min((p.rate_rps for p in self.probes if not p.passed and (low is None or p.rate_rps > low)),
                   default=None)

    def converged(self) -> bool:
        low, high = self.low, self.high
        return low is not None and high is not None and high / low - 1 <= self.rel_tol

    # -- the steps ------------------------------------------------------------------------------
    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the search has stopped (``stop_reason``)."""
        if self.stop_reason() is not None:
            return None
        if not self.probes:
            return self.start_rate_rps
        low, high = self.low, self.high
        if low is not None and high is not None:
            return math.sqrt(low * high)
        if high is None:  # every probe passed: grow
            return min(low * self.growth_factor, self.max_rate_rps)
        return max(high / self.growth_factor, self.min_rate_rps)  # every probe failed: shrink

    def record(self, rate_rps: float, attainment: float | None) -> Probe:
        passed = attainment is not None and attainment >= self.attainment_target
        phase = "bisect" if self.low is not None and self.high is not None else "bracket"
        probe = Probe(rate_rps, attainment, passed, phase)
        self.probes.append(probe)
        return probe

    def stop_reason(self) -> str | None:
        if self.converged():
            return CONVERGED
        low, high = self.low, self.high
        if high is None and low is not None and low >= self.max_rate_rps:
            return NOT_BRACKETED
        if low is None and high is not None and high <= self.min_rate_rps:
            return NONE_PASSED
        if len(self.probes) >= self.max_probes:
            return BUDGET_ALL_PASSED if high is None and low is not None else BUDGET
        return None

    def non_monotonic(self) -> list[Probe]:
        """Passing probes above a failing one: attainment rose with the rate (noise, or a probe
        disturbed by something else); bisection then trusts the highest pass."""
        fails = [p.rate_rps for p in self.probes if not p.passed]
        return [p for p in self.probes if p.passed and any(f < p.rate_rps for f in fails)]

    def result(self) -> dict[str, object]:
        """The capacity.csv fields of a finished (or stopped) search."""
        low, high = self.low, self.high
        reason = self.stop_reason() or BUDGET
        odd = self.non_monotonic()
        return {
            "capacity_rps": low,
            "capacity_low_rps": low if low is not None else 0.0,
            "capacity_high_rps": high,
            "attainment_target": self.attainment_target,
            "rel_tol": self.rel_tol,
            "probes": len(self.probes),
            "max_probes": self.max_probes,
            "converged": reason == CONVERGED,
            "stop_reason": reason,
            "non_monotonic_note": ("attainment rose with the rate at " + ", ".join(f"{p.rate_rps:g}" for p in odd)
                                   + " req/s (a pass above a failing rate)") if odd else None,
        }


def run_search(search: CapacitySearch, attainment_at: Callable[[float], float | None]) -> CapacitySearch:
    """Drive ``search`` with a synchronous probe function (tests, offline replays)."""
    while (rate := search.next_rate()) is not None:
        search.record(rate, attainment_at(rate))
    return search
