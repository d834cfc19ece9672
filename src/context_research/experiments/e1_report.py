"""E1 figures, table and packet section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.stats import format_with_ci
from ..analysis.plots import line_plot
from ..io import read_json, write_text
from ..report import provenance_line
from . import e1  # the declaration (its module never imports this one)
from ..tables import fmt as _fmt, html_table, markdown_table

GLOSSARY = "docs/columns.md"

# latency.csv's columns the report shows, headed by their declared labels and units (e1.E1_LATENCY).
TABLE_COLUMNS = ("prompt_tokens", "status", "n_ok", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "engine_ttft_ms_mean",
                 "ttft_client_minus_engine_ms", "tpot_ms_p50", "tpot_ms_p95", "tpot_ms_p99", "e2e_ms_p50",
                 "ttft_floor_ms", "ttft_efficiency", "tpot_floor_ms", "tpot_efficiency", "reason")


def load(results_dir: Path) -> pd.DataFrame:
    return pd.read_csv(e1.EXPERIMENT.path(results_dir, "latency"), keep_default_na=True)


def table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["n_ok"] = [f"{a}/{b}" for a, b in zip(out["n_ok"], out["n"])]
    out["reason"] = out["reason"].fillna("")
    cols = [c for c in TABLE_COLUMNS if c in out.columns]
    if out[["ttft_floor_ms", "tpot_floor_ms"]].isna().all().all():
        cols = [c for c in cols if "floor" not in c and "efficiency" not in c]
    return e1.E1_LATENCY.shown(out, cols)


def make_figures(results_dir: Path) -> None:
    frame = load(results_dir)
    meta = read_json(e1.EXPERIMENT.path(results_dir, "metadata"))
    prov = provenance_line(meta)
    ok = frame[frame["status"] == "ok"]
    ttft = pd.DataFrame({
        "prompt tokens": ok["prompt_tokens"],
        "client TTFT p50": ok["ttft_ms_p50"], "client TTFT p95": ok["ttft_ms_p95"],
        "client TTFT p99": ok["ttft_ms_p99"], "engine TTFT mean (histogram)": ok["engine_ttft_ms_mean"],
        "physical floor (datasheet)": ok["ttft_floor_ms"]})
    line_plot(ttft, "prompt tokens", [c for c in ttft.columns if c != "prompt tokens"], e1.EXPERIMENT.figure_path(results_dir, "ttft"),
              "E1: time to first token vs prompt length (batch 1)", "prompt tokens", "TTFT (ms)",
              provenance=prov + "; client-side percentiles, engine-side mean", logx=True)
    tpot = pd.DataFrame({
        "prompt tokens": ok["prompt_tokens"],
        "client TPOT p50": ok["tpot_ms_p50"], "client TPOT p95": ok["tpot_ms_p95"],
        "client TPOT p99": ok["tpot_ms_p99"], "engine inter-token latency mean": ok["engine_itl_ms_mean"],
        "physical floor (datasheet)": ok["tpot_floor_ms"]})
    line_plot(tpot, "prompt tokens", [c for c in tpot.columns if c != "prompt tokens"], e1.EXPERIMENT.figure_path(results_dir, "tpot"),
              "E1: time per output token vs prompt length (batch 1)", "prompt tokens", "TPOT (ms)",
              provenance=prov + "; client-side percentiles, engine-side mean", logx=True)
    write_text(e1.EXPERIMENT.figure_path(results_dir, "table"), html_table(table_frame(frame), 3))


def report_section(results_dir: Path) -> dict[str, Any]:
    s = read_json(e1.EXPERIMENT.path(results_dir, "summary"))
    frame = load(results_dir)
    ok = frame[frame["status"] == "ok"]
    w = s["workload"]
    findings = []
    if len(ok):
        lo, hi = ok.iloc[0], ok.iloc[-1]
        findings.append(
            f"TTFT p50 grows from {_fmt(lo['ttft_ms_p50'])} ms at {int(lo['prompt_tokens'])} prompt tokens to "
            f"{_fmt(hi['ttft_ms_p50'])} ms at {int(hi['prompt_tokens'])}: {_fmt(hi['ttft_ms_p50'] / lo['ttft_ms_p50'], 1)}x "
            f"for {_fmt(hi['prompt_tokens'] / lo['prompt_tokens'], 1)}x the tokens. TPOT p50 goes from "
            f"{_fmt(lo['tpot_ms_p50'])} to {_fmt(hi['tpot_ms_p50'])} ms. TPOT is the client's time per token once "
            f"the stream runs at the engine's pace (tpot_s in the glossary, {GLOSSARY}).")
    gap = s.get("ttft_client_minus_engine_ms_mean")
    if gap is not None:
        findings.append(
            f"Client-side TTFT {'exceeds' if gap >= 0 else 'is below'} engine-side TTFT by {_fmt(abs(gap))} ms on "
            f"average (range {_fmt(s['ttft_client_minus_engine_ms_min'])} to "
            f"{_fmt(s['ttft_client_minus_engine_ms_max'])} ms across lengths). The client's clock runs from send to "
            f"the first streamed token. The engine's clock (vLLM's vllm:time_to_first_token_seconds histogram) "
            f"starts when the API server hands the request to the engine. The gap is the HTTP, request-parsing and "
            f"streaming path outside the engine's clock. In the figures, 'client' lines are client-side percentiles "
            f"and 'engine' lines are engine-side means (exact: histogram sum / count). The engine TTFT percentiles "
            f"in latency.csv come from each request's own engine TTFT, never from histogram buckets "
            f"(engine_ttft_ms in the glossary, {GLOSSARY}).")
    else:
        findings.append("Engine-side TTFT was not available (no /metrics histogram), so no client/engine gap.")
    hits = s.get("local_cache_hit_tokens")
    findings.append(
        f"Checks: {s['prompt_tokens_mismatches']} prompt-length mismatch(es) between target and server-counted "
        f"tokens; prefix caching {'on' if s['prefix_caching'] else 'off'} and "
        f"{'no prompt_tokens_by_source counter' if hits is None else f'{hits:g} local prefix-cache-hit tokens'} "
        f"(every prompt has its own prefix).")
    if s["failed_points"]:
        findings.append("Failed points: " + "; ".join(f"{p['prompt_tokens']} tokens: {p['reason']}"
                                                      for p in s["failed_points"]) + ".")
    findings.append(f"Physical floors: {s.get('floor_note') or 'n/a'}.")
    facts = [
        ("prompt lengths (tokens)", ", ".join(map(str, w["prompt_tokens"]))),
        ("output tokens / trials per length / warmup per length",
         f"{w['max_tokens']} / {w['trials']} / {w['warmup_requests']}"),
        ("concurrency", "1 (requests sent one at a time)"),
        ("points ok / configured", f"{s['points_ok']} / {s['points']}"),
        ("max_model_len", w["max_model_len"]),
        ("prompts", w["prompt_kind"]),
    ]
    return {
        "findings": findings,
        "facts": facts,
        "tables": [{"caption": "Latency per prompt length (ms; client-side unless marked engine)",
                    "html": html_table(table_frame(frame), 3), "markdown": markdown_table(table_frame(frame), 3)}],
    }


def headline(results_dir: Path) -> dict[str, Any]:
    """The packet summary's key figures: TTFT and TPOT p50 at the shortest and longest ok length."""
    ok = load(results_dir)
    ok = ok[ok["status"] == "ok"]
    figures = []
    for _, row in (ok.iloc[[0, -1]] if len(ok) > 1 else ok).iterrows():
        n = int(row["prompt_tokens"])
        figures.append((f"TTFT p50 at {n} tokens (ms)", format_with_ci(row, "ttft_ms_p50", 1)))
        figures.append((f"TPOT p50 at {n} tokens (ms)", format_with_ci(row, "tpot_ms_p50", 2)))
    return {"figures": figures}
