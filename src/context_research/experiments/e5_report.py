"""E5 figure, table and packet section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.plots import stacked_bar
from ..io import read_json, write_text
from ..report import provenance_line
from ..tables import fmt, html_table, markdown_table
from . import e5  # the declaration (its module never imports this one)

# Stacked components (GiB) in drawing order, with the legend label each gets. A value that was
# calculated rather than measured has its own component and label, so the legend never shows it
# as a measurement (a component that is empty everywhere is left out of the legend).
COMPONENTS = {
    "weights": "weights (vLLM profile)",
    "weights_analytical": "weights, analytical (not in engine log)",
    "peak_activation_gib": "peak activation",
    "non_torch_gib": "non-torch",
    "cuda_graph_gib": "CUDA graphs",
    "kv_used": "KV used, measured (gauge x pool)",
    "kv_used_analytical": "KV used, analytical (gauge missed)",
    "kv_free": "KV allocated, unused",
    "rss_rest": "rest of engine RSS (CPU hosts)",
}

# memory.csv's columns the report shows, headed by their declared labels and units (e5.E5_MEMORY).
TABLE_COLUMNS = ("mode", "prompt_tokens_target", "status", "weights_gib", "weights_analytical_gib",
                 "peak_activation_gib", "non_torch_gib", "cuda_graph_gib", "kv_cache_allocated_gib",
                 "kv_used_analytical_gib", "kv_used_block_rounded_gib", "kv_used_gauge_gib", "kv_check_verdict",
                 "nvml_peak_used_gib", "nvml_total_gib", "process_rss_gib", "reason")


def bar_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the stacked bar: measured KV used when the gauge was sampled, else block-rounded
    analytical in a separate component; weights from vLLM's profile, else analytical (vLLM-CPU
    logs no weight size), also in a separate component."""
    ok = frame[frame["status"] == "ok"].reset_index(drop=True)
    out = pd.DataFrame({"point": [f"{m} {int(n)}" for m, n in zip(ok["mode"], ok["prompt_tokens_target"])]})

    def num(col: str) -> pd.Series:
        return pd.to_numeric(ok[col], errors="coerce") if col in ok else pd.Series([float("nan")] * len(ok))

    weights = num("weights_gib")
    out["weights"] = weights
    out["weights_analytical"] = num("weights_analytical_gib").where(weights.isna())
    for col in ("peak_activation_gib", "non_torch_gib", "cuda_graph_gib"):
        out[col] = num(col)
    gauge = num("kv_used_gauge_gib")
    out["kv_used"] = gauge
    out["kv_used_analytical"] = num("kv_used_block_rounded_gib").fillna(num("kv_used_analytical_gib")).where(
        gauge.isna())
    used = gauge.fillna(out["kv_used_analytical"])
    out["kv_free"] = (num("kv_cache_allocated_gib") - used).clip(lower=0)
    # On a CPU host the engine's memory is host memory: what its process tree holds beyond the
    # listed components (Python, torch, three processes' runtimes). Host RSS is not GPU memory,
    # so GPU hosts leave this out.
    cpu = num("nvml_total_gib").isna() & (ok["kv_cache_device"].astype(str) == "CPU" if "kv_cache_device" in ok
                                          else False)
    listed = out[["weights", "weights_analytical", "peak_activation_gib", "non_torch_gib", "cuda_graph_gib",
                  "kv_used", "kv_used_analytical", "kv_free"]].sum(axis=1, min_count=1)
    out["rss_rest"] = (num("process_rss_gib") - listed).clip(lower=0).where(cpu)
    return out.rename(columns=COMPONENTS)


def make_figures(results_dir: Path) -> None:
    ex = e5.EXPERIMENT
    frame = pd.read_csv(ex.path(results_dir, "memory"))
    meta = read_json(ex.path(results_dir, "metadata"))
    bars = bar_frame(frame)
    stacked_bar(bars, "point", list(COMPONENTS.values()), ex.figure_path(results_dir, "memory"),
                "E5: memory per prompt length (one engine start)", "GiB",
                provenance=provenance_line(meta) + ", vLLM memory profile + /metrics gauge")
    write_text(ex.figure_path(results_dir, "table"), html_table(_table(frame), 4))


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    return e5.E5_MEMORY.shown(frame, TABLE_COLUMNS)


