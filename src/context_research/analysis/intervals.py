"""Confidence intervals whose coverage is measured (``analysis.calibration``), vectorised with numpy.

Each function takes samples along the last axis (any leading shape: one sample, or a thousand
simulated ones) and returns ``(low, high)`` arrays, NaN where no valid interval exists. They do
not decide what a report prints; ``analysis.stats`` applies the minimum-n rules and writes the
notes. The methods, in one line each (docs/statistics.md, "Intervals", says why and how well):

* quantile of independent samples: distribution-free order-statistic interval. The binomial law
  of ranks gives exact tails; each bound is interpolated between two neighbouring order
  statistics so that its tail comes near 2.5 % instead of far below it.
* mean of independent samples: studentised (bootstrap-t) interval, with the resampling done as a
  matrix product of fixed multinomial weights (fast, deterministic: a CI depends only on its data).
* mean and quantile of gaps pooled over requests (ITL): cluster-robust (requests are the unit)
  ratio mean with Student-t on the number of requests; Woodruff's interval for the quantile (the
  cluster-robust CI of the share below the quantile, mapped back through the pooled quantiles).
* a rate over a point's duration (throughput, goodput): batch means. The duration is split into
  5 equal windows; the windows' rates give a Student-t interval whose centre is the point's rate.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import stats as st

LEVEL = 0.95
BOOT_RESAMPLES = 1999
BOOT_SEED = 20_251_207

# -- quantiles: order statistics -------------------------------------------------------------------


@lru_cache(maxsize=4096)
def order_statistic_plan(n: int, q: float, level: float = LEVEL) -> tuple[int, float, int, float] | None:
    """Where the interval of the ``q`` quantile (0 < q < 1) of ``n`` samples lies among the
    sorted samples: ``(lo, lo_frac, hi, hi_frac)``, 0-based ranks, the low bound being
    x[lo] + lo_frac (x[lo+1] - x[lo]) and the high bound x[hi] - hi_frac (x[hi] - x[hi-1]).

    The tails are binomial: P(x[l] > quantile) = P(Bin(n, q) < l + 1) and P(x[u] < quantile)
    = P(Bin(n, q) > u), for any continuous distribution. Each tail gets (1 - level) / 2; a tail
    that cannot reach it even at the extreme order statistic (the upper tail of p95 below
    n = 72) keeps that extreme and hands what it misses by to the other tail. None where the
    two extremes together cannot reach ``level`` (p50 below n = 6, p95 below 59, p99 below 299).
    The conservative order statistic of each tail is moved towards the next one inwards by the
    fraction of the tail's slack that step would use up (linear in probability), so the coverage
    comes near ``level`` rather than above it; ``analysis.calibration`` measures it.
    """
    if n < 1 or not 0.0 < q < 1.0:
        return None
    alpha = 1.0 - level
    ranks = np.arange(n)  # 0-based order statistic k, i.e. X_(k+1)
    high_ok = st.binom.cdf(ranks, n, q)        # P(Bin <= k) = P(X_(k+1) >= quantile)
    low_ok = st.binom.sf(ranks, n, q)          # P(Bin >= k+1) = P(X_(k+1) <= quantile)
    miss_low_extreme, miss_high_extreme = 1.0 - low_ok[0], 1.0 - high_ok[-1]
    if miss_low_extreme + miss_high_extreme > alpha:
        return None
    tail_low = tail_high = alpha / 2.0
    if miss_high_extreme > tail_high:
        tail_high, tail_low = miss_high_extreme, alpha - miss_high_extreme
    elif miss_low_extreme > tail_low:
        tail_low, tail_high = miss_low_extreme, alpha - miss_low_extreme
    eps = 1e-12
    lo = int(np.flatnonzero(low_ok >= 1.0 - tail_low - eps)[-1])
    hi = int(np.flatnonzero(high_ok >= 1.0 - tail_high - eps)[0])
    lo_frac = hi_frac = 0.0
    if lo + 1 < n and low_ok[lo] > low_ok[lo + 1]:
        lo_frac = float((low_ok[lo] - (1.0 - tail_low)) / (low_ok[lo] - low_ok[lo + 1]))
    if hi >= 1 and high_ok[hi] > high_ok[hi - 1]:
        hi_frac = float((high_ok[hi] - (1.0 - tail_high)) / (high_ok[hi] - high_ok[hi - 1]))
    return lo, min(max(lo_frac, 0.0), 1.0), hi, min(max(hi_frac, 0.0), 1.0)


@lru_cache(maxsize=64)
def quantile_interval_min_n(q: float, level: float = LEVEL) -> int:
    """Fewest samples with which ``order_statistic_plan`` gives the ``q`` quantile an interval:
    the smallest n with 1 - q^n - (1 - q)^n >= level (6 for p50, 59 for p95, 299 for p99)."""
    n = 1
    while (1.0 - q) ** n + q ** n > 1.0 - level:
        n += 1
    return n


def quantile_interval(x: np.ndarray, q: float, level: float = LEVEL, *, is_sorted: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distribution-free interval of the ``q`` quantile of each sample along the last axis of
    ``x`` (every sample of the same size n, no NaN); NaN where ``order_statistic_plan`` has none."""
    x = np.asarray(x, dtype=float)
    xs = x if is_sorted else np.sort(x, axis=-1)
    plan = order_statistic_plan(xs.shape[-1], float(q), level)
    if plan is None:
        nan = np.full(xs.shape[:-1], np.nan)
        return nan, nan.copy()
    lo, lo_frac, hi, hi_frac = plan
    low = xs[..., lo] + lo_frac * (xs[..., min(lo + 1, xs.shape[-1] - 1)] - xs[..., lo])
    high = xs[..., hi] - hi_frac * (xs[..., hi] - xs[..., max(hi - 1, 0)])
    return low, high


