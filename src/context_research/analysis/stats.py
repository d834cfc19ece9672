"""Summary statistics over per-request records, with confidence intervals whose coverage is measured
(``analysis.intervals`` computes them, ``analysis.calibration`` measures them)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from .intervals import (LEVEL, mean_interval, pooled_mean_interval, pooled_quantile_interval, quantile_interval,
                        quantile_interval_min_n)

PERCENTILES = (50, 95, 99)


def clean(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds; None stays None (a value that was not measured)."""
    return None if seconds is None else seconds * 1000.0


def percentile(values: Sequence[float | None], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default, as ``vllm bench serve`` uses); None if empty."""
    data = clean(values)
    return float(np.percentile(data, q)) if data else None


def mean(values: Sequence[float | None]) -> float | None:
    data = clean(values)
    return float(np.mean(data)) if data else None


def coefficient_of_variation(values: Sequence[float | None]) -> float | None:
    """Sample std (ddof=1) / mean; None with fewer than two values or a zero mean."""
    data = clean(values)
    if len(data) < 2:
        return None
    m = float(np.mean(data))
    return float(np.std(data, ddof=1) / m) if m else None


def summarize(values: Sequence[float | None], prefix: str, scale: float = 1.0) -> dict[str, float | None]:
    """``{prefix_mean, prefix_p50, prefix_p95, prefix_p99}``, each multiplied by ``scale``."""
    out: dict[str, float | None] = {}
    m = mean(values)
    out[f"{prefix}_mean"] = None if m is None else m * scale
    for q in PERCENTILES:
        p = percentile(values, q)
        out[f"{prefix}_p{q}"] = None if p is None else p * scale
    return out


# -- uncertainty: intervals and minimum sample sizes -----------------------------------------------
#
# Methods (analysis.intervals; docs/statistics.md, "Intervals", gives their measured coverage):
# a quantile of independent values (TTFT, TPOT, E2E of the requests of a point) gets the
# distribution-free order-statistic interval, interpolated between neighbouring order statistics;
# a mean gets the bootstrap-t interval; pooled values (ITL: every gap of every request) count the
# REQUEST as the unit: cluster-robust ratio mean with Student-t, Woodruff's interval for quantiles.
# Every interval is 95 % and deterministic (a CI depends only on its data).
#
# Two minimum sample sizes, one rule for every statistic the project prints (client, engine,
# steady state):
# * MIN_SAMPLES: below it a statistic is not stated at all. A percentile q needs at least one
#   sample expected above it, n >= 1 / (1 - q) (p95 from fewer than 20 samples is an interpolation
#   towards the maximum, not a tail), and at least 3 samples; a mean needs 2.
# * MIN_INTERVAL: below it a stated statistic gets no interval, and the row's note says so. For a
#   quantile it is where the widest order-statistic interval [min, max] first reaches 95 %:
#   1 - q^n - (1 - q)^n >= 0.95, i.e. 6 (p50), 59 (p95), 299 (p99): below, no distribution-free
#   interval exists. For the mean it is measured: no interval of a mean is distribution-free
#   (Bahadur & Savage, 1956), and the bootstrap-t's coverage of a skewed (lognormal, log-SD 1) and
#   a bimodal sample stays within 92-98 % from about 60 values (0.82-0.92 at 5-32 lognormal values,
#   0.55-0.69 at 3-5 bimodal ones: docs/evidence/2026-12-07-cpu-calibration/interval_coverage.csv).
# For pooled gaps both minima of an interval count requests, not gaps: the gaps of one request
# are alike, and the interval's unit is the request.

CI_LEVEL = LEVEL
STATS = ("mean", "p50", "p95", "p99")
MIN_SAMPLES = {"mean": 2, "p50": 3, "p95": 20, "p99": 100}
MEAN_INTERVAL_MIN_N = 60
MIN_INTERVAL = {"mean": MEAN_INTERVAL_MIN_N, **{f"p{q}": quantile_interval_min_n(q / 100.0) for q in PERCENTILES}}
# Pooled samples (ITL: every gap of every request): a statistic needs this many requests besides
# the pooled count above (a single request has no between-request spread).
MIN_POOLED_GROUPS = 2


def stated_stats(n: int, n_groups: int | None = None) -> tuple[str, ...]:
    """The statistics of STATS that ``n`` samples (pooled from ``n_groups`` requests) may state."""
    if n_groups is not None and n_groups < MIN_POOLED_GROUPS:
        return ()
    return tuple(s for s in STATS if n >= MIN_SAMPLES[s])


def interval_stats(n: int, n_groups: int | None = None) -> tuple[str, ...]:
    """The stated statistics that may also get an interval: ``n`` independent samples, or (pooled)
    ``n_groups`` requests, reach MIN_INTERVAL."""
    units = n if n_groups is None else n_groups
    return tuple(s for s in stated_stats(n, n_groups) if units >= MIN_INTERVAL[s])


def _points(x: np.ndarray) -> dict[str, np.ndarray]:
    """mean, p50, p95, p99 of each row of ``x`` (numpy's linear-interpolated percentiles)."""
    return {"mean": x.mean(axis=-1), **{f"p{q}": np.percentile(x, q, axis=-1) for q in PERCENTILES}}


def sample_intervals(x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 95 % interval of each statistic of STATS for each row of ``x`` (rows: samples of the
    same size n, no NaN): (low, high) arrays, NaN where the statistic gets none: n below
    MIN_SAMPLES or MIN_INTERVAL, or no spread (an interval of width zero is no interval). What
    ``summarize_with_ci`` prints, vectorised over many samples (``analysis.calibration``)."""
    x = np.sort(np.atleast_2d(np.asarray(x, dtype=float)), axis=-1)
    n = x.shape[-1]
    allowed = interval_stats(n)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s in STATS:
        if s not in allowed:
            low = high = np.full(x.shape[0], np.nan)
        elif s == "mean":
            low, high = mean_interval(x)
        else:
            low, high = quantile_interval(x, int(s[1:]) / 100.0, is_sorted=True)
        out[s] = _no_zero_width(low, high)
    return out


def _no_zero_width(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.array(low, dtype=float, copy=True), np.array(high, dtype=float, copy=True)
    flat = ~(high > low)
    low[flat], high[flat] = np.nan, np.nan
    return low, high


def _with_ci(prefix: str, values: dict[str, float | None], bounds: dict[str, tuple[float, float]],
             stated: tuple[str, ...], scale: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for s in STATS:
        ok = s in stated and values[s] is not None
        low, high = bounds.get(s, (math.nan, math.nan))
        has_ci = ok and not (math.isnan(low) or math.isnan(high))
        out[f"{prefix}_{s}"] = values[s] * scale if ok else None
        out[f"{prefix}_{s}_ci_low"] = float(low) * scale if has_ci else None
        out[f"{prefix}_{s}_ci_high"] = float(high) * scale if has_ci else None
    return out


def summarize_with_ci(values: Sequence[float | None], prefix: str, scale: float = 1.0) -> dict[str, float | None]:
    """``summarize`` with a CI after each statistic, and the small-sample rules applied:
    ``{prefix_mean, prefix_mean_ci_low, prefix_mean_ci_high, prefix_p50, ...}``, each times
    ``scale``. A statistic with fewer than MIN_SAMPLES values is None with its CI; one with fewer
    than MIN_INTERVAL, or no spread, keeps its value and has no CI (``small_sample_part`` and
    ``interval_part`` say why). Values are exactly ``summarize``'s."""
    data = clean(values)
    stated = stated_stats(len(data))
    point = {"mean": mean(data), **{f"p{q}": percentile(data, q) for q in PERCENTILES}}
    bounds = {}
    if stated:
        bounds = {s: (float(lo[0]), float(hi[0])) for s, (lo, hi) in sample_intervals(np.asarray(data)).items()}
    return _with_ci(prefix, point, bounds, stated, scale)


def summarize_pooled_with_ci(groups: Sequence[Sequence[float | None]], prefix: str,
                             scale: float = 1.0) -> dict[str, float | None]:
    """``summarize_with_ci`` of the values of every group pooled together (ITL: every gap of every
    request). The statistic's value needs MIN_SAMPLES pooled values from MIN_POOLED_GROUPS
    requests; its interval treats the request as the unit (cluster-robust: ``analysis.intervals``)
    and needs MIN_INTERVAL requests."""
    cleaned = [np.asarray(c, dtype=float) for c in (clean(g) for g in groups) if c]
    pooled = [x for g in cleaned for x in g]
    stated = stated_stats(len(pooled), len(cleaned))
    point = {"mean": mean(pooled), **{f"p{q}": percentile(pooled, q) for q in PERCENTILES}}
    bounds = {}
    for s in interval_stats(len(pooled), len(cleaned)):
        low, high = pooled_mean_interval(cleaned) if s == "mean" else \
            pooled_quantile_interval(cleaned, int(s[1:]) / 100.0)
        lo_arr, hi_arr = _no_zero_width(np.array([low]), np.array([high]))
        bounds[s] = (float(lo_arr[0]), float(hi_arr[0]))
    return _with_ci(prefix, point, bounds, stated, scale)


def small_sample_part(label: str, n: int, n_groups: int | None = None, unit: str = "values",
                      only: tuple[str, ...] = STATS) -> str | None:
    """``"ttft p95, p99 (n=3)"``: the statistics (of ``only``) ``n`` samples may not state, or None."""
    stated = stated_stats(n, n_groups)
    missing = [s for s in only if s not in stated]
    if not missing:
        return None
    if n_groups is None:
        return f"{label} {', '.join(missing)} (n={n})"
    return f"{label} {', '.join(missing)} (n={n} {unit} from {n_groups} request{'' if n_groups == 1 else 's'})"


def interval_part(label: str, summary: dict[str, float | None], prefix: str, n: int,
                  n_groups: int | None = None) -> str | None:
    """``"ttft mean (n=20 < 60), p95 (n=20 < 59)"``: the statistics of ``summary`` (a
    ``summarize_with_ci`` output) stated without an interval, each with why: too few samples
    (requests, for pooled values) for one, or none valid (no spread; Woodruff's interval of a
    pooled quantile reaching beyond the data); None if none."""
    units = n if n_groups is None else n_groups
    what = "requests" if n_groups is not None else "n"
    parts = []
    for s in STATS:
        if summary.get(f"{prefix}_{s}") is None or summary.get(f"{prefix}_{s}_ci_low") is not None:
            continue
        parts.append(f"{s} ({what}={units} < {MIN_INTERVAL[s]})" if units < MIN_INTERVAL[s] else
                     f"{s} (none valid: no spread, or wider than the data)")
    return f"{label} {', '.join(parts)}" if parts else None


def small_sample_note(parts: Iterable[str | None], no_interval: Iterable[str | None] = (),
                      extra: Iterable[str | None] = ()) -> str | None:
    """One note for a row: which statistics were left empty, with the rule; which were stated
    without an interval, with that rule; then ``extra`` parts (e.g. a rate's interval); None if
    nothing was left out."""
    parts, no_interval = [p for p in parts if p], [p for p in no_interval if p]
    pieces = []
    if parts:
        rule = ", ".join(f"{s} {n}" for s, n in MIN_SAMPLES.items())
        pieces.append(f"not stated, too few samples (minimum n: {rule}; pooled: {MIN_POOLED_GROUPS} requests): "
                      + "; ".join(parts))
    if no_interval:
        rule = ", ".join(f"{s} {n}" for s, n in MIN_INTERVAL.items())
        pieces.append(f"no interval (minimum n for one: {rule}; pooled: requests): " + "; ".join(no_interval))
    pieces += [p for p in extra if p]
    return " | ".join(pieces) if pieces else None


def format_with_ci(row: dict, column: str, nd: int = 2) -> str:
    """A report cell for a statistic with its CI: ``"41.62 [40.10, 43.05]"``; ``"not stated
    (n < 20)"`` where the small-sample rule left it empty (the suffix of ``column`` names the
    statistic), ``"n/a"`` where it is missing otherwise; a value without an interval (none
    valid, or one of zero width, which is no interval) prints alone."""
    def num(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    value = num(row.get(column))
    if value is None:
        stat = column.rsplit("_", 1)[-1]
        return f"not stated (n < {MIN_SAMPLES[stat]})" if stat in MIN_SAMPLES and row.get("stats_note") else "n/a"
    low, high = num(row.get(f"{column}_ci_low")), num(row.get(f"{column}_ci_high"))
    if low is None or high is None or not high > low:
        return f"{value:.{nd}f}"
    return f"{value:.{nd}f} [{low:.{nd}f}, {high:.{nd}f}]"
