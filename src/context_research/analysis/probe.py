"""The verdict on one capacity probe: did the engine sustain the rate it was offered?

A probe sends requests at the offsets of a Poisson schedule of rate ``rate_rps``
(``probe_schedule``) and is judged over its STEADY WINDOW: the planned sends from the
``trim``-quantile to the (1 - ``trim``)-quantile of the schedule (ramp-up into an idle engine and
drain after the last arrival left out). The schedule is scaled so that the window holds exactly
``rate_rps`` planned sends per second (a Poisson process conditioned on its count there): the
rate a probe names is the rate it offered, and Poisson count noise cannot decide its verdict.

A probe PASSES only if all of these hold:

1. **length**: its window lasted at least ``min_window_s`` = TTFT SLO x (1 + tol) / tol, tol =
   ``rate_tolerance``, and held at least ``min_window_requests``. A rate tol above what the
   engine serves grows its backlog by tol / (1 + tol) of the arrivals, so each second adds
   tol / (1 + tol) s to the next arrival's wait: after ``min_window_s`` the wait has grown by a
   whole TTFT SLO and the backlog by the arrivals of one TTFT SLO;
2. **rate**: the window's requests completed at ``completed_rps`` >= rate / (1 + tol): the offered
   rate over the least-squares slope of their completion times against their planned sends (1
   while completions keep pace; 1 + e when the engine serves e below the rate). This is MLPerf
   LoadGen's rule that the achieved rate match the scheduled one, and it bounds the capacity (a
   passing rate) by (1 + tol) x what its probe completed;
3. **backlog**: the requests in flight (sent, not finished; counted from the records at each send
   of the window, no /metrics needed) did not grow: no least-squares rise above both what the
   rate tolerance allows (tol / (1 + tol) of the window's sends) and ``BACKLOG_SPREADS`` x the
   count's spread about its trend, with ``saturation.growing``'s shape;
4. **attainment**: the one-sided lower bound (Wilson score, ``confidence``) of the share of the
   window's requests meeting both SLOs reaches ``attainment_target``. The bound counts n / DE
   independent requests, DE the design effect: 2 x the integrated autocorrelation time of the
   window's per-request SLO slack (and of its met/missed series). Requests that share a queue
   miss together and a queue still filling drifts; both raise DE, so a window that saw one burst
   is not taken for n independent draws.

It FAILS when the attainment's upper bound is below the target. Otherwise it is INCONCLUSIVE, as
a rate close to the capacity must often be: the attainment bounds straddle the target, or the
rate or backlog rule was missed (a backlog that grew with the SLOs still met is a rate the engine
cannot keep up, not yet a rate that misses them). An inconclusive probe whose only miss is a
share that beats the target on too few independent requests says how much longer (``extend``)
a second probe at its rate would have to run for that share to pass. A probe that was stopped
early, failed, or that the integrity checks call implausible (late sends: the rate was not
offered; a client that disagrees with the engine: its latencies are not the engine's) is
INVALID: neither pass nor fail. ``analysis.capacity`` decides what the search does with each.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import norm

from ..records import RequestRecord
from .latency import meets_slo, poisson_schedule
from .saturation import growing

PASS, FAIL, INCONCLUSIVE, INVALID = "pass", "fail", "inconclusive", "invalid"
OUTCOMES = (PASS, FAIL, INCONCLUSIVE, INVALID)
HEADROOM = 1.5  # a second, longer probe runs this much longer than its first one's share strictly needs
BACKLOG_SPREADS = 3.0  # a backlog rise must exceed this many SDs of the in-flight count about its trend


@dataclass(frozen=True)
class ProbeRules:
    """What a probe must show to pass (E2's SLOs, ``attainment_target``, ``capacity_*`` keys, trim)."""

    ttft_slo_ms: float
    tpot_slo_ms: float
    attainment_target: float = 0.9
    rate_tolerance: float = 0.05
    trim: float = 0.1
    confidence: float = 0.95  # one-sided, for each attainment bound
    max_extend: float = 2.0  # the longest second probe of an inconclusive rate, in minimum windows
    min_requests: int = 0  # requests a probe sends at least (capacity_requests_per_probe)

    def __post_init__(self):
        if not (self.ttft_slo_ms > 0 and self.tpot_slo_ms > 0 and 0 < self.attainment_target < 1
                and 0 < self.rate_tolerance <= 1 and 0 <= self.trim < 0.5 and 0.5 < self.confidence < 1
                and self.max_extend >= 1):
            raise ValueError(f"invalid probe rules: {self!r}")

    @classmethod
    def from_config(cls, cfg: dict) -> "ProbeRules":
        """E2's probe rules from its config block (``experiments.e2``)."""
        return cls(ttft_slo_ms=cfg["ttft_slo_ms"], tpot_slo_ms=cfg["tpot_slo_ms"],
                   attainment_target=cfg["attainment_target"], rate_tolerance=cfg["capacity_rate_tolerance"],
                   trim=cfg["steady_state_trim"], max_extend=cfg["capacity_max_extension"],
                   min_requests=int(cfg.get("capacity_requests_per_probe") or 0))

    @property
    def z(self) -> float:
        return _normal_quantile(self.confidence)

    @property
    def min_window_s(self) -> float:
        """The shortest steady window that shows a rate ``rate_tolerance`` over capacity."""
        return self.ttft_slo_ms / 1000.0 * (1.0 + self.rate_tolerance) / self.rate_tolerance

    @property
    def min_window_requests(self) -> int:
        """The fewest window requests that can pass: with all of them meeting the SLOs (and none
        correlated) the lower bound n / (n + z^2) reaches the target from n >= z^2 t / (1 - t)."""
        return math.ceil(self.z ** 2 * self.attainment_target / (1.0 - self.attainment_target) - 1e-9)


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reason: str
    window_s: float | None = None
    window_requests: int | None = None
    completed_rps: float | None = None
    backlog_rise: float | None = None
    attainment: float | None = None
    attainment_low: float | None = None
    attainment_high: float | None = None
    design_effect: float | None = None
    extend: float | None = None  # inconclusive: how many times longer a second probe should run

    @property
    def passed(self) -> bool:
        return self.outcome == PASS

    def columns(self) -> dict[str, object]:
        """The probe's concurrency.csv columns (``VERDICT_COLUMNS``)."""
        return {"probe_verdict": self.outcome, "probe_verdict_reason": self.reason, "probe_window_s": self.window_s,
                "probe_window_requests": self.window_requests, "probe_completed_rps": self.completed_rps,
                "probe_backlog_rise": self.backlog_rise, "attainment_lower_bound": self.attainment_low,
                "attainment_upper_bound": self.attainment_high, "probe_design_effect": self.design_effect,
                "probe_extend": self.extend}


VERDICT_COLUMNS = tuple(Verdict(INVALID, "").columns())


@dataclass(frozen=True)
class ProbeSample:
    """A probe's requests as arrays: planned and actual send and completion (s from the probe's
    start; NaN for a request that failed), whether each met both SLOs, and its SLO slack
    max(TTFT / TTFT SLO, TPOT / TPOT SLO) (NaN when it has no TTFT)."""

    planned_s: np.ndarray
    sent_s: np.ndarray
    done_s: np.ndarray
    met: np.ndarray
    slack: np.ndarray

    @classmethod
    def from_records(cls, records: Sequence[RequestRecord], ttft_slo_ms: float, tpot_slo_ms: float) -> "ProbeSample":
        def col(values):
            return np.array([np.nan if v is None else float(v) for v in values], dtype=float)

        done = [r.start_s + r.e2e_s if r.ok and r.start_s is not None and r.e2e_s is not None else None
                for r in records]
        slack = np.fmax(col(r.ttft_s for r in records) * 1000.0 / ttft_slo_ms,
                        col(r.tpot_s for r in records) * 1000.0 / tpot_slo_ms)
        return cls(col(r.scheduled_offset_s for r in records), col(r.start_s for r in records), col(done),
                   np.array([meets_slo(r, ttft_slo_ms, tpot_slo_ms) for r in records], dtype=bool), slack)


@functools.lru_cache(maxsize=None)
def _normal_quantile(p: float) -> float:
    return float(norm.ppf(p))


# -- the schedule --------------------------------------------------------------------------------

def window_indices(n: int, trim: float) -> tuple[int, int]:
    """First and last index (into the sorted schedule) of a probe's steady window."""
    k = int(math.floor(trim * n))
    return k, n - 1 - k


def probe_requests(rate_rps: float, rules: ProbeRules, length: float = 1.0) -> int:
    """Requests a probe at ``rate_rps`` sends: the fewest whose steady window spans ``length`` x
    ``min_window_s`` at that rate and holds ``min_window_requests``, at least ``rules.min_requests``."""
    gaps = max(math.ceil(rate_rps * rules.min_window_s * length - 1e-9), rules.min_window_requests - 1, 1)
    n = max(rules.min_requests, gaps + 1)
    while (lambda i: i[1] - i[0])(window_indices(n, rules.trim)) < gaps:
        n += 1
    return n


def probe_schedule(n: int, rate_rps: float, seed: int, trim: float) -> list[float]:
    """Send offsets of a probe: a seeded Poisson schedule (``latency.poisson_schedule``) scaled so
    that its steady window holds exactly ``rate_rps`` planned sends per second."""
    offsets = np.asarray(poisson_schedule(n, rate_rps, seed))
    i0, i1 = window_indices(n, trim)
    span = offsets[i1] - offsets[i0] if n else 0.0
    if i1 <= i0 or span <= 0:
        return offsets.tolist()
    return (offsets * ((i1 - i0) / rate_rps / span)).tolist()


# -- the statistics ------------------------------------------------------------------------------

def integrated_autocorrelation(series: np.ndarray) -> float:
    """Integrated autocorrelation time (in steps, >= 1/2) of a series: 1/2 + the sum of its
    autocorrelations, summed by Geyer's initial positive sequence (pairs of lags while their sum
    stays positive). Independent values give 1/2; neighbours that move together, or a drift, more."""
    x = np.asarray(series, dtype=float)
    n = len(x)
    if n < 4 or np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return 0.5  # too short, or constant: nothing moves together
    x = x - x.mean()
    var = float(x @ x) / n
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n] / (var * n)
    pairs = acf[:n - n % 2].reshape(-1, 2).sum(axis=1)
    return max(0.5, float(pairs[np.cumprod(pairs > 0).astype(bool)].sum()) - 0.5)


