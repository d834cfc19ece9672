"""The comparison report of ``context-research compare A B`` (``compare.csv``, ``compare.md``,
``compare.html``, one SVG per experiment, ``compare.json``) and the index of several comparisons
(``context-research compare-index``). The numbers come from ``analysis.compare``; this module
only draws and renders them (named ``*_report.py``: a change here redraws without a new run).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .analysis.compare import (COMPARE_COLUMNS, MIN_REQUESTS, Comparison, Layouts, Options, compare,  # noqa: E402
                               significant)
from .analysis.compare_stats import POWER  # noqa: E402
from .analysis.plots import SVG_RC, check_provenance  # noqa: E402
from .errors import ContextResearchError  # noqa: E402
from .io import read_json, write_csv, write_figure, write_json, write_text  # noqa: E402
from .report import _env, provenance_line  # noqa: E402
from .tables import html_table, markdown_table  # noqa: E402

VERDICT_COLOURS = {"better": "#2a9d3a", "worse": "#c0392b", "no significant change": "#8c8c8c",
                   "not enough samples": "#d0d0d0"}
HEADLINE_COLUMNS = {"experiment": "experiment", "metric": "metric", "point": "point", "a": "A", "b": "B",
                    "delta": "B - A", "relative_delta": "relative", "ci": "CI of B - A", "p_holm": "p (Holm)",
                    "verdict": "verdict"}


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _cell(x: Any, nd: int = 3) -> str:
    v = _num(x)
    return "n/a" if v is None else f"{v:.{nd}g}" if abs(v) < 1e-3 and v else f"{v:.{nd}f}"


def _pct(x: Any) -> str:
    v = _num(x)
    return "n/a" if v is None else f"{v:+.1%}"


def display_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The compared rows as the report prints them: CI in one cell, relative delta in percent."""
    out = pd.DataFrame({
        "experiment": rows["experiment"], "metric": rows["metric"], "point": rows["point"],
        "a": [_cell(v) for v in rows["a"]], "b": [_cell(v) for v in rows["b"]],
        "delta": [_cell(v) for v in rows["delta"]], "relative_delta": [_pct(v) for v in rows["relative_delta"]],
        "ci": [f"[{_cell(lo)}, {_cell(hi)}]" if _num(lo) is not None else "n/a"
               for lo, hi in zip(rows["ci_low"], rows["ci_high"])],
        "p_holm": [_cell(v, 4) for v in rows["p_holm"]],
        "verdict": [verdict_text(v, m) for v, m in zip(rows["verdict"], rows["mde_pct"])]})
    return out.rename(columns=HEADLINE_COLUMNS)


def verdict_text(verdict: str, mde_pct: Any) -> str:
    """``"no significant change (could detect ±12.3%)"``: a verdict with the smallest change its
    test detects with 80 % power (``mde_pct``), where it has one."""
    mde = _num(mde_pct)
    if verdict != "no significant change" or mde is None:
        return verdict
    return f"no significant change (could detect ±{mde:.3g}%)"


def mde_summary(table: pd.DataFrame) -> str | None:
    """``"±8.1% to ±240% (median ±19.5%)"``: the range of mde_pct over the rows called no
    significant change, or None where there is none."""
    rows = table[table["verdict"] == "no significant change"]
    values = pd.to_numeric(rows["mde_pct"], errors="coerce").dropna()
    if values.empty:
        return None
    return f"±{values.min():.3g}% to ±{values.max():.3g}% (median ±{values.median():.3g}%)"


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    counts = table["verdict"].value_counts()
    return {v: int(counts.get(v, 0)) for v in ("better", "worse", "no significant change", "not enough samples",
                                               "not compared")}


def _provenance(comp: Comparison, exp: str) -> str:
    return check_provenance(f"A: {provenance_line(comp.a.metadata[exp])} | B: {provenance_line(comp.b.metadata[exp])}")


def _point_values(point: str) -> str:
    """``"mode=rate, level=2"`` -> ``"rate, 2"`` (the axis label names the coordinates)."""
    return ", ".join(part.partition("=")[2] for part in point.split(", ")) if "=" in point else point


def _point_names(point: str) -> str:
    return ", ".join(part.partition("=")[0] for part in point.split(", ")) if "=" in point else "point"


