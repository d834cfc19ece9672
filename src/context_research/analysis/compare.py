"""Comparing two runs (``context-research compare A B``): per experiment, metric and point, the
difference of medians B - A, its CI and p-value, Holm's adjustment, a verdict and the smallest
change the test could detect (``mde_pct``).

Pure: reads saved result folders, returns frames and dicts; ``compare_report`` writes the files.
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
from ..evidence import packed_under
from ..io import read_json
from ..provenance import flatten
from .compare_layout import Layout, Metric, NotCompared
from .compare_stats import (BOOTSTRAP_RESAMPLES, POWER, DeltaTest, Pair, between_run_sds,  # noqa: F401 (re-exported)
                            bootstrap_median_delta, holm, judge, median_delta_test, verdict)
from .stats import MIN_SAMPLES

VERDICTS = ("better", "worse", "no significant change", "not enough samples")
# Requests per run a median (and its CI) needs: the project's small-sample rule for p50.
MIN_REQUESTS = MIN_SAMPLES["p50"]
# compare.csv, column by column (documented in the report and README; it spans two runs, so it
# is no experiment's declared table).
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
# Experiment name -> its comparison layout, or why it is not compared (the catalog's, handed in).
Layouts = Mapping[str, "Layout | NotCompared"]


# -- finding the runs ------------------------------------------------------------------------------

@dataclass
class Run:
    """One side of a comparison: its experiment folders by name, and where they came from."""
    label: str
    root: Path
    experiments: dict[str, Path]
    metadata: dict[str, dict] = field(default_factory=dict)


def _experiment_name(folder: Path) -> str:
    meta = folder / "run_metadata.json"
    if meta.is_file():
        name = read_json(meta).get("experiment")
        if name:
            return str(name)
    return folder.name


def find_run(where: str | Path, label: str) -> Run:
    """The experiments of a result folder: a results root holding ``eN/`` folders (``results``,
    ``results/variants/<v>``, ``docs/evidence/<x>/results``) or one experiment folder
    (``results/e1``, recognised by its ``run_metadata.json``)."""
    root = Path(where)
    if not root.is_dir():
        raise ContextResearchError(f"{label}: {root} is not a folder")
    if (root / "run_metadata.json").is_file():
        experiments = {_experiment_name(root): root}
    else:
        experiments = {p.name: p for p in sorted(root.iterdir())
                       if p.is_dir() and p.name[:1] == "e" and p.name[1:].isdigit()
                       and (p / "run_metadata.json").is_file()}
    if not experiments:
        raise ContextResearchError(f"{label}: {root} holds no experiment results (no eN/run_metadata.json, "
                                   f"nor a run_metadata.json of its own)")
    packed = packed_under(root)
    if packed and packed[1]:
        raise ContextResearchError(f"{label}: {len(packed[1])} file(s) under {root} ({packed[1][0]}, ...) are packed in "
                                   f"{packed[0] / 'raw.tar.xz'}: python -m context_research.evidence unpack {packed[0]}")
    return Run(label, root, experiments, {name: read_json(p / "run_metadata.json") for name, p in experiments.items()})


def _e0_folder(run: Run, layout: Layout) -> Path | None:
    """E0's folder for the run: its own e0, else the e0 beside a single experiment folder."""
    single = (run.root / "run_metadata.json").is_file()
    folder = run.experiments.get("e0") or (run.root.parent / "e0" if single else None)
    return folder if folder is not None and (folder / layout.records).is_file() else None


# -- refusals --------------------------------------------------------------------------------------

def _hardware(meta: dict) -> str | None:
    gpu = (meta.get("hash_inputs") or {}).get("gpu")
    label = meta.get("hardware_label")
    return f"{label} (gpu: {gpu})" if gpu and label else label or gpu


def _model(meta: dict) -> dict[str, Any]:
    inputs = meta.get("hash_inputs") or {}
    out = {"model_id": meta.get("model_id"), "weights": meta.get("weights")}
    if "model_files" in inputs:
        out["model_files"] = inputs["model_files"]
    return out


def _backend_modes(meta: dict, records: pd.DataFrame | None) -> set[str]:
    modes = {str(meta["backend_mode"])} if meta.get("backend_mode") else set()
    if records is not None and "backend_mode" in records.columns:
        modes |= {str(m) for m in records["backend_mode"].dropna().unique()}
    return modes