def design_effect(slack: np.ndarray, met: np.ndarray) -> float:
    """How many requests count as one independent one (>= 1): 2 x the larger integrated
    autocorrelation time of the requests' SLO slack and of their met/missed series, in send order
    (a request without a slack takes the largest one seen)."""
    slack = np.where(np.isnan(slack), np.nanmax(slack, initial=1.0), slack)
    return max(1.0, 2.0 * max(integrated_autocorrelation(slack), integrated_autocorrelation(met.astype(float))))


def attainment_bounds(p: float, n: float, z: float) -> tuple[float, float]:
    """One-sided Wilson score bounds (z: the normal quantile of their confidence) of a share ``p``
    of ``n`` requests (``n`` may be an effective count, not an integer)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


def requests_to_pass(share: float, rules: ProbeRules) -> float | None:
    """The independent requests at which a share ``share`` has a Wilson lower bound equal to the
    target, t: z^2 t (1 - t) / (share - t)^2 (the score equation at the bound); None when
    ``share`` <= t (no count makes it pass)."""
    t = rules.attainment_target
    return rules.z ** 2 * t * (1 - t) / (share - t) ** 2 if share > t else None


def completed_rps(planned: np.ndarray, done: np.ndarray, offered_rps: float) -> float:
    """The rate at which a window's requests completed: ``offered_rps`` over the least-squares
    slope of their completion times against their planned sends (failed requests left out)."""
    ok = np.isfinite(done)
    if np.count_nonzero(ok) < 3:
        return 0.0
    slope = float(np.polyfit(planned[ok], done[ok], 1)[0])
    return offered_rps / slope if slope > 0 else 0.0


def in_flight(sample: ProbeSample, at_s: np.ndarray) -> np.ndarray:
    """Requests sent and not yet finished at each time of ``at_s`` (from the records)."""
    sent = np.sort(sample.sent_s[np.isfinite(sample.sent_s)])
    done = np.sort(sample.done_s[np.isfinite(sample.done_s)])
    return np.searchsorted(sent, at_s, side="right") - np.searchsorted(done, at_s, side="right")


def _trend(t: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares rise of ``values`` over ``t``'s span, and their SD about that line."""
    if len(t) < 3 or t[-1] <= t[0]:
        return 0.0, 0.0
    slope, intercept = np.polyfit(t, values, 1)
    return float(slope * (t[-1] - t[0])), float(np.std(values - (slope * t + intercept)))