def experiment_figure(comp: Comparison, experiment: str, path: Path) -> Path | None:
    """Both runs' medians per point (one panel per metric), and below them the relative delta
    B/A - 1 per point with its CI as error bars, coloured by verdict, the minimum effect dashed."""
    rows = comp.table[(comp.table["experiment"] == experiment) & (comp.table["verdict"] != "not compared")
                      & comp.table["a"].notna() & comp.table["b"].notna()]
    metrics = list(dict.fromkeys(rows["metric"]))
    if not metrics:
        return None
    with matplotlib.rc_context(SVG_RC):
        fig, axes = plt.subplots(2, len(metrics), figsize=(max(6.0, 3.6 * len(metrics)), 7), squeeze=False)
        try:
            for j, metric in enumerate(metrics):
                sub = rows[rows["metric"] == metric]
                x = np.arange(len(sub))
                top, bottom = axes[0][j], axes[1][j]
                top.plot(x, pd.to_numeric(sub["a"]), marker="o", label="A")
                top.plot(x, pd.to_numeric(sub["b"]), marker="s", label="B")
                top.set_title(f"{metric}: median per point", fontsize=9)
                top.grid(True, alpha=0.3)
                top.legend(fontsize=7)
                a = pd.to_numeric(sub["a"]).to_numpy(float)
                rel = pd.to_numeric(sub["relative_delta"]).to_numpy(float) * 100
                with np.errstate(divide="ignore", invalid="ignore"):
                    low = pd.to_numeric(sub["ci_low"]).to_numpy(float) / a * 100
                    high = pd.to_numeric(sub["ci_high"]).to_numpy(float) / a * 100
                err = np.vstack([np.where(np.isnan(low), 0, rel - low), np.where(np.isnan(high), 0, high - rel)])
                bottom.bar(x, np.nan_to_num(rel), yerr=np.abs(err), capsize=3,
                           color=[VERDICT_COLOURS.get(v, "#8c8c8c") for v in sub["verdict"]])
                floors = pd.to_numeric(sub["min_effect"]).dropna()
                if not floors.empty:
                    for sign in (1, -1):
                        bottom.axhline(sign * floors.max() * 100, color="black", linestyle="--", linewidth=0.7)
                bottom.axhline(0, color="black", linewidth=0.5)
                bottom.set_title(f"{metric}: B/A - 1 (%), CI bars", fontsize=9)
                labels = [_point_values(p) for p in sub["point"]]
                for ax in (top, bottom):
                    ax.set_xticks(x)
                    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
                bottom.set_xlabel(_point_names(sub["point"].iloc[0]), fontsize=8)
            fig.suptitle(f"{experiment}: A vs B per point (dashed: min effect; green better, red worse, "
                         f"grey no significant change)", fontsize=10)
            fig.text(0.5, 0.005, _provenance(comp, experiment), ha="center", fontsize=7, style="italic")
            fig.tight_layout(rect=(0, 0.03, 1, 0.96))
            return write_figure(path, fig)
        finally:
            plt.close(fig)


def _not_compared(table: pd.DataFrame, experiment: str) -> list[str]:
    rows = table[(table["experiment"] == experiment) & (table["verdict"] == "not compared")]
    return [f"{point}: {note.removeprefix('not compared: ')}"
            for point, note in dict(zip(rows["point"], rows["note"])).items()]


def _run_facts(comp: Comparison) -> list[dict[str, str]]:
    facts = []
    for side, runs in (("A", comp.runs_a), ("B", comp.runs_b)):
        metas = [m for run in runs for m in run.metadata.values()]
        facts.append({"side": side, "path": ", ".join(str(run.root) for run in runs),
                      "runs": ", ".join(f"{e}: {m.get('run_id')}" for run in runs for e, m in run.metadata.items()),
                      "backend_mode": "/".join(sorted({str(m.get('backend_mode')) for m in metas})),
                      "hardware": "; ".join(sorted({str(m.get('hardware_label')) for m in metas})),
                      "model": "; ".join(sorted({f"{m.get('model_id')} ({m.get('weights')} weights)" for m in metas})),
                      "commit": ", ".join(sorted({str((m.get('git') or {}).get('commit')) for m in metas}))})
    return facts



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
        "Compared: points whose status is ok in both runs, successful requests only; the engine's own metrics "
        "(engine_*) also where every finding of a run is the client's (client delivery, a client TPOT below the "
        "engine's ITL; the client-side metrics are not compared there); other points are listed as not compared with the reason.",
    ]

