"""Capacity search: the highest Poisson request rate the engine sustained with its SLOs met.

This is DistServe's goodput (Zhong et al., OSDI'24): the largest request rate a system sustains
while at least ``attainment_target`` of its requests meet every SLO. It is a property of the
system found by probing rates, unlike ``vllm bench serve``'s per-run goodput (requests meeting
both SLOs per second of one run; ``analysis.latency.goodput``).

Each probe gets a verdict (``analysis.probe``): pass, fail, inconclusive (near the capacity a
probe often cannot tell) or invalid (stopped early, failed, or implausible: neither pass nor
fail). A rate's verdict is that of its last judged (not invalid) probe. The search is a state
machine (``CapacitySearch``) that knows nothing of engines: ask it for ``next_probe()`` (a rate and
a length, in minimum windows), probe it, ``record()`` the verdict, until it returns None. Rules,
in order:

1. an invalid probe is probed again at its rate, once; a second invalid verdict in a row there
   stops the search with its reason;
2. an inconclusive probe that asks for a longer probe (``Verdict.extend``) is probed again at its
   rate, that much longer, once;
3. bracket: probe ``start_rate_rps``; while every rate passes, multiply the rate by
   ``growth_factor``; while none passes, divide the lowest rate not shown to pass by it, down to
   ``min_rate_rps``;
4. bisect: probe the geometric mean of ``low`` (the highest rate that passed) and ``ceiling`` (the
   lowest rate above it that did not: failed or inconclusive);
5. confirm: once ``ceiling / low - 1 <= rel_tol``, ``low`` is probed once more unless it already
   passed twice. One pass close to the capacity can be a probe that saw no burst of arrivals
   (in the simulations of ``analysis.queue_sim`` this step halves the brackets that miss the
   truth); a confirmation that does not pass takes the rate out of ``low`` and the search goes
   on below it;
6. stop once ``low`` is confirmed within ``rel_tol`` of the ceiling (converged when the ceiling
   failed; resolved when it was inconclusive: the probes cannot tell rates that close to the
   capacity apart), after ``max_probes`` probes, when growth passes ``max_rate_rps`` with every
   rate passing, or when even ``min_rate_rps`` did not pass.

The capacity reported is ``low``, a rate that passed, so never above (1 + rate_tolerance) x what
its probe completed. The bracket is [low, high): ``high`` is the lowest rate above ``low`` that
FAILED. An inconclusive rate is never a bracket end, so the bracket may be wider than the
ceiling, or open above. It is a bracket from probes, not a confidence interval:
``analysis.queue_sim`` measures how often it holds a simulated server's true capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .probe import FAIL, INCONCLUSIVE, INVALID, PASS, Verdict

CONVERGED = "converged"
RESOLVED = ("resolved: the lowest rate above capacity_low_rps that did not pass was inconclusive (its attainment "
            "cannot be told from the target); no rate in between is left to probe")
BUDGET = "probe budget exhausted"
BUDGET_ALL_PASSED = "probe budget exhausted with every probe passing: capacity is at least capacity_low_rps"
NOT_BRACKETED = "every probe passed up to max_rate_rps: capacity is at least capacity_low_rps"
NONE_PASSED = "no rate passed down to min_rate_rps"
INVALID_TWICE = "two probes in a row at one rate could not be judged"
UNCONFIRMED = "probe budget exhausted before capacity_low_rps passed a second probe"
STOP_REASONS = (CONVERGED, RESOLVED, BUDGET, BUDGET_ALL_PASSED, NOT_BRACKETED, NONE_PASSED, INVALID_TWICE,
                UNCONFIRMED)


@dataclass(frozen=True)
class Probe:
    rate_rps: float
    verdict: Verdict
    phase: str  # bracket, bisect, confirm, repeat (after an invalid probe) or extend (after an inconclusive one)
    length: float = 1.0  # its window, in minimum windows

    @property
    def outcome(self) -> str:
        return self.verdict.outcome

    @property
    def passed(self) -> bool:
        return self.outcome == PASS


@dataclass
class CapacitySearch:
    start_rate_rps: float
    attainment_target: float = 0.9
    rel_tol: float = 0.1
    max_probes: int = 8
    growth_factor: float = 2.0
    min_rate_rps: float = 0.01
    max_rate_rps: float = 1e4
    confirm: bool = True  # probe the capacity a second time before stopping on it
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self):
        if not (self.start_rate_rps > 0 and self.growth_factor > 1 and self.rel_tol > 0 and self.max_probes >= 1
                and 0 < self.attainment_target <= 1 and 0 < self.min_rate_rps <= self.max_rate_rps):
            raise ValueError(f"invalid capacity search settings: {self!r}")

    # -- the bracket ----------------------------------------------------------------------------
    def outcomes(self) -> dict[float, str]:
        """Each probed rate's verdict: that of its last probe that was judged (not invalid)."""
        return {p.rate_rps: p.outcome for p in self.probes if p.outcome != INVALID}

    @property
    def low(self) -> float | None:
        """The highest rate whose verdict is a pass."""
        return max((r for r, o in self.outcomes().items() if o == PASS), default=None)

    def _lowest_above_low(self, kinds: tuple[str, ...]) -> float | None:
        low = self.low
        return min((r for r, o in self.outcomes().items() if o in kinds and (low is None or r > low)), default=None)

    @property
    def high(self) -> float | None:
        """The lowest rate above ``low`` that failed (any failing rate when none passed)."""
        return self._lowest_above_low((FAIL,))

    @property
    def ceiling(self) -> float | None:
        """The lowest rate above ``low`` not shown to pass (failed or inconclusive): where the search
        looks below."""
        return self._lowest_above_low((FAIL, INCONCLUSIVE))

    def defining_probe(self) -> Probe | None:
        """The last passing probe at ``low``."""
        low = self.low
        return next((p for p in reversed(self.probes) if p.passed and p.rate_rps == low), None)

    def confirmed(self) -> bool:
        """``low`` passed in two probes (the search's last step makes sure of it: one pass near the
        capacity can be a probe that saw no burst)."""
        return sum(p.passed and p.rate_rps == self.low for p in self.probes) >= 2

    # -- the steps ------------------------------------------------------------------------------
    def next_rate(self) -> float | None:
        """The next rate to probe, or None when the search has stopped (``stop_reason``)."""
        nxt = self.next_probe()
        return None if nxt is None else nxt[0]

    def next_probe(self) -> tuple[float, float] | None:
        """The next rate to probe and its length (in minimum windows), or None when stopped."""
        if self.stop_reason() is not None:
            return None
        if not self.probes:
            return self.start_rate_rps, 1.0
        last = self.probes[-1]
        if last.outcome == INVALID:
            return last.rate_rps, last.length
        if last.outcome == INCONCLUSIVE and last.verdict.extend and last.phase != "extend":
            return last.rate_rps, last.length * last.verdict.extend
        if self.confirm and self._bracketed() and not self.confirmed():
            return self.low, self.defining_probe().length
        low, ceiling = self.low, self.ceiling
        if low is not None and ceiling is not None:
            return math.sqrt(low * ceiling), 1.0
        if ceiling is None:  # every rate passed: grow
            return min(low * self.growth_factor, self.max_rate_rps), 1.0
        return max(ceiling / self.growth_factor, self.min_rate_rps), 1.0  # none passed: shrink

    def _bracketed(self) -> bool:
        low, ceiling = self.low, self.ceiling
        return low is not None and ceiling is not None and ceiling / low - 1 <= self.rel_tol

    def record(self, rate_rps: float, verdict: Verdict, length: float = 1.0) -> Probe:
        last = self.probes[-1] if self.probes else None
        same = last is not None and last.rate_rps == rate_rps
        if same and last.outcome in (INVALID, INCONCLUSIVE):
            phase = "repeat" if last.outcome == INVALID else "extend"
        else:
            phase = "confirm" if rate_rps == self.low else "bisect" if self.low is not None \
                and self.ceiling is not None else "bracket"
        probe = Probe(rate_rps, verdict, phase, length)
        self.probes.append(probe)
        return probe

    def stop_reason(self) -> str | None:
        if len(self.probes) >= 2 and self.probes[-1].outcome == self.probes[-2].outcome == INVALID \
                and self.probes[-1].rate_rps == self.probes[-2].rate_rps:
            return f"{INVALID_TWICE} ({self.probes[-1].rate_rps:.4g} req/s: {self.probes[-1].verdict.reason})"
        low, ceiling = self.low, self.ceiling
        if self._bracketed() and (self.confirmed() or not self.confirm):
            return CONVERGED if ceiling == self.high else RESOLVED
        if ceiling is None and low is not None and low >= self.max_rate_rps:
            return NOT_BRACKETED
        if low is None and ceiling is not None and ceiling <= self.min_rate_rps:
            return NONE_PASSED
        if len(self.probes) >= self.max_probes:
            return BUDGET_ALL_PASSED if ceiling is None and low is not None else UNCONFIRMED \
                if self._bracketed() else BUDGET
        return None

    def non_monotonic(self) -> list[Probe]:
        """Passing probes above a rate that did not pass: attainment rose with the rate (noise near
        the capacity, or a probe disturbed by something else); the search trusts the highest pass."""
        below = [r for r, o in self.outcomes().items() if o != PASS]
        return [p for p in self.probes if p.passed and any(f < p.rate_rps for f in below)]

    def result(self) -> dict[str, object]:
        """The capacity.csv fields of a finished (or stopped) search."""
        low, high = self.low, self.high
        reason = self.stop_reason() or BUDGET
        odd = self.non_monotonic()
        defining = self.defining_probe()
        count = {o: sum(p.outcome == o for p in self.probes) for o in (INCONCLUSIVE, INVALID)}
        return {
            "capacity_rps": low,
            "capacity_low_rps": low if low is not None else 0.0,
            "capacity_high_rps": high,
            "capacity_achieved_rps": defining.verdict.completed_rps if defining else None,
            "attainment_lower_bound": defining.verdict.attainment_low if defining else None,
            "attainment_target": self.attainment_target,
            "rel_tol": self.rel_tol,
            "confirmed": low is not None and self.confirmed(),
            "probes": len(self.probes),
            "inconclusive_probes": count[INCONCLUSIVE],
            "invalid_probes": count[INVALID],
            "max_probes": self.max_probes,
            "converged": reason == CONVERGED,
            "stop_reason": reason,
            "non_monotonic_note": ("passed at " + ", ".join(f"{p.rate_rps:g}" for p in odd)
                                   + " req/s, above a rate that did not pass") if odd else None,
        }


def run_search(search: CapacitySearch, verdict_at: Callable[[float, float], Verdict]) -> CapacitySearch:
    """Drive ``search`` with a synchronous probe function of (rate, length) (tests, simulations)."""
    while (nxt := search.next_probe()) is not None:
        search.record(nxt[0], verdict_at(*nxt), nxt[1])
    return search


def search_from_config(cfg: dict) -> CapacitySearch:
    """E2's search from its config block (``experiments.e2``)."""
    return CapacitySearch(start_rate_rps=cfg["capacity_start_rate_rps"], attainment_target=cfg["attainment_target"],
                          rel_tol=cfg["capacity_rel_tol"], max_probes=cfg["capacity_max_probes"],
                          growth_factor=cfg["capacity_growth_factor"], min_rate_rps=cfg["capacity_min_rate_rps"],
                          max_rate_rps=cfg["capacity_max_rate_rps"])
