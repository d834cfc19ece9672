"""Comparing two runs (``context-research compare A B``): per experiment, metric and point, the
difference of medians B - A, its CI and p-value, Holm's adjustment, a verdict and the smallest
change the test could detect (``mde_pct``).

Pure: reads saved result folders (``analysis.compare_io``), returns frames and dicts;
``compare_report`` writes the files and states the method.
The statistics are ``analysis.compare_stats`` (its docstring states the model; docs/statistics.md,
"Comparisons", its measured false-call rate and power):

* Each test: log(median B / median A), its variance the requests' (bootstrap, each side's
  requests resampled, seeded) plus the between-run variance tau^2 (1/R_A + 1/R_B), Student-t on
  Welch-Satterthwaite degrees of freedom.
* Between engine starts: two runs are two engine starts, and on a busy host one start's medians
  differ from another's by more than their requests' spread. tau is the larger of E0's SD of log
  per-start medians of the same metric (``start_noise``; the decode-pace metrics TPOT, engine ITL
  and E2E pool their SDs, E0's short prompt making all three measure the decode pace; degrees of
  freedom: starts - 1) and, with several runs on a side, the runs' own spread beyond their
  requests' noise (degrees of freedom: runs - 1 per side, never times the points). Neither: 0,
  request-level only, which the report says.
* Holm's step-down adjustment over every test controls the family-wise error rate at alpha.
* Verdict: ``better`` / ``worse`` only when the CI excludes zero, the Holm-adjusted p-value is
  <= alpha, and |relative difference| >= ``min_effect``; else ``no significant change``, printed
  with ``mde_pct``. Fewer than ``stats.MIN_SAMPLES["p50"]`` requests in either run: ``not enough
  samples``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ContextResearchError
from .compare_layout import Layout, Metric, NotCompared
from .compare_io import (Run, check_comparable, e0_folder, find_run, is_ok, point_status, points_of, provenance_diff,
                         read_records)
from .compare_stats import BOOTSTRAP_RESAMPLES, DeltaTest, Pair, judge
from .stats import MIN_SAMPLES

VERDICTS = ("better", "worse", "no significant change", "not enough samples")
# Requests per run a median (and its CI) needs: the project's small-sample rule for p50.
MIN_REQUESTS = MIN_SAMPLES["p50"]
# compare.csv, column by column (documented in the report and README; not a result table of an
# experiment, so not in result_tables.TABLES, whose keys are "eN/<file>.csv").
COMPARE_COLUMNS: dict[str, str] = {
    "experiment": "experiment (e0 ... e6)",
    "metric": "what is compared, with its unit (ttft_ms: client TTFT; engine_ttft_ms: vLLM per-request "
              "metrics; ...)",
    "point": "the point (E1: prompt_tokens=...; E2: mode, level, prompt length; E3: prompt length, concurrency, "
             "mode; E5/E6: target; E0: all)",
    "a": "median of the metric over run A's successful requests at the point",
    "b": "median over run B's successful requests",
    "delta": "b - a (same unit as the metric)",
    "relative_delta": "delta / a (a fraction; empty when a is 0)",
    "ci_low": "lower bound of the CI of delta (level 1 - alpha): a x (exp(log(b/a) - t se) - 1), se from the "
              "requests' bootstrap and the between-run SD (docs/statistics.md, Comparisons)",
    "ci_high": "upper bound of the CI of delta: a x (exp(log(b/a) + t se) - 1)",
    "p_value": "two-sided Student-t p-value of log(b/a) != 0 on df degrees of freedom",
    "p_holm": "p_value after Holm's adjustment over every test of the comparison",
    "verdict": "better, worse, no significant change, not enough samples, or not compared",
    "mde_pct": "smallest change (percent of a) this test detects with 80% power at its noise, n and the family's "
               "alpha: log(1 + mde) = max(t(1 - alpha / (2 tests)) se, log(1 + min_effect)) + t(0.8) se on df degrees "
               "of freedom (alpha / tests: Holm's strictest threshold); a ratio b/a outside [1/(1+mde), 1+mde] is "
               "called with at least 80% probability; empty where nothing was tested",
    "n_a": "successful requests of run A at the point",
    "n_b": "successful requests of run B at the point",
    "min_effect": "smallest |relative_delta| that counts (--min-effect)",
    "df": "degrees of freedom of the test (Welch-Satterthwaite: the requests' n_a + n_b - 2 and the between-run "
          "SD's, which count engine starts or runs - 1 per side, never points)",
    "start_sd": "between-run SD of one run's log median: the larger of E0's across its engine starts and, with "
                "several runs per side, the runs' own spread beyond their requests' noise, pooled over points (each "
                "side's pooled median carries it / sqrt(runs)); 0: none measured",
    "note": "why not compared, which between-start SD applied, single measurements",
}
# Columns comparisons written before them lack (issue 25: the power of each test).
COMPARE_COLUMNS_ADDED = ("mde_pct", "df")


# E0 sends a short prompt and many output tokens: these three measure the same decode pace, so
# their between-start SDs are pooled (three estimates from E0's few starts instead of one).
DECODE_PACE = ("tpot_ms", "engine_itl_ms", "e2e_ms")
# Experiment name -> its comparison layout, or why it is not compared (each declaration's
# ``comparison``, handed in by the caller: ``experiments.declaration.comparison_layouts``).
Layouts = Mapping[str, "Layout | NotCompared"]


# -- between-start noise ---------------------------------------------------------------------------

def _engine_start(phase: pd.Series) -> pd.Series:
    # E0's phases: repeat-<k> on the first start, start<s>-repeat-<k> on the later ones
    return phase.astype(str).str.extract(r"^start(\d+)-", expand=False).fillna("0")


def start_sds(records: pd.DataFrame, layout: Layout) -> tuple[dict[str, float], int]:
    """E0's between-start noise: per metric, the SD (ddof 1) of the log of each engine start's
    median over its repeat requests; the decode-pace metrics (``DECODE_PACE``) each at least
    their pooled SD (root mean square). Returns (metric name -> SD, engine starts); no SDs with
    fewer than two starts. ``layout``: E0's (its ``keep`` picks the repeat requests)."""
    frame = records[layout.keep(records)] if layout.keep is not None else records
    if "ok" in frame.columns:
        frame = frame[is_ok(frame["ok"])]
    starts = _engine_start(frame["phase"])
    sds: dict[str, float] = {}
    for metric in layout.metrics:
        if metric.column not in frame.columns:
            continue
        medians = (pd.to_numeric(frame[metric.column], errors="coerce") * metric.scale).groupby(starts).median()
        medians = medians[medians > 0]
        if len(medians) >= 2:
            sds[metric.name] = float(np.log(medians.to_numpy(float)).std(ddof=1))
    pace = [sds[n] for n in DECODE_PACE if n in sds]
    if pace:
        pooled = math.sqrt(sum(v * v for v in pace) / len(pace))
        sds.update({n: max(sds[n], pooled) for n in DECODE_PACE if n in sds})
    return sds, int(starts.nunique())


