"""The statistics of ``context-research compare``: the test of a difference of medians, the
between-run noise, Holm's adjustment, the verdict and the smallest change a test could detect.

Pure functions of arrays (``analysis.compare`` calls ``judge`` on the runs ``analysis.compare_io`` read;
``analysis.calibration`` drives the same ``judge`` with simulated runs of known truth).

The model, per test (a metric at a point), on the log scale of the pooled medians m_A, m_B of
R_A and R_B runs: d = log(m_B / m_A), its variance one of two forms.

* Several runs on a side: Var(d) = s^2 (1 / R_A + 1 / R_B), s the runs' own SD of one run's log
  median around its side's mean (its requests' noise and the drift between runs together), pooled
  over the points of the metric and the sides. Its degrees of freedom count RUNS: sum over sides of
  (runs - 1), never times the points, because a drift moves every point of a run together (2 runs
  per side: 2 degrees of freedom, a wide t quantile). The classic two-sample t-test on run-level
  log medians.
* One run per side (or E0's SD larger than the runs'): Var(d) = v_A + v_B + tau^2 (1 / R_A +
  1 / R_B); v_A, v_B each side's request-level variance of its log median by bootstrap (requests
  resampled, ``resamples`` times, seeded: a test depends only on its data and seed), n_A + n_B - 2
  degrees of freedom; tau E0's SD of log per-start medians (starts - 1 degrees of freedom), 0
  without E0. The two combine by Welch-Satterthwaite.
* d / sqrt(Var(d)) is compared with Student-t on those df: two-sided p-value, CI of B/A =
  exp(d -/+ t se), CI of B - A = m_A (that - 1).
* Holm's step-down adjustment over every test of the comparison; verdict better / worse when the
  adjusted p <= alpha and |B/A - 1| >= min_effect.
* ``mde_pct``: the smallest change, in percent of A, the test detects with probability POWER (80 %)
  at its noise, n and the family's alpha: log(1 + mde) = max(t_(1 - alpha / (2 m)) se,
  log(1 + min_effect)) + t_POWER se, on the test's df, alpha / m being Holm's strictest threshold
  (what a lone true change among m tests must pass). A ratio B/A outside [1 / (1 + mde), 1 + mde]
  is detected with at least 80 % probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from scipy import stats as st

BOOTSTRAP_RESAMPLES = 2000
POWER = 0.8
# Largest resampled array built at once (elements), to bound memory on large point samples.
_MAX_BATCH_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class DeltaTest:
    """Difference of medians b - a with its CI, two-sided p-value, the standard error of
    log(b / a) and its degrees of freedom."""
    a: float
    b: float
    delta: float
    relative_delta: float | None
    ci_low: float
    ci_high: float
    p_value: float
    se: float = math.nan
    df: float = math.nan


@lru_cache(maxsize=4096)
def _t_ppf(q: float, df: float) -> float:
    return float(st.t.ppf(q, df))


def log_median_variance(x: np.ndarray, resamples: int, rng: np.random.Generator) -> float:
    """Bootstrap variance of the log of the median of ``x`` (positive values)."""
    batch = max(1, _MAX_BATCH_ELEMENTS // max(len(x), 1))
    logs = np.empty(resamples)
    for start in range(0, resamples, batch):
        k = min(batch, resamples - start)
        logs[start:start + k] = np.log(np.median(x[rng.integers(0, len(x), size=(k, len(x)))], axis=1))
    return float(np.var(logs, ddof=1))


def satterthwaite(parts: Sequence[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of variance estimates ``(variance, df)`` (Welch-Satterthwaite)."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / df for v, df in parts if v > 0 and math.isfinite(df) and df > 0)
    return math.inf if denom == 0 else total * total / denom


def median_delta_test(a: Sequence[float], b: Sequence[float], *, between_var: float = 0.0,
                      between_df: float = math.inf, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0, request_level: bool = True) -> DeltaTest:
    """The test of log(median(b) / median(a)) (module docstring): request-level bootstrap
    variances plus ``between_var`` (tau^2 (1/R_A + 1/R_B)) with ``between_df`` degrees of freedom;
    without ``request_level``, ``between_var`` alone (the runs' own spread, which holds their
    requests' noise already)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(xa) == 0 or len(xb) == 0:
        raise ValueError("both samples need at least one value")
    ma, mb = float(np.median(xa)), float(np.median(xb))
    delta = mb - ma
    rel = delta / ma if ma else None
    if not (ma > 0 and mb > 0 and np.all(xa > 0) and np.all(xb > 0)):
        return DeltaTest(ma, mb, delta, rel, math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    v_req = log_median_variance(xa, resamples, rng) + log_median_variance(xb, resamples, rng) if request_level else 0.0
    var = v_req + between_var
    df = satterthwaite([(v_req, len(xa) + len(xb) - 2), (between_var, between_df)])
    d = math.log(mb / ma)
    if not var > 0:  # no spread anywhere: no test, and never an interval of width zero
        return DeltaTest(ma, mb, delta, rel, math.nan, math.nan, math.nan, 0.0, df)
    se = math.sqrt(var)
    p = float(2.0 * st.t.sf(abs(d) / se, df))
    tq = _t_ppf(0.5 + level / 2.0, df)
    return DeltaTest(ma, mb, delta, rel, ma * (math.exp(d - tq * se) - 1.0), ma * (math.exp(d + tq * se) - 1.0),
                     p, se, df)


def bootstrap_median_delta(a: Sequence[float], b: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = 0, level: float = 0.95, start_sd: float = 0.0,
                           start_sd_b: float | None = None, start_df: float = math.inf) -> DeltaTest:
    """``median_delta_test`` with the between-run noise given as each side's SD of its log median
    (``start_sd`` for A, ``start_sd_b`` for B, default A's) and its degrees of freedom."""
    sd_b = start_sd if start_sd_b is None else start_sd_b
    return median_delta_test(a, b, between_var=start_sd ** 2 + sd_b ** 2, between_df=start_df, level=level,
                             resamples=resamples, seed=seed)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest p times
    (m - i + 1), made non-decreasing, capped at 1. Reject where adjusted <= alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdict(test: DeltaTest, p_holm: float, *, alpha: float, min_effect: float,
            lower_is_better: bool = True) -> str:
    """better / worse only when the CI excludes zero, Holm rejects at ``alpha`` and the relative
    change reaches ``min_effect``; otherwise no significant change."""
    excludes_zero = test.ci_low > 0 or test.ci_high < 0
    large_enough = test.relative_delta is not None and abs(test.relative_delta) >= min_effect
    if not (excludes_zero and p_holm <= alpha and large_enough):
        return "no significant change"
    improved = test.delta < 0 if lower_is_better else test.delta > 0
    return "better" if improved else "worse"


def mde_pct(se: float, df: float, tests: int, alpha: float, min_effect: float, power: float = POWER) -> float | None:
    """The smallest change (percent of A) detected with probability ``power`` (module docstring);
    None without a standard error."""
    if not (se >= 0 and df > 0) or tests < 1:
        return None
    critical = max(_t_ppf(1.0 - alpha / (2.0 * tests), df) * se, math.log1p(min_effect))
    return 100.0 * math.expm1(critical + _t_ppf(power, df) * se)


# -- between-run noise -----------------------------------------------------------------------------

def between_run_sds(per_run: dict[str, dict[str, list[list[np.ndarray]]]]) -> dict[str, tuple[float, int]]:
    """The runs' own spread, from sides measured more than once: per metric, the SD of the log of
    each run's median around its side's mean, pooled over points and sides, and its degrees of
    freedom, which count runs (sum over sides of runs - 1, the most any point has), never points: a
    drift moves every point of a run together, so the points repeat one another's evidence of it.
    The SD holds each run's request-level noise as well: it is the SD of one run's log median.
    ``per_run``: point -> metric -> [side A's runs' values, side B's] (each a list of arrays, one
    per run). Metrics no side ran twice are absent."""
    squares: dict[str, float] = {}
    dof: dict[str, int] = {}
    runs_df: dict[str, int] = {}
    for metrics in per_run.values():
        for name, sides in metrics.items():
            point_df = 0
            for runs in sides:
                logs = [math.log(float(np.median(v))) for v in runs if len(v) and float(np.median(v)) > 0]
                if len(logs) < 2:
                    continue
                mean = sum(logs) / len(logs)
                squares[name] = squares.get(name, 0.0) + sum((x - mean) ** 2 for x in logs)
                dof[name] = dof.get(name, 0) + len(logs) - 1
                point_df += len(logs) - 1
            if point_df:
                runs_df[name] = max(runs_df.get(name, 0), point_df)
    return {name: (math.sqrt(squares[name] / dof[name]), runs_df[name]) for name in dof}


# -- the family of tests ---------------------------------------------------------------------------

@dataclass
class Pair:
    """One test of the family: each side's runs' values, the group whose runs' spread it shares
    (experiment and metric), E0's between-start SD and its df (0: none), and the direction."""
    runs_a: list[np.ndarray]
    runs_b: list[np.ndarray]
    group: tuple[str, str]
    e0_sd: float = 0.0
    e0_df: float = math.inf
    lower_is_better: bool = True
    e0_name: str | None = None


def judge(items: Sequence[Pair], per_run: dict[Any, dict[str, dict[str, list[list[np.ndarray]]]]], *,
          alpha: float, min_effect: float, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict[str, Any]]:
    """Test every item, Holm over all of them, the verdict and ``mde_pct`` of each: one dict per
    item with test, p_holm, verdict, mde_pct, start_sd, df and note. ``per_run``: experiment ->
    point -> metric -> [A's runs, B's runs], for ``between_run_sds``."""
    replicate = {exp: between_run_sds(points) for exp, points in per_run.items()}
    out: list[dict[str, Any]] = []
    for item in items:
        exp, metric = item.group
        run_sd, run_df = replicate.get(exp, {}).get(metric, (0.0, 0))
        sources = [f"E0's {item.e0_name or metric} {item.e0_sd:.3f} ({item.e0_df:g} degrees of freedom)"] \
            if item.e0_sd else []
        sources += [f"the runs' own {run_sd:.3f} ({run_df} degrees of freedom: runs, not points)"] if run_df else []
        use_e0 = item.e0_sd > run_sd
        sd, sd_df = (item.e0_sd, item.e0_df) if use_e0 else (run_sd, run_df)
        note = (f"between-run SD {sd:.3f}, the larger of " + " and ".join(sources) if len(sources) > 1 else
                f"between-run SD {sd:.3f} ({sources[0]})" if sources else "request-level noise only")
        between_var = sd * sd * (1.0 / len(item.runs_a) + 1.0 / len(item.runs_b))
        # The runs' own spread is that of one run's whole log median, its requests' noise included:
        # it stands alone. E0's is the spread of E0's medians: this point's requests add theirs.
        test = median_delta_test(np.concatenate(item.runs_a), np.concatenate(item.runs_b), between_var=between_var,
                                 between_df=sd_df if sd > 0 else math.inf, level=1.0 - alpha, resamples=resamples,
                                 seed=seed, request_level=not run_df or use_e0)
        out.append({"test": test, "start_sd": sd, "df": test.df, "note": note, "item": item})
    adjusted = holm([r["test"].p_value if not math.isnan(r["test"].p_value) else 1.0 for r in out])
    for row, p_holm in zip(out, adjusted):
        test, item = row["test"], row.pop("item")
        row["p_holm"] = p_holm
        row["verdict"] = verdict(test, p_holm, alpha=alpha, min_effect=min_effect,
                                 lower_is_better=item.lower_is_better)
        row["mde_pct"] = mde_pct(test.se, test.df, len(out), alpha, min_effect)
    return out