def check_comparable(a: Run, b: Run, experiments: Sequence[str], layouts: Layouts,
                     allow_different_hardware: bool = False) -> list[str]:
    """Raise ContextResearchError naming what differs when the runs may not be compared: simulated
    against real rows (always), a different GPU / hardware or model (unless
    ``allow_different_hardware``). Returns the differences allowed, for the report."""
    refusals, allowed = [], []
    for name in experiments:
        ma, mb = a.metadata[name], b.metadata[name]
        modes_a = _backend_modes(ma, _read_records(a.experiments[name], layouts.get(name)))
        modes_b = _backend_modes(mb, _read_records(b.experiments[name], layouts.get(name)))
        if modes_a != modes_b or len(modes_a) > 1:
            refusals.append(f"{name}: backend_mode {'+'.join(sorted(modes_a)) or '?'} in A vs "
                            f"{'+'.join(sorted(modes_b)) or '?'} in B (simulated rows are never compared with real ones)")
        hw_a, hw_b = _hardware(ma), _hardware(mb)
        if hw_a != hw_b:
            (allowed if allow_different_hardware else refusals).append(
                f"{name}: hardware {hw_a!r} in A vs {hw_b!r} in B")
        model_a, model_b = _model(ma), _model(mb)
        for key in sorted(set(model_a) | set(model_b)):
            if model_a.get(key) != model_b.get(key):
                (allowed if allow_different_hardware else refusals).append(
                    f"{name}: {key} {model_a.get(key)!r} in A vs {model_b.get(key)!r} in B")
    if refusals:
        hint = "" if all("backend_mode" in r for r in refusals) else \
            " (pass --allow-different-hardware to compare different hardware or models anyway)"
        raise ContextResearchError(f"refusing to compare {a.root} with {b.root}: " + "; ".join(refusals) + hint)
    return allowed


def provenance_diff(a: Run, b: Run, experiments: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per experiment, ``{"source": what was compared, "lines": one line per input that differs}``:
    the ``hash_inputs`` of run_metadata.json (as ``context-research provenance A B``), or, for runs
    written before hash inputs were recorded, their config, versions and hardware."""
    out: dict[str, dict[str, Any]] = {}
    missing = object()
    for name in experiments:
        ma, mb = a.metadata[name], b.metadata[name]
        if "hash_inputs" in ma and "hash_inputs" in mb:
            left, right = flatten(ma["hash_inputs"]), flatten(mb["hash_inputs"])
            source = "hash_inputs (run_metadata.json)"
        else:
            def fallback(meta):
                return flatten({k: meta.get(k) for k in ("config", "versions", "hardware_label", "model_id", "weights",
                                                          "engine_distribution")})
            left, right = fallback(ma), fallback(mb)
            source = "no hash_inputs recorded: run_metadata config, versions and hardware compared"
        lines = []
        for key in sorted(set(left) | set(right)):
            x, y = left.get(key, missing), right.get(key, missing)
            if x != y:
                lines.append(f"{key}: {'(absent)' if x is missing else _show(x)} -> "
                             f"{'(absent)' if y is missing else _show(y)}")
        out[name] = {"source": source, "lines": lines}
    return out


def _show(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# -- records and points ----------------------------------------------------------------------------

def _read_records(folder: Path, layout: Layout | NotCompared | None) -> pd.DataFrame | None:
    if not isinstance(layout, Layout) or not (folder / layout.records).is_file():
        return None
    return pd.read_csv(folder / layout.records, low_memory=False)


def _key_value(value: Any) -> str:
    """A point coordinate as text: 4096.0 and "4096" print alike, so CSVs written by pandas
    (which writes an int column with gaps as floats) still join."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def point_label(columns: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{c}={_key_value(v)}" for c, v in zip(columns, values)) if columns else "all"