@dataclass(frozen=True)
class StartNoise:
    sds: dict[str, float]           # E0 metric name -> SD of log per-start medians
    source: str                     # what the report says about it
    df: float = math.inf            # its degrees of freedom: engine starts - 1 (the fewest of the runs')

    def for_metric(self, metric: Metric) -> float:
        return self.sds.get(metric.noise, 0.0) if metric.noise else 0.0


def start_noise(a: Run, b: Run, use_e0: bool = True, layout: Layout | NotCompared | None = None) -> StartNoise:
    """The between-start SDs of the comparison: per metric the larger of the two runs' E0 (either
    run's noise can make a difference); one run's where only one has an E0 with several starts;
    none otherwise, which the report states. ``layout``: E0's comparison layout."""
    if not use_e0:
        return StartNoise({}, "not included (E0's between-start variation not used, as asked): the CI covers "
                              "request-to-request variation only")
    measured = {}
    for run in (a, b):
        folder = e0_folder(run, layout.records) if isinstance(layout, Layout) else None
        if folder is None:
            continue
        sds, starts = start_sds(read_records(folder, layout), layout)
        if sds:
            measured[run.label] = (sds, starts, folder)
    if not measured:
        return StartNoise({}, "not included: neither run has an E0 with two or more engine starts, so the CI "
                              "covers request-to-request variation only and an engine-start difference can be "
                              "called a change (add e0 to compare.experiments)")
    names = sorted({n for sds, _, _ in measured.values() for n in sds})
    sds = {n: max(s[n] for s, _, _ in measured.values() if n in s) for n in names}
    shown = ", ".join(f"{n} {v:.3f}" for n, v in sds.items())
    sources = "; ".join(f"{label}: {folder} ({starts} engine starts, {starts - 1} degrees of freedom)"
                        for label, (_, starts, folder) in measured.items())
    only = "" if len(measured) == 2 else f" (only run {next(iter(measured))} has one)"
    df = min(starts for _, starts, _ in measured.values()) - 1
    return StartNoise(sds, f"SD of log per-start medians across E0's engine starts{only}, the larger of the runs' "
                           f"where both have one: {shown}; {sources}; decode-pace metrics ({', '.join(DECODE_PACE)}) "
                           f"at least their pooled SD", df)