# -- the verdict ---------------------------------------------------------------------------------

def probe_verdict(sample: ProbeSample, rate_rps: float, rules: ProbeRules, *, planned_requests: int | None = None,
                  not_judged: str | None = None) -> Verdict:
    """The verdict on one probe (module docstring). ``planned_requests``: how many it was to send
    (fewer records: it stopped early); ``not_judged``: why its records cannot be trusted (an
    implausible or failed row's reason)."""
    n = len(sample.planned_s)
    if not_judged:
        return Verdict(INVALID, not_judged)
    if planned_requests is not None and n < planned_requests:
        return Verdict(INVALID, f"stopped early: {n} of {planned_requests} requests sent")
    if n < 2 or not np.isfinite(sample.planned_s).all() or not np.isfinite(sample.sent_s).all():
        return Verdict(INVALID, "no open-loop schedule recorded")
    order = np.argsort(sample.planned_s, kind="stable")
    planned = sample.planned_s[order]
    i0, i1 = window_indices(n, rules.trim)
    window, n_w = float(planned[i1] - planned[i0]), i1 - i0 + 1
    if n_w < rules.min_window_requests or window < rules.min_window_s * (1 - 1e-9):
        return Verdict(INVALID, f"steady window {window:.3g} s with {n_w} requests: shorter than the "
                                f"{rules.min_window_s:.3g} s and {rules.min_window_requests} requests a probe needs")
    sent = np.sort(sample.sent_s[order][i0:i1 + 1])
    queue = in_flight(sample, sent)
    rise, spread = _trend(sent, queue)
    met = int(np.count_nonzero(sample.met[order][i0:i1 + 1]))
    de = design_effect(sample.slack[order][i0:i1 + 1], sample.met[order][i0:i1 + 1])
    low, high = attainment_bounds(met / n_w, n_w / de, rules.z)
    achieved = completed_rps(planned[i0:i1 + 1], sample.done_s[order][i0:i1 + 1], (i1 - i0) / window)
    v = dict(window_s=window, window_requests=n_w, completed_rps=achieved, backlog_rise=rise, attainment=met / n_w,
             attainment_low=low, attainment_high=high, design_effect=de)
    share = f"attainment {met}/{n_w} (design effect {de:.3g}): bounds [{low:.3f}, {high:.3f}]"
    if high < rules.attainment_target:
        return Verdict(FAIL, f"{share}, below the target {rules.attainment_target:g}", **v)
    allowance = rules.rate_tolerance / (1 + rules.rate_tolerance) * (i1 - i0)
    misses = [f"{share} straddle the target {rules.attainment_target:g}"] if low < rules.attainment_target else []
    if achieved * (1 + rules.rate_tolerance) < rate_rps:
        misses.append(f"completed {achieved:.4g} req/s of {rate_rps:.4g} offered (tolerance {rules.rate_tolerance:g})")
    if rise > max(allowance, BACKLOG_SPREADS * spread) and growing(sent, queue):
        misses.append(f"backlog grew: requests in flight {int(queue[0])} -> {int(queue[-1])}, a rise of {rise:.3g} "
                      f"(more than {allowance:.3g}, what the rate tolerance allows, and {BACKLOG_SPREADS:g} x its "
                      f"spread {spread:.3g})")
    if not misses:
        return Verdict(PASS, f"{share}, lower bound reaches {rules.attainment_target:g}; completed {achieved:.4g} "
                             f"req/s of {rate_rps:.4g} offered", **v)
    needed = requests_to_pass(met / n_w, rules) if len(misses) == 1 and low < rules.attainment_target else None
    factor = needed * de / n_w if needed is not None else None
    extend = min(rules.max_extend, max(1.25, HEADROOM * factor)) if factor is not None and factor <= rules.max_extend \
        else None
    return Verdict(INCONCLUSIVE, "; ".join(misses), **v, extend=extend)