def _point_status(folder: Path, layout: Layout) -> dict[str, tuple[str, str]] | None:
    """Point label -> (status, reason) from the point table, or None where the run has none."""
    if layout.points_table is None or not (folder / layout.points_table).is_file():
        return None
    table = pd.read_csv(folder / layout.points_table, low_memory=False)
    if "status" not in table.columns or not set(layout.points_table_columns) <= set(table.columns):
        return None
    out = {}
    for _, row in table.iterrows():
        label = point_label(layout.point_columns, [row[c] for c in layout.points_table_columns])
        reason = row.get("reason")
        reason = "" if reason is None or (isinstance(reason, float) and math.isnan(reason)) else " ".join(
            str(reason).split())
        # a reason can hold a whole server reply: the note keeps its start
        out[label] = (str(row["status"]), reason if len(reason) <= 200 else reason[:197] + "...")
    return out


def _is_ok(series: pd.Series) -> pd.Series:
    return series.astype(str).str.lower().isin(("true", "1", "1.0"))


def points_of(folder: Path, layout: Layout) -> dict[str, dict[str, np.ndarray]]:
    """Point label -> metric name -> the successful requests' values (scaled), in file order."""
    frame = _read_records(folder, layout)
    if frame is None:
        return {}
    for column, older in layout.fallbacks:
        if column in layout.point_columns and column not in frame.columns and older in frame.columns:
            frame = frame.assign(**{column: frame[older]})
    if layout.keep is not None:
        frame = frame[layout.keep(frame)]
    if "ok" in frame.columns:
        frame = frame[_is_ok(frame["ok"])]
    out: dict[str, dict[str, np.ndarray]] = {}
    # An empty coordinate (E2's trace point has no single prompt length) stays part of the label.
    labels = pd.Series([point_label(layout.point_columns, [row.get(c) for c in layout.point_columns])
                        for row in frame.to_dict("records")], index=frame.index, dtype=object)
    for label in dict.fromkeys(labels):  # first-seen order: the order the run measured them
        rows = frame[labels == label]
        out[label] = {m.name: pd.to_numeric(rows[m.column], errors="coerce").dropna().to_numpy(float) * m.scale
                      for m in layout.metrics if m.column in rows.columns}
    return out


# -- between-start noise ---------------------------------------------------------------------------

def _engine_start(phase: pd.Series) -> pd.Series:
    # E0's phases: repeat-<k> on the first start, start<s>-repeat-<k> on the later ones
    return phase.astype(str).str.extract(r"^start(\d+)-", expand=False).fillna("0")