# -- the comparison --------------------------------------------------------------------------------

@dataclass
class Options:
    min_effect: float = 0.05
    alpha: float = 0.05
    seed: int = 0
    resamples: int | None = None          # None: compare_stats.BOOTSTRAP_RESAMPLES
    allow_different_hardware: bool = False
    use_e0_start_noise: bool = True


@dataclass
class Comparison:
    runs_a: list[Run]                   # every run of side A (one unless compare.runs_per_side > 1)
    runs_b: list[Run]
    options: Options
    table: pd.DataFrame                 # compare.csv
    samples: dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]  # exp -> point -> metric -> (a, b)
    allowed_differences: list[str]
    provenance: dict[str, dict[str, Any]]
    noise: StartNoise
    resamples: int
    tests: int
    not_compared_experiments: dict[str, str]

    @property
    def a(self) -> Run:
        """Side A's first run: the one its metadata, E0 and provenance are read from."""
        return self.runs_a[0]

    @property
    def b(self) -> Run:
        return self.runs_b[0]


def _row(experiment, metric, point, note, *, verdict_text, n_a=0, n_b=0, min_effect=None, start_sd=None,
         test=None) -> dict:
    row = {"experiment": experiment, "metric": metric, "point": point, "a": None, "b": None, "delta": None,
           "relative_delta": None, "ci_low": None, "ci_high": None, "p_value": None, "p_holm": None,
           "verdict": verdict_text, "mde_pct": None, "n_a": n_a, "n_b": n_b, "min_effect": min_effect,
           "start_sd": start_sd, "df": None, "note": note}
    if test is not None:
        row.update(a=test.a, b=test.b, delta=test.delta, relative_delta=test.relative_delta)
    return row


def _side_paths(where: str | Path | Sequence[str | Path]) -> list[Path]:
    """One side's result folders: a path, a comma-separated list, or a sequence (its runs)."""
    items = where.split(",") if isinstance(where, str) else [where] if isinstance(where, Path) else list(where)
    return [Path(str(x).strip()) for x in items if str(x).strip()]


def _check_options(opts: Options) -> None:
    if not 0 < opts.alpha < 1:
        raise ContextResearchError(f"--alpha must lie in (0, 1), got {opts.alpha}")
    if opts.resamples is not None and opts.resamples < 100:
        raise ContextResearchError(f"--resamples must be at least 100, got {opts.resamples}")
    if opts.min_effect < 0:
        raise ContextResearchError(f"--min-effect must be >= 0, got {opts.min_effect}")


def _sides(a_path: str | Path | Sequence[str | Path],
           b_path: str | Path | Sequence[str | Path]) -> tuple[list[Run], list[Run]]:
    """Each side's runs (labelled A, A2, ... and B, B2, ...), at least one per side."""
    side_a = [find_run(path, f"A{k + 1}" if k else "A") for k, path in enumerate(_side_paths(a_path))]
    side_b = [find_run(path, f"B{k + 1}" if k else "B") for k, path in enumerate(_side_paths(b_path))]
    if not side_a or not side_b:
        raise ContextResearchError(f"{'A' if not side_a else 'B'}: no result folder given")
    return side_a, side_b


def _comparable(side_a: list[Run], side_b: list[Run], layouts: Layouts) -> tuple[list[str], dict[str, str]]:
    """The experiments every run of both sides holds and a layout compares, and why each other one
    is not compared."""
    in_a = set.intersection(*(set(r.experiments) for r in side_a))
    in_b = set.intersection(*(set(r.experiments) for r in side_b))
    common = sorted(in_a & in_b)
    not_compared = {e: f"only in {'A' if e in in_a else 'B'}" for e in sorted(in_a ^ in_b)}
    for e in list(common):
        layout = layouts.get(e)
        if not isinstance(layout, Layout):
            not_compared[e] = layout.reason if isinstance(layout, NotCompared) else \
                "no comparison layout for this experiment"
    comparable = [e for e in common if isinstance(layouts.get(e), Layout)]
    if not comparable:
        raise ContextResearchError(f"{side_a[0].root} and {side_b[0].root} share no comparable experiment "
                                   f"(A: {', '.join(sorted(in_a))}; B: {', '.join(sorted(in_b))})")
    return comparable, not_compared