# -- the mean: studentised bootstrap ---------------------------------------------------------------


@lru_cache(maxsize=256)
def _boot_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multinomial counts / n: row b holds the weight of each value in resample b."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    weights = counts / float(n)
    weights.setflags(write=False)
    return weights


def mean_interval(x: np.ndarray, level: float = LEVEL, *, resamples: int = BOOT_RESAMPLES,
                  seed: int = BOOT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap-t interval of the mean of each sample along the last axis of ``x`` (same n, no
    NaN): [m - t*_(1-a/2) s / sqrt(n), m - t*_(a/2) s / sqrt(n)], t* the studentised means of
    ``resamples`` resamples. The resamples are a fixed weight matrix (seeded), so the means and
    variances of every resample of every sample are two matrix products. NaN for n < 2 or a
    sample whose values are all equal (no spread: nothing to base an interval on)."""
    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    shape = x.shape[:-1]
    nan = np.full(shape, np.nan)
    if n < 2:
        return nan, nan.copy()
    flat = x.reshape(-1, n)
    m = flat.mean(axis=1)
    s = flat.std(axis=1, ddof=1)
    w = _boot_weights(n, resamples, seed)
    centred = flat - m[:, None]                      # resampled statistics are shift-invariant
    mb = centred @ w.T                               # (samples, resamples): m* - m
    vb = ((centred ** 2) @ w.T - mb ** 2) * (n / (n - 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mb / np.sqrt(vb / n)
    t[np.isnan(t)] = 0.0  # 0 / 0: a resample of one repeated value at the mean
    a = (1.0 - level) / 2.0
    t_lo, t_hi = np.quantile(t, [a, 1.0 - a], axis=1)
    se = s / math.sqrt(n)
    low, high = m - t_hi * se, m - t_lo * se
    bad = ~(s > 0)
    low[bad], high[bad] = np.nan, np.nan
    return low.reshape(shape), high.reshape(shape)


# -- pooled samples: requests as clusters ----------------------------------------------------------


def _cluster_totals(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([g.sum() for g in groups], dtype=float), np.array([len(g) for g in groups], dtype=float))


def pooled_mean_interval(groups: list[np.ndarray], level: float = LEVEL) -> tuple[float, float]:
    """Interval of the pooled mean (every value of every group) with the groups (requests) as the
    independent unit: the ratio mean sum / count, its cluster-robust (linearised) standard error,
    and Student-t on groups - 1 degrees of freedom. NaN with fewer than two groups or no spread."""
    g = len(groups)
    if g < 2:
        return math.nan, math.nan
    totals, counts = _cluster_totals(groups)
    r, half = _ratio_half_width(totals, counts, level)
    return (r - half, r + half) if half > 0 else (math.nan, math.nan)


def _ratio_half_width(totals: np.ndarray, counts: np.ndarray, level: float) -> tuple[float, float]:
    """The ratio sum(totals) / sum(counts) and its Student-t half-width on groups - 1 degrees of
    freedom from the cluster-robust (linearised) standard error; half-width 0 with no spread."""
    g = len(totals)
    r = float(totals.sum() / counts.sum())
    resid = totals - r * counts
    se = math.sqrt(g / (g - 1.0) * float((resid ** 2).sum())) / counts.sum()
    return r, (float(st.t.ppf(0.5 + level / 2.0, g - 1) * se) if se > 0 else 0.0)


def pooled_quantile_interval(groups: list[np.ndarray], q: float, level: float = LEVEL) -> tuple[float, float]:
    """Woodruff's interval of the ``q`` quantile of the pooled values: the share of pooled values
    at or below the pooled quantile gets a cluster-robust standard error (groups as the unit),
    q -/+ t_(groups-1) se is mapped back through the pooled quantile function. NaN when either
    end falls outside (0, 1) or there is no spread."""
    g = len(groups)
    if g < 2:
        return math.nan, math.nan
    pooled = np.concatenate(groups)
    point = float(np.percentile(pooled, 100.0 * q))
    below = np.array([np.count_nonzero(x <= point) for x in groups], dtype=float)
    counts = np.array([len(x) for x in groups], dtype=float)
    _, half = _ratio_half_width(below, counts, level)  # the share of pooled values at or below it
    lo_p, hi_p = q - half, q + half
    if not half > 0 or lo_p <= 0.0 or hi_p >= 1.0:
        return math.nan, math.nan
    low, high = np.percentile(pooled, [100.0 * lo_p, 100.0 * hi_p])
    return float(low), float(high)


# -- rates: batch means over the point's duration --------------------------------------------------

# A rate's interval is built from WINDOWS equal windows of the point's duration (Student-t on
# WINDOWS - 1 degrees of freedom). Few long windows: near capacity a queue's completions are
# correlated over many service times, and 10 or 20 shorter windows understated the spread (0.83-0.92
# coverage against 0.89-0.93 with 5, analysis.calibration). The point must hold MIN_WAVES times
# its peak number of requests in flight (each slot turned over that often: a point of one or two
# waves is mostly ramp-up and drain) and MIN_COMPLETIONS_PER_WINDOW completions per window.
WINDOWS = 5
MIN_WAVES = 4
MIN_COMPLETIONS_PER_WINDOW = 3


def peak_in_flight(starts_s: np.ndarray, ends_s: np.ndarray) -> int:
    """Most requests in flight at once, from their send and completion times."""
    times = np.concatenate([starts_s, ends_s])
    steps = np.concatenate([np.ones(len(starts_s)), -np.ones(len(ends_s))])
    order = np.lexsort((steps, times))  # an end before a start at the same instant
    return int(np.cumsum(steps[order]).max()) if len(times) else 0


def rate_windows(duration_s: float, completions: int, peak: int) -> tuple[int, str | None]:
    """How many equal windows a point's duration is split into for its rate interval (WINDOWS), or
    0 and why none is valid (too few completions, too few waves of its peak in flight)."""
    if not duration_s or duration_s <= 0 or not math.isfinite(duration_s):
        return 0, "no duration"
    if completions < WINDOWS * MIN_COMPLETIONS_PER_WINDOW:
        return 0, f"{completions} completions: fewer than {MIN_COMPLETIONS_PER_WINDOW} per window of {WINDOWS}"
    if completions < MIN_WAVES * peak:
        return 0, (f"{completions} completions with up to {peak} in flight: fewer than {MIN_WAVES} waves, the "
                   f"point is mostly ramp-up and drain")
    return WINDOWS, None


def rate_interval(times_s: np.ndarray, weights: np.ndarray, duration_s: float, windows: int,
                  level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Batch-means interval of rates sum(weights) / duration_s, one per column of ``weights``
    (shape (events,) or (events, rates)): events at ``times_s`` (completion times from the
    point's start) go to ``windows`` equal windows of [0, duration_s]; each window's rate is its
    weights / its length; the interval is their mean (= the point's rate, events outside
    [0, duration] clipped to the edge windows) +/- t_(windows-1) x their SD / sqrt(windows), its
    low end cut at 0."""
    w = np.asarray(weights, dtype=float)
    w2 = w.reshape(len(w), -1)
    width = duration_s / windows
    idx = np.clip((np.asarray(times_s, dtype=float) // width).astype(int), 0, windows - 1)
    sums = np.zeros((windows, w2.shape[1]))
    np.add.at(sums, idx, w2)
    rates = sums / width
    mean = rates.mean(axis=0)
    se = rates.std(axis=0, ddof=1) / math.sqrt(windows)
    t = st.t.ppf(0.5 + level / 2.0, windows - 1)
    # a rate is never negative: the interval is cut at 0 (which keeps its coverage)
    low, high = np.maximum(mean - t * se, 0.0), mean + t * se
    flat = ~(se > 0)
    low[flat], high[flat] = np.nan, np.nan
    if w.ndim == 1:
        return low[:1].reshape(()), high[:1].reshape(())
    return low, high