def report_context(comp: Comparison, figures: dict[str, Path]) -> dict[str, Any]:
    table = comp.table
    compared = table[table["verdict"] != "not compared"]
    sections = []
    for exp in comp.samples:
        rows = compared[compared["experiment"] == exp]
        svg = None
        if exp in figures:
            text = figures[exp].read_text(encoding="utf-8")
            svg = text[text.find("<svg"):]  # inline: drop the XML prolog
        shown = display_frame(rows) if not rows.empty else None
        sections.append({
            "id": exp, "counts": verdict_counts(table[table["experiment"] == exp]),
            "figure": figures[exp].name if exp in figures else None, "svg": svg,
            "table_html": html_table(shown) if shown is not None else "",
            "table_md": markdown_table(shown) if shown is not None else "",
            "not_compared": _not_compared(table, exp),
            "provenance": comp.provenance.get(exp, {"source": "", "lines": []}),
        })
    head = significant(table)
    shown = display_frame(head) if not head.empty else None
    return {
        "runs": _run_facts(comp), "allowed": comp.allowed_differences, "method": method_lines(comp),
        "counts": verdict_counts(table), "sections": sections,
        "headline_html": html_table(shown) if shown is not None else "",
        "headline_md": markdown_table(shown) if shown is not None else "",
        "not_compared_experiments": comp.not_compared_experiments,
        "columns": COMPARE_COLUMNS, "escape": html.escape,
        "min_effect": comp.options.min_effect, "alpha": comp.options.alpha, "mde_summary": mde_summary(table),
    }


def write_comparison(comp: Comparison, out: str | Path) -> Path:
    """compare.csv, one ``<experiment>.svg`` each, compare.md, compare.html and compare.json
    (what ``write_index`` reads) into ``out``; returns the HTML's path."""
    out = Path(out)
    write_csv(out / "compare.csv", comp.table)
    figures = {}
    for exp in comp.samples:
        path = experiment_figure(comp, exp, out / f"{exp}.svg")
        if path is not None:
            figures[exp] = path
    # A figure of an earlier comparison into the same folder would be linked by nothing and
    # mistaken for this one's.
    for stale in out.glob("e*.svg"):
        if stale.stem[1:].isdigit() and stale.stem not in figures:
            stale.unlink()
    context = report_context(comp, figures)
    env = _env()
    write_text(out / "compare.md", env.get_template("compare.md.j2").render(**context))
    html_path = write_text(out / "compare.html", env.get_template("compare.html.j2").render(**context))
    write_json(out / "compare.json", {"a": str(comp.a.root), "b": str(comp.b.root),
                                      "runs_a": [str(r.root) for r in comp.runs_a],
                                      "runs_b": [str(r.root) for r in comp.runs_b], "counts": context["counts"],
                                      "options": vars(comp.options), "resamples": comp.resamples,
                                      "tests": comp.tests, "start_noise": comp.noise.source,
                                      "allowed_differences": comp.allowed_differences})
    return html_path


def compare_runs(a: str | Path, b: str | Path, out: str | Path, layouts: Layouts, **options: Any) -> Path:
    """``context-research compare A B --out OUT`` as a function: compare, write the report, return
    the path of ``compare.html``. ``layouts``: the experiments' comparison layouts (the CLI passes
    the catalog's). ``options`` are ``analysis.compare.Options`` fields (min_effect, alpha, seed,
    resamples, allow_different_hardware, use_e0_start_noise)."""
    return write_comparison(compare(a, b, Options(**options), layouts=layouts), out)


def write_index(out_dir: str | Path, index: str | Path | None = None) -> Path:
    """``reports/compare.html``: one line per comparison under ``out_dir`` (each subfolder with a
    ``compare.json``: ``reports/compare/<variant>/``), with its verdict counts and a link to its
    report. ``index`` defaults to ``out_dir`` + ``.html`` (``reports/compare`` -> ``reports/compare.html``)."""
    out_dir = Path(out_dir)
    index = Path(index) if index is not None else out_dir.with_suffix(".html")
    entries = []
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir()) if out_dir.is_dir() else []:
        if not (folder / "compare.json").is_file():
            continue
        facts = read_json(folder / "compare.json")
        entries.append({"name": folder.name, "href": Path(_relative(folder / "compare.html", index.parent)).as_posix(),
                        "a": facts.get("a"), "b": facts.get("b"), "counts": facts.get("counts", {})})
    if not entries:
        raise ContextResearchError(f"{out_dir}: no comparison there (no <name>/compare.json; run context-research "
                                   f"compare A B --out {out_dir}/<name> first)")
    return write_text(index, _env().get_template("compare_index.html.j2").render(entries=entries, escape=html.escape))


def _relative(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())