@dataclass
class _Found:
    """What the walk over experiments, points and metrics found: compare.csv's rows so far, the
    tests still to judge (row index, each side's per-run samples, metric, experiment), the pooled
    samples of every compared metric and the per-run samples of the tested ones."""
    rows: list[dict] = field(default_factory=list)
    pending: list[tuple[int, list[np.ndarray], list[np.ndarray], Metric, str]] = field(default_factory=list)
    samples: dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = field(default_factory=dict)
    per_run: dict[str, dict[str, dict[str, list[list[np.ndarray]]]]] = field(default_factory=dict)


def compare(a_path: str | Path | Sequence[str | Path], b_path: str | Path | Sequence[str | Path],
            options: Options | None = None, *, layouts: Layouts) -> Comparison:
    """Compare the runs in ``a_path`` and ``b_path`` (see ``find_run``); either side may be
    several runs of the same settings (comma-separated), whose requests are pooled and whose
    medians' spread is the between-run noise. ``layouts`` are the experiments' declared
    comparison layouts (E0's gives the between-start noise). Raise ContextResearchError when they
    may not be compared (``check_comparable``, also between the runs of one side)."""
    opts = options or Options()
    _check_options(opts)
    side_a, side_b = _sides(a_path, b_path)
    a, b = side_a[0], side_b[0]
    comparable, not_compared = _comparable(side_a, side_b, layouts)
    compared = {e: layouts[e] for e in comparable}
    allowed = check_comparable(a, b, compared, opts.allow_different_hardware)
    for first, more in ((a, side_a[1:]), (b, side_b[1:])):
        for run in more:  # the runs of one side must be the same settings on the same hardware
            check_comparable(first, run, compared, False)
    noise = start_noise(a, b, opts.use_e0_start_noise, layouts.get("e0"))
    found = _Found()
    for exp in comparable:
        _walk_experiment(found, exp, compared[exp], side_a, side_b, opts)
    resamples = opts.resamples or BOOTSTRAP_RESAMPLES
    _judge_pending(found, noise, opts, resamples)
    table = pd.DataFrame(found.rows, columns=list(COMPARE_COLUMNS))
    return Comparison(side_a, side_b, opts, table, found.samples, allowed, provenance_diff(a, b, comparable), noise,
                      resamples, len(found.pending), not_compared)


def _walk_experiment(found: _Found, exp: str, layout: Layout, side_a: list[Run], side_b: list[Run],
                     opts: Options) -> None:
    """Every point either side measured (or lists in its point table), every metric of the layout."""
    points_a = [points_of(r.experiments[exp], layout) for r in side_a]
    points_b = [points_of(r.experiments[exp], layout) for r in side_b]
    status_a = [point_status(r.experiments[exp], layout) for r in side_a]
    status_b = [point_status(r.experiments[exp], layout) for r in side_b]
    found.samples[exp], found.per_run[exp] = {}, {}
    labels = list(dict.fromkeys([*(k for ps in points_a + points_b for k in ps),
                                 *(k for st in status_a + status_b for k in (st or {}))]))
    for point in labels:
        for metric in layout.metrics:
            reason = next((r for r in (
                *(_not_compared_reason(point, pa, points_b[0], sa, status_b[0], metric.engine_side)
                  for pa, sa in zip(points_a, status_a)),
                *(_not_compared_reason(point, points_a[0], pb, status_a[0], sb, metric.engine_side)
                  for pb, sb in zip(points_b, status_b))) if r), None)
            runs_a = [ps.get(point, {}).get(metric.name, np.empty(0)) for ps in points_a]
            runs_b = [ps.get(point, {}).get(metric.name, np.empty(0)) for ps in points_b]
            _add_metric(found, exp, layout, point, metric, reason, runs_a, runs_b, opts)


