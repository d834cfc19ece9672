"""E0 figures, tables and packet section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..io import read_json, write_text
from ..analysis.plots import line_plot
from ..analysis.stats import format_with_ci, ms
from ..report import provenance_line
from . import e0  # the declaration (its module never imports this one)
from ..tables import fmt as _fmt, html_table, markdown_table

def repeats_frame(summary: dict) -> pd.DataFrame:
    return pd.DataFrame(summary["variability"]["per_repeat"])


def make_figures(results_dir: Path) -> None:
    summary = read_json(e0.EXPERIMENT.path(results_dir, "summary"))
    meta = read_json(e0.EXPERIMENT.path(results_dir, "metadata"))
    frame = repeats_frame(summary)
    line_plot(frame, "repeat", ["ttft_ms_mean", "tpot_ms_mean"], e0.EXPERIMENT.figure_path(results_dir, "variability"),
              "E0: mean TTFT and TPOT per repeated run", "repeat", "ms",
              provenance=provenance_line(meta) + ", client-side")
    write_text(e0.EXPERIMENT.figure_path(results_dir, "repeats"), html_table(table_frame(summary), 3))


def table_frame(summary: dict) -> pd.DataFrame:
    return e0.E0_REPEATS.shown(repeats_frame(summary))


def report_section(results_dir: Path) -> dict[str, Any]:
    s = read_json(e0.EXPERIMENT.path(results_dir, "summary"))
    det, var, strict = s["determinism"], s["variability"], s["strict_backend"]
    lat, eng = s["latency_client"], s["latency_engine"]
    thr = var["cv_threshold"]
    findings = [
        f"Determinism: {det['ok']}/{det['requests']} identical greedy requests answered; "
        f"{det['distinct_outputs']} distinct output(s) by {det['compared']} -> "
        f"{'PASS' if det['all_identical'] else 'FAIL'}.",
        f"Run-to-run CV of mean TTFT {_pct(var['cv_ttft'])} and of mean TPOT {_pct(var['cv_tpot'])} over "
        f"{var['repeats']} repeats (criterion <= {thr:.0%}): TTFT "
        f"{'within' if var['ttft_within_threshold'] else 'OUTSIDE'}, TPOT "
        f"{'within' if var['tpot_within_threshold'] else 'OUTSIDE'} the criterion.",
        f"Strict backend: mode {strict['backend_mode']}, server reported vLLM {strict['server_reported_version']}, "
        f"engine {strict['engine_distribution']} on {strict['engine_device']}.",
    ]
    across = var.get("across_restarts") or {}
    if "cv_ttft" in across:
        findings.insert(2, (
            f"Across {across['engine_starts']} engine starts serving the same {across['requests_per_start']} requests: "
            f"CV of mean TTFT {_pct(across['cv_ttft'])}, of mean TPOT {_pct(across['cv_tpot'])} (criterion <= "
            f"{thr:.0%}): TTFT {'within' if across['ttft_within_threshold'] else 'OUTSIDE'}, TPOT "
            f"{'within' if across['tpot_within_threshold'] else 'OUTSIDE'} the criterion."))
    elif across:
        findings.insert(2, "One engine start only (experiments.e0.engine_starts = 1): variation across restarts "
                           "was not measured.")
    findings.insert(0, "Verdict: PASS." if s["passed"] else
                    "Verdict: FAIL: " + "; ".join(s.get("failed_because") or ["see below"]) + ".")
    facts = [
        ("prompt / output tokens", f"{s['workload']['prompt_tokens']} / {s['workload']['max_tokens']}"),
        ("TTFT p50 / p95 (ms, client; [95% CI] where valid)",
         f"{format_with_ci(lat, 'ttft_ms_p50')} / {format_with_ci(lat, 'ttft_ms_p95')}"),
        ("TPOT p50 / p95 (ms, client; [95% CI] where valid)",
         f"{format_with_ci(lat, 'tpot_ms_p50', 3)} / {format_with_ci(lat, 'tpot_ms_p95', 3)}"),
        ("TTFT mean (ms, engine histogram)", _fmt(ms(eng.get("engine_ttft_mean_s")))),
        ("failed requests", s["failed_requests"]),
        *([("streams read whole (no client TPOT)", f"{whole['read_whole']} of {whole['requests']}")]
          if (whole := s.get("streams_read_whole")) else []),
        ("prompt-length mismatches", len(s["prompt_tokens_mismatch"])),
    ]
    table = table_frame(s)
    starts = e0.E0_STARTS.shown(pd.DataFrame(across.get("per_start") or []))
    return {
        "findings": findings,
        "facts": facts,
        "tables": [{"caption": "Repeated runs within the first engine start (client-side means)",
                    "html": html_table(table, 3), "markdown": markdown_table(table, 3)}]
        + ([{"caption": "Engine starts serving the same requests (client-side means)",
             "html": html_table(starts, 3), "markdown": markdown_table(starts, 3)}] if len(starts) else []),
    }


def _pct(x):
    return "n/a" if x is None else f"{x:.1%}"


def headline(results_dir: Path) -> dict[str, Any]:
    """The packet summary's key figures and verdict."""
    s = read_json(e0.EXPERIMENT.path(results_dir, "summary"))
    var = s["variability"]
    across = var.get("across_restarts") or {}
    figures = [("TTFT / TPOT CV within a start", f"{_pct(var['cv_ttft'])} / {_pct(var['cv_tpot'])}")]
    if "cv_ttft" in across:
        figures.append((f"CV across {across['engine_starts']} starts", f"{_pct(across['cv_ttft'])} / {_pct(across['cv_tpot'])}"))
    figures.append(("identical outputs", "yes" if s["determinism"]["all_identical"] else "NO"))
    return {"figures": figures, "passed": s["passed"]}
