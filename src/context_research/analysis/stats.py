"""Summary statistics over per-request records, with bootstrap confidence intervals."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

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


# -- uncertainty: bootstrap confidence intervals and minimum sample sizes --------------------------
#
# Method: scipy.stats.bootstrap, PERCENTILE interval, 95 %, 2000 resamples, a fixed seed (every
# call starts a fresh generator from BOOTSTRAP_SEED, so a CI depends only on its data). The unit
# resampled is the REQUEST: a per-request value (TTFT, TPOT, E2E), a request's whole list of
# inter-chunk gaps (ITL is pooled, and gaps of one request are correlated, so they are resampled
# together), or a request's contribution to a throughput.
# Why percentile and not BCa: BCa's acceleration is a jackknife estimate, and the jackknife is
# inconsistent for sample quantiles (p50/p95/p99 are most of what we report); on small samples of
# tied or identical timings BCa returns NaN with a warning where the percentile interval returns
# the (degenerate) interval. The percentile interval never leaves the range of the observed values,
# so it never states a latency nobody measured; its known weakness, under-coverage on small samples
# (it cannot be wider than the data), is what MIN_SAMPLES below guards against.

CI_LEVEL = 0.95
BOOTSTRAP_METHOD = "percentile"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20_251_123
STATS = ("mean", "p50", "p95", "p99")
# Fewest samples for which a statistic (its value AND its CI) is stated; below it both are left
# empty and the row's note says why. One rule: a percentile q needs at least one sample expected
# above it, n >= 1 / (1 - q), or it is only an interpolation towards the largest sample (p95 with
# fewer than 20 samples, p99 with fewer than 100, says something about the maximum, not the
# tail), and at least 3 samples, or it is only a blend of the smallest and the largest; a mean
# needs 2 (one sample has no spread, hence no CI). So E1's 3 trials per length give mean and p50
# with a CI, never p95 / p99. Caveat, stated rather than hidden: near these minima the percentile
# interval under-covers (at n = 3 the median's interval is about [min, max], which holds the true
# median 75 % of the time, not 95 %); only from n >= 6 (p50), 59 (p95), 299 (p99) can [min, max]
# reach 95 % coverage without assuming a distribution.
MIN_SAMPLES = {"mean": 2, "p50": 3, "p95": 20, "p99": 100}
# Pooled samples (ITL: every gap of every request) are resampled by request: a CI needs this many
# requests besides the pooled count above (a single request has no between-request spread).
MIN_POOLED_GROUPS = 2
# Largest resampled array one bootstrap batch builds (elements), to bound memory on long ITL pools.
_MAX_BATCH_ELEMENTS = 2_000_000


def stated_stats(n: int, n_groups: int | None = None) -> tuple[str, ...]:
    """The statistics of STATS that ``n`` samples (pooled from ``n_groups`` requests) may state."""
    if n_groups is not None and n_groups < MIN_POOLED_GROUPS:
        return ()
    return tuple(s for s in STATS if n >= MIN_SAMPLES[s])


def _stat_matrix(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean, p50, p95, p99 of ``x`` along ``axis`` (NaN entries are padding and are ignored);
    percentiles as numpy's default linear interpolation. Returns shape (4, *other axes)."""
    x = np.sort(np.moveaxis(np.asarray(x, dtype=float), axis, -1), axis=-1)  # NaN sorts last
    valid = ~np.isnan(x)
    k = valid.sum(axis=-1)
    out = [np.where(valid, x, 0.0).sum(axis=-1) / k]
    for q in (50, 95, 99):
        rank = (q / 100.0) * (k - 1)
        lo = np.floor(rank).astype(int)
        hi = np.minimum(lo + 1, k - 1)
        frac = rank - lo
        a = np.take_along_axis(x, lo[..., None], axis=-1)[..., 0]
        b = np.take_along_axis(x, hi[..., None], axis=-1)[..., 0]
        out.append(a + (b - a) * frac)
    return np.stack(out)