def _add_metric(found: _Found, exp: str, layout: Layout, point: str, metric: Metric, reason: str | None,
                runs_a: list[np.ndarray], runs_b: list[np.ndarray], opts: Options) -> None:
    """One metric at one point: a row not compared (``reason``), stated without a test, or pending
    its test (judged together with every other test, for Holm's adjustment)."""
    xa, xb = np.concatenate(runs_a), np.concatenate(runs_b)
    if reason:
        found.rows.append(_row(exp, metric.name, point, f"not compared: {reason}", verdict_text="not compared",
                               n_a=len(xa), n_b=len(xb)))
        return
    if len(xa) == 0 and len(xb) == 0:
        return  # a metric neither run measured here (no per-request engine metrics)
    found.samples[exp].setdefault(point, {})[metric.name] = (xa, xb)
    if layout.single or min(len(xa), len(xb)) < MIN_REQUESTS:
        found.rows.append(_untested_row(exp, layout, point, metric, xa, xb, opts))
        return
    found.per_run[exp].setdefault(point, {})[metric.name] = [runs_a, runs_b]
    found.rows.append(_row(exp, metric.name, point, "", verdict_text="", n_a=len(xa), n_b=len(xb),
                           min_effect=opts.min_effect))
    found.pending.append((len(found.rows) - 1, runs_a, runs_b, metric, exp))


def _untested_row(exp: str, layout: Layout, point: str, metric: Metric, xa: np.ndarray, xb: np.ndarray,
                  opts: Options) -> dict:
    """A metric stated without a test: measured on one side only, one request per point (the
    difference of the two, no CI), or too few requests for a median."""
    test = None
    if len(xa) and len(xb):
        ma, mb = float(np.median(xa)), float(np.median(xb))
        test = DeltaTest(ma, mb, mb - ma, (mb - ma) / ma if ma else None, math.nan, math.nan, math.nan)
    if not (len(xa) and len(xb)):
        note = f"not measured in {'A' if not len(xa) else 'B'} (e.g. no per-request engine metrics)"
    elif layout.single:
        note = "one request per point and run: the difference is stated, no CI"
    else:
        note = f"a median needs at least {MIN_REQUESTS} requests in each run (analysis.stats.MIN_SAMPLES)"
    return _row(exp, metric.name, point, note, verdict_text="not enough samples", n_a=len(xa), n_b=len(xb),
                min_effect=opts.min_effect, test=test)


def _judge_pending(found: _Found, noise: StartNoise, opts: Options, resamples: int) -> None:
    """Test every pending row at once (``compare_stats.judge``: bootstrap, Holm, verdict) and fill
    its columns in."""
    items = [Pair(runs_a, runs_b, (exp, metric.name), noise.for_metric(metric), noise.df, metric.lower_is_better,
                  metric.noise) for _, runs_a, runs_b, metric, exp in found.pending]
    judged = judge(items, found.per_run, alpha=opts.alpha, min_effect=opts.min_effect, seed=opts.seed,
                   resamples=resamples)
    for (i, *_), result in zip(found.pending, judged):
        test = result["test"]
        found.rows[i].update(a=test.a, b=test.b, delta=test.delta, relative_delta=test.relative_delta,
                             ci_low=test.ci_low, ci_high=test.ci_high, p_value=test.p_value, p_holm=result["p_holm"],
                             verdict=result["verdict"], mde_pct=result["mde_pct"], start_sd=result["start_sd"],
                             df=result["df"], note=result["note"])


def _not_compared_reason(point, pa, pb, status_a, status_b, engine_side: bool = False) -> str | None:
    """Why ``point`` is not compared (None: it is). A point is compared when it is ``ok`` in both
    runs; an engine-side metric also where every finding of a run is the client's (client delivery,
    a client TPOT below the engine's ITL: the engine's timings stand, the client's do not)."""
    for side, points, status in (("A", pa, status_a), ("B", pb, status_b)):
        if status is not None:
            if point not in status:
                return f"point not in {side}'s point table"
            state = status[point]
            if state.status != "ok" and not (engine_side and state.engine_stands):
                return f"status {state.status} in {side}" + (f" ({state.reason})" if state.reason else "")
        elif point not in points:
            return f"no successful request at this point in {side}"
    return None


def significant(table: pd.DataFrame) -> pd.DataFrame:
    """The rows called better or worse: the report's headline."""
    return table[table["verdict"].isin(("better", "worse"))]