def start_sds(records: pd.DataFrame, layout: Layout) -> tuple[dict[str, float], int]:
    """E0's between-start noise: per metric, the SD (ddof 1) of the log of each engine start's
    median over its repeat requests; the decode-pace metrics (``DECODE_PACE``) each at least
    their pooled SD (root mean square). Returns (metric name -> SD, engine starts); no SDs with
    fewer than two starts."""
    frame = records[layout.keep(records)] if layout.keep is not None else records
    if "ok" in frame.columns:
        frame = frame[_is_ok(frame["ok"])]
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
    none otherwise, which the report states."""
    if not use_e0:
        return StartNoise({}, "not included (E0's between-start variation not used, as asked): the CI covers "
                              "request-to-request variation only")
    measured = {}
    for run in (a, b):
        folder = _e0_folder(run, layout) if isinstance(layout, Layout) else None
        if folder is None:
            continue
        sds, starts = start_sds(_read_records(folder, layout), layout)
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


def compare(a_path: str | Path | Sequence[str | Path], b_path: str | Path | Sequence[str | Path],
            options: Options | None = None, *, layouts: Layouts) -> Comparison:
    """Compare the runs in ``a_path`` and ``b_path`` (see ``find_run``); either side may be
    several runs of the same settings (comma-separated), whose requests are pooled and whose
    medians' spread is the between-run noise. ``layouts`` are the experiments' declared
    comparison layouts (E0's gives the between-start noise). Raise ContextResearchError when they
    may not be compared (``check_comparable``, also between the runs of one side)."""
    opts = options or Options()
    if not 0 < opts.alpha < 1:
        raise ContextResearchError(f"--alpha must lie in (0, 1), got {opts.alpha}")
    if opts.resamples is not None and opts.resamples < 100:
        raise ContextResearchError(f"--resamples must be at least 100, got {opts.resamples}")
    if opts.min_effect < 0:
        raise ContextResearchError(f"--min-effect must be >= 0, got {opts.min_effect}")
    side_a = [find_run(path, f"A{k + 1}" if k else "A") for k, path in enumerate(_side_paths(a_path))]
    side_b = [find_run(path, f"B{k + 1}" if k else "B") for k, path in enumerate(_side_paths(b_path))]
    if not side_a or not side_b:
        raise ContextResearchError(f"{'A' if not side_a else 'B'}: no result folder given")
    a, b = side_a[0], side_b[0]
    in_a = set.intersection(*(set(r.experiments) for r in side_a))
    in_b = set.intersection(*(set(r.experiments) for r in side_b))
    common = sorted(in_a & in_b)
    not_compared = {e: f"only in {'A' if e in in_a else 'B'}" for e in sorted(in_a ^ in_b)}
    for e in list(common):
        if not isinstance(layouts.get(e), Layout):
            not_compared[e] = getattr(layouts.get(e), "reason", "no comparison layout for this experiment")
    comparable = [e for e in common if isinstance(layouts.get(e), Layout)]
    if not comparable:
        raise ContextResearchError(f"{a.root} and {b.root} share no comparable experiment "
                                   f"(A: {', '.join(sorted(in_a))}; B: {', '.join(sorted(in_b))})")
    allowed = check_comparable(a, b, comparable, layouts, opts.allow_different_hardware)
    for first, more in ((a, side_a[1:]), (b, side_b[1:])):
        for run in more:  # the runs of one side must be the same settings on the same hardware
            check_comparable(first, run, comparable, layouts, False)
    noise = start_noise(a, b, opts.use_e0_start_noise, layouts.get("e0"))

    rows: list[dict] = []
    pending: list[tuple[int, list[np.ndarray], list[np.ndarray], Metric, str]] = []
    samples: dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
    per_run: dict[str, dict[str, dict[str, list[list[np.ndarray]]]]] = {}  # exp -> point -> metric -> sides
    for exp in comparable:
        layout = layouts[exp]
        points_a = [points_of(r.experiments[exp], layout) for r in side_a]
        points_b = [points_of(r.experiments[exp], layout) for r in side_b]
        status_a = [_point_status(r.experiments[exp], layout) for r in side_a]
        status_b = [_point_status(r.experiments[exp], layout) for r in side_b]
        samples[exp], per_run[exp] = {}, {}
        labels = list(dict.fromkeys([*(k for ps in points_a + points_b for k in ps),
                                     *(k for st in status_a + status_b for k in (st or {}))]))
        for point in labels:
            reason = next((r for r in (
                *(_not_compared_reason(point, pa, points_b[0], sa, status_b[0]) for pa, sa in zip(points_a, status_a)),
                *(_not_compared_reason(point, points_a[0], pb, status_a[0], sb) for pb, sb in zip(points_b, status_b)))
                if r), None)
            for metric in layout.metrics:
                runs_a = [ps.get(point, {}).get(metric.name, np.empty(0)) for ps in points_a]
                runs_b = [ps.get(point, {}).get(metric.name, np.empty(0)) for ps in points_b]
                xa, xb = np.concatenate(runs_a), np.concatenate(runs_b)
                if reason:
                    rows.append(_row(exp, metric.name, point, f"not compared: {reason}", verdict_text="not compared",
                                     n_a=len(xa), n_b=len(xb)))
                    continue
                if len(xa) == 0 and len(xb) == 0:
                    continue  # a metric neither run measured here (no per-request engine metrics)
                samples[exp].setdefault(point, {})[metric.name] = (xa, xb)
                if layout.single or min(len(xa), len(xb)) < MIN_REQUESTS:
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
                    rows.append(_row(exp, metric.name, point, note, verdict_text="not enough samples",
                                     n_a=len(xa), n_b=len(xb), min_effect=opts.min_effect, test=test))
                    continue
                per_run[exp].setdefault(point, {})[metric.name] = [runs_a, runs_b]
                rows.append(_row(exp, metric.name, point, "", verdict_text="", n_a=len(xa), n_b=len(xb),
                                 min_effect=opts.min_effect))
                pending.append((len(rows) - 1, runs_a, runs_b, metric, exp))

    resamples = opts.resamples or BOOTSTRAP_RESAMPLES
    items = [Pair(runs_a, runs_b, (exp, metric.name), noise.for_metric(metric), noise.df, metric.lower_is_better,
                  metric.noise) for _, runs_a, runs_b, metric, exp in pending]
    judged = judge(items, per_run, alpha=opts.alpha, min_effect=opts.min_effect, seed=opts.seed, resamples=resamples)
    for (i, *_), result in zip(pending, judged):
        test = result["test"]
        rows[i].update(a=test.a, b=test.b, delta=test.delta, relative_delta=test.relative_delta,
                       ci_low=test.ci_low, ci_high=test.ci_high, p_value=test.p_value, p_holm=result["p_holm"],
                       verdict=result["verdict"], mde_pct=result["mde_pct"], start_sd=result["start_sd"],
                       df=result["df"], note=result["note"])
    table = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    return Comparison(side_a, side_b, opts, table, samples, allowed, provenance_diff(a, b, comparable), noise,
                      resamples, len(pending), not_compared)


def _not_compared_reason(point, pa, pb, status_a, status_b) -> str | None:
    for side, points, status in (("A", pa, status_a), ("B", pb, status_b)):
        if status is not None:
            if point not in status:
                return f"point not in {side}'s point table"
            state, why = status[point]
            if state != "ok":
                return f"status {state} in {side}" + (f" ({why})" if why else "")
        elif point not in points:
            return f"no successful request at this point in {side}"
    return None


def significant(table: pd.DataFrame) -> pd.DataFrame:
    """The rows called better or worse: the report's headline."""
    return table[table["verdict"].isin(("better", "worse"))]


def method_lines(comp: Comparison) -> list[str]:
    """The statistical method, stated in every report."""
    o = comp.options
    level = 1.0 - o.alpha
    return [
        f"Statistic: the median of each side's successful requests at a point (a side's runs pooled); delta = B - A, "
        f"relative delta = delta / A. Test of log(B / A) (analysis.compare_stats; docs/statistics.md).",
        f"Noise: each side's request-level variance of its log median by bootstrap ({comp.resamples} resamples, "
        f"numpy generator seeded with {o.seed} for every test), plus the between-run variance s^2 (1/runs A + "
        f"1/runs B), s below; Student-t on Welch-Satterthwaite degrees of freedom (column df).",
        f"CI: {level:.0%}, exp(log(B / A) -/+ t se) - 1, times A. p-value: two-sided Student-t.",
        f"Multiple comparisons: Holm's step-down adjustment over all {comp.tests} tests of this comparison, "
        f"family-wise error rate alpha = {o.alpha}.",
        f"Verdict: better / worse only when the CI excludes zero, the Holm-adjusted p <= {o.alpha} and "
        f"|relative delta| >= {o.min_effect:.1%} (--min-effect); lower is better for latencies. Fewer than "
        f"{MIN_REQUESTS} requests in either run: not enough samples.",
        f"Power: mde_pct is the smallest change each test detects with {POWER:.0%} probability at its noise, n and "
        f"alpha / {max(comp.tests, 1)} (Holm's strictest threshold); 'no significant change' is printed with it. A "
        f"change smaller than it may be real and unseen.",
        f"Between-start noise s: {comp.noise.source}. Its degrees of freedom count engine starts - 1 "
        f"({comp.noise.df:g}); few starts make s uncertain, and the t quantile says so.",
        f"Runs per side: A {len(comp.runs_a)}, B {len(comp.runs_b)}. " + (
            "Each side's requests are pooled; the runs' medians' spread around their side's mean beyond what their "
            "requests explain, pooled over points, is the between-run SD where it exceeds E0's; its degrees of "
            "freedom count runs (runs - 1 per side), not points, since a drift moves every point of a run together "
            "(the note of each row says which applied)."
            if max(len(comp.runs_a), len(comp.runs_b)) > 1 else
            "One run per side: a host that drifts between runs (minutes apart) beyond E0's back-to-back starts "
            "is not covered; compare.runs_per_side >= 2 measures that drift."),
        "Compared: points whose status is ok in both runs, successful requests only; other points are listed "
        "as not compared with the reason.",
    ]