def bootstrap_interval(n_units: int, statistic, *, n_resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = CI_LEVEL,
                       elements_per_resample: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI of ``statistic(idx, axis)`` over ``n_units`` resampling units.

    ``statistic`` receives an integer array of unit indices (resampled with replacement along
    ``axis``) and returns one value or a vector of values per resample; the CI is returned as
    (low, high) arrays of that vector's length. ``scipy.stats.bootstrap`` does the resampling and
    the interval, with a fresh ``numpy`` generator seeded by ``seed`` (deterministic).
    """
    from scipy.stats import bootstrap  # noqa: PLC0415 (scipy is heavy; only CI computations need it)

    per = max(1, elements_per_resample or n_units)
    batch = max(1, min(n_resamples, _MAX_BATCH_ELEMENTS // per))
    res = bootstrap((np.arange(n_units),), statistic, n_resamples=n_resamples, batch=batch, vectorized=True,
                    confidence_level=level, method=BOOTSTRAP_METHOD, rng=np.random.default_rng(seed))
    return np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)


def bootstrap_ci(values: Sequence[float | None], stat: str = "mean", **kwargs) -> tuple[float, float] | None:
    """95 % percentile-bootstrap CI of one statistic of STATS over ``values`` (None / NaN dropped);
    None when fewer than MIN_SAMPLES[stat] values remain."""
    data = np.asarray(clean(values), dtype=float)
    if len(data) < MIN_SAMPLES[stat]:
        return None
    low, high = bootstrap_interval(len(data), lambda idx, axis=-1: _stat_matrix(data[idx], axis), **kwargs)
    i = STATS.index(stat)
    return float(low[i]), float(high[i])


def _with_ci(prefix: str, values: dict[str, float | None], low: np.ndarray | None, high: np.ndarray | None,
             stated: tuple[str, ...], scale: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for i, s in enumerate(STATS):
        ok = s in stated and values[s] is not None
        out[f"{prefix}_{s}"] = values[s] * scale if ok else None
        out[f"{prefix}_{s}_ci_low"] = float(low[i]) * scale if ok and low is not None else None
        out[f"{prefix}_{s}_ci_high"] = float(high[i]) * scale if ok and high is not None else None
    return out


def summarize_with_ci(values: Sequence[float | None], prefix: str, scale: float = 1.0) -> dict[str, float | None]:
    """``summarize`` with a CI after each statistic, and the small-sample rule applied:
    ``{prefix_mean, prefix_mean_ci_low, prefix_mean_ci_high, prefix_p50, ...}``, each times
    ``scale``. A statistic with fewer than MIN_SAMPLES values is None, and so is its CI
    (``small_sample_note`` says why). Values are exactly ``summarize``'s."""
    data = clean(values)
    stated = stated_stats(len(data))
    point = {"mean": mean(data), **{f"p{q}": percentile(data, q) for q in PERCENTILES}}
    low = high = None
    if stated:
        arr = np.asarray(data, dtype=float)
        low, high = bootstrap_interval(len(arr), lambda idx, axis=-1: _stat_matrix(arr[idx], axis))
    return _with_ci(prefix, point, low, high, stated, scale)


def summarize_pooled_with_ci(groups: Sequence[Sequence[float | None]], prefix: str,
                             scale: float = 1.0) -> dict[str, float | None]:
    """``summarize_with_ci`` of the values of every group pooled together (ITL: every gap of every
    request), the bootstrap resampling whole groups (requests), so the CI reflects the spread
    between requests and not only between the gaps of one. The small-sample rule applies to the
    pooled count, and a CI also needs MIN_POOLED_GROUPS non-empty groups."""
    cleaned = [c for c in (clean(g) for g in groups) if c]
    pooled = [x for g in cleaned for x in g]
    stated = stated_stats(len(pooled), len(cleaned))
    point = {"mean": mean(pooled), **{f"p{q}": percentile(pooled, q) for q in PERCENTILES}}
    low = high = None
    if stated:
        width = max(len(g) for g in cleaned)
        padded = np.full((len(cleaned), width), np.nan)
        for i, g in enumerate(cleaned):
            padded[i, :len(g)] = g

        def statistic(idx, axis=-1):
            picked = padded[np.moveaxis(idx, axis, -1)]  # (..., groups, width)
            return _stat_matrix(picked.reshape(*picked.shape[:-2], -1), -1)

        low, high = bootstrap_interval(len(cleaned), statistic, elements_per_resample=padded.size)
    return _with_ci(prefix, point, low, high, stated, scale)


def small_sample_part(label: str, n: int, n_groups: int | None = None, unit: str = "values") -> str | None:
    """``"ttft p95, p99 (n=3)"``: the statistics ``n`` samples may not state, or None if none."""
    stated = stated_stats(n, n_groups)
    missing = [s for s in STATS if s not in stated]
    if not missing:
        return None
    if n_groups is None:
        return f"{label} {', '.join(missing)} (n={n})"
    return f"{label} {', '.join(missing)} (n={n} {unit} from {n_groups} request{'' if n_groups == 1 else 's'})"


def small_sample_note(parts: Iterable[str | None]) -> str | None:
    """One note for a row: which statistics were left empty, with the rule; None if none was."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    rule = ", ".join(f"{s} {n}" for s, n in MIN_SAMPLES.items())
    return (f"not stated, too few samples (minimum n: {rule}; pooled: {MIN_POOLED_GROUPS} requests): "
            + "; ".join(parts))


def format_with_ci(row: dict, column: str, nd: int = 2) -> str:
    """A report cell for a statistic with its CI: ``"41.62 [40.10, 43.05]"``; ``"not stated
    (n < 20)"`` where the small-sample rule left it empty (the suffix of ``column`` names the
    statistic), ``"n/a"`` where it is missing otherwise; a value without CI columns prints alone."""
    def num(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    value = num(row.get(column))
    if value is None:
        stat = column.rsplit("_", 1)[-1]
        return f"not stated (n < {MIN_SAMPLES[stat]})" if stat in MIN_SAMPLES and row.get("stats_note") else "n/a"
    low, high = num(row.get(f"{column}_ci_low")), num(row.get(f"{column}_ci_high"))
    if low is None or high is None:
        return f"{value:.{nd}f}"
    return f"{value:.{nd}f} [{low:.{nd}f}, {high:.{nd}f}]"