def report_section(results_dir: Path) -> dict[str, Any]:
    frame = pd.read_csv(e5.EXPERIMENT.path(results_dir, "memory"))
    s = read_json(e5.EXPERIMENT.path(results_dir, "summary"))
    parsed, engine = s["parsed_log"], s["engine"]
    ok = frame[frame["status"] == "ok"]
    findings = []
    if parsed.get("weights_gib") is not None:
        findings.append(
            f"vLLM's memory profile: weights {fmt(parsed['weights_gib'], 2)} GiB, peak activation "
            f"{fmt(parsed.get('peak_activation_gib'), 2)} GiB, non-torch {fmt(parsed.get('non_torch_gib'), 2)} GiB, "
            f"CUDA graphs {fmt(parsed.get('cuda_graph_gib'), 2)} GiB; KV cache {fmt(parsed.get('kv_cache_gib'), 2)} "
            f"GiB ({parsed.get('kv_cache_tokens')} tokens).")
    else:
        findings.append(
            f"The {parsed.get('kv_cache_device') or 'engine'} log has no weight/activation profile (vLLM-CPU logs only "
            f"its KV reservation): KV cache {fmt(parsed.get('kv_cache_gib'), 2)} GiB "
            f"({parsed.get('kv_cache_source')}), {parsed.get('kv_cache_tokens')} tokens; weights shown are analytical "
            f"at the engine's dtype {engine.get('model_dtype')}.")
    for _, r in ok.iterrows():
        verdict = r.get("kv_check_verdict")
        held = int(r["kv_tokens_held"]) if pd.notna(r.get("kv_tokens_held")) else "n/a"
        findings.append(
            f"{r['mode']} {int(r['prompt_tokens_target'])} tokens: KV held "
            f"{fmt(r.get('kv_used_block_rounded_gib'), 5)} GiB block-rounded ({held} tokens) vs "
            f"{fmt(r.get('kv_used_gauge_gib'), 5)} GiB from the gauge x pool -> {str(verdict).upper()} "
            f"({r.get('kv_check_note')}).")
    failed = frame[frame["status"] != "ok"]
    for _, r in failed.iterrows():
        findings.append(f"{r['mode']} {int(r['prompt_tokens_target'])} tokens: {r['status']}: {r.get('reason')}")
    facts = [
        ("KV bytes/token (analytical, engine dtype)", fmt(ok["kv_bytes_per_token_analytical"].iloc[0], 0)
         if len(ok) else "n/a"),
        ("KV bytes/token (engine log: pool bytes / pool tokens)", fmt(ok["kv_bytes_per_token_engine"].iloc[0], 1)
         if len(ok) else "n/a"),
        ("KV dtype / block size / blocks", f"{engine.get('kv_effective_dtype')} / {engine.get('block_size')} / "
                                           f"{engine.get('num_blocks')}"),
        ("KV check verdicts", ", ".join(f"{k}: {v}" for k, v in sorted(s["kv_check_verdicts"].items())) or "n/a"),
        ("engine RSS peak (GiB, process tree)", fmt(frame["process_rss_gib"].max(), 3)
         if "process_rss_gib" in frame else "n/a"),
        ("NVML peak used (GiB)", fmt(frame["nvml_peak_used_gib"].max(), 2) if "nvml_peak_used_gib" in frame else "n/a"),
    ]
    table = _table(frame)
    markdown = markdown_table(table, 4)
    return {
        "findings": findings,
        "facts": facts,
        "tables": [{"caption": "Memory per point (GiB)", "html": html_table(table, 4),
                    "markdown": markdown}],
    }


def headline(results_dir: Path) -> dict[str, Any]:
    """The packet summary's key figures: the engine's memory split and the KV checks."""
    s = read_json(e5.EXPERIMENT.path(results_dir, "summary"))
    parsed = s["parsed_log"]
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s["kv_check_verdicts"].items())) or "none"
    return {"figures": [("weights / KV pool (GiB, engine log)",
                         f"{fmt(parsed.get('weights_gib'))} / {fmt(parsed.get('kv_cache_gib'))}"),
                        ("KV gauge vs analytical", verdicts)]}
