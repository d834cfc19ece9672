"""E0 figures, tables and packet section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..io import read_json, write_text
from ..analysis.plots import line_plot
from ..analysis.stats import ms
from ..report import provenance_line
from . import e0  # the declaration (bottom-imported by e0; resolved at call time)
from ..tables import fmt as _fmt, html_table, markdown_table

REPEAT_COLUMNS = {"repeat": "repeat", "duration_s": "duration (s)", "ok": "ok requests",
                  "ttft_ms_mean": "TTFT mean (ms)", "tpot_ms_mean": "TPOT mean (ms)"}


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
    return repeats_frame(summary).rename(columns=REPEAT_COLUMNS)


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
    facts = [
        ("prompt / output tokens", f"{s['workload']['prompt_tokens']} / {s['workload']['max_tokens']}"),
        ("TTFT p50 / p95 (ms, client)", f"{_fmt(lat['ttft_ms_p50'])} / {_fmt(lat['ttft_ms_p95'])}"),
        ("TPOT p50 / p95 (ms, client)", f"{_fmt(lat['tpot_ms_p50'])} / {_fmt(lat['tpot_ms_p95'])}"),
        ("TTFT mean (ms, engine histogram)", _fmt(ms(eng.get("engine_ttft_mean_s")))),
        ("failed requests", s["failed_requests"]),
        ("prompt-length mismatches", len(s["prompt_tokens_mismatch"])),
    ]
    table = table_frame(s)
    return {
        "findings": findings,
        "facts": facts,
        "tables": [{"caption": "Repeated runs (client-side means)", "html": html_table(table, 3),
                    "markdown": markdown_table(table, 3)}],
    }


def _pct(x):
    return "n/a" if x is None else f"{x:.1%}"

