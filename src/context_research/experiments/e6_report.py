"""E6 figure, table and packet section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.plots import SVG_RC  # noqa: E402
from ..io import read_json, write_figure, write_text  # noqa: E402
from ..report import provenance_line  # noqa: E402
from ..tables import fmt, html_table, markdown_table  # noqa: E402
from . import e6  # the declaration (its module never imports this one)


# stress.csv's columns the report shows, headed by their declared labels and units (e6.E6_STRESS).
TABLE_COLUMNS = ("target_prompt_tokens", "pass", "kv_cache_dtype", "status", "failure_kind", "prompt_tokens", "ttft_s",
                 "engine_ttft_s", "tpot_s", "engine_itl_s", "kv_usage_peak", "kv_used_analytical_gib",
                 "process_rss_peak_gib", "nvml_peak_used_gib", "reason")


def _num(frame: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(frame[col], errors="coerce") if col in frame else pd.Series([float("nan")] * len(frame))


def make_figures(results_dir: Path) -> None:
    ex = e6.EXPERIMENT
    frame = pd.read_csv(ex.path(results_dir, "stress"))
    summary = read_json(ex.path(results_dir, "summary"))
    meta = read_json(ex.path(results_dir, "metadata"))
    rope = summary["rope"]
    ok = frame[frame["status"] == "ok"].sort_values("target_prompt_tokens")
    bad = frame[frame["status"] != "ok"]
    with matplotlib.rc_context(SVG_RC):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        try:
            series = ((left, "ttft_s", "TTFT client", 1.0), (left, "engine_ttft_s", "TTFT engine", 1.0),
                      (right, "tpot_s", "TPOT client", 1000.0), (right, "engine_itl_s", "ITL engine", 1000.0))
            for ax, col, label, scale in series:
                values = _num(ok, col) * scale
                keep = values.notna()
                if keep.any():
                    ax.plot(ok["target_prompt_tokens"][keep], values[keep], marker="o", label=label)
            for ax, ylabel in ((left, "TTFT (s)"), (right, "TPOT / ITL (ms)")):
                ax.axvline(summary["native_context"], color="gray", linestyle="--", linewidth=1,
                           label=f"native {summary['native_context']}")
                ax.axvline(summary["max_model_len"], color="black", linestyle=":", linewidth=1,
                           label=f"max_model_len {summary['max_model_len']}")
                for _, r in bad.iterrows():
                    ax.plot([r["target_prompt_tokens"]], [0], marker="x", color="red", markersize=10,
                            clip_on=False)
                    ax.annotate(f"{r['pass']}: {r['failure_kind']}", (r["target_prompt_tokens"], 0),
                                textcoords="offset points", xytext=(0, 8), fontsize=7, color="red",
                                ha="center", rotation=90, va="bottom")
                ax.set_xlabel("prompt tokens")
                ax.set_ylabel(ylabel)
                ax.set_ylim(bottom=0)
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=7)
            fig.suptitle(f"E6: {rope['rope_type']} x{rope['factor']:g} "
                         f"({rope['original_max_position_embeddings']} -> {rope['max_position_embeddings']})")
            left.set_title(provenance_line(meta) + ", client and engine side", fontsize=8, style="italic", loc="left")
            write_figure(ex.figure_path(results_dir, "stress"), fig)
        finally:
            plt.close(fig)
    write_text(ex.figure_path(results_dir, "table"), html_table(_table(frame), 4))


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    return e6.E6_STRESS.shown(frame, TABLE_COLUMNS)


def _ms(seconds: Any) -> float | None:
    try:
        return None if seconds is None or pd.isna(seconds) else float(seconds) * 1000
    except (TypeError, ValueError):
        return None


def _mib(gib: Any) -> float | None:
    try:
        return None if gib is None or pd.isna(gib) else float(gib) * 1024
    except (TypeError, ValueError):
        return None


def report_section(results_dir: Path) -> dict[str, Any]:
    frame = pd.read_csv(e6.EXPERIMENT.path(results_dir, "stress"))
    s = read_json(e6.EXPERIMENT.path(results_dir, "summary"))
    rope = s["rope"]
    findings = [
        f"Served a derived model folder with {rope['rope_type']} RoPE scaling, factor {rope['factor']:g}: original "
        f"{rope['original_max_position_embeddings']} x {rope['factor']:g} = max_position_embeddings "
        f"{rope['max_position_embeddings']}; engine max_model_len {s['max_model_len']} (the profile serves "
        f"{s['profile_max_model_len']}). Keys written: {', '.join(rope['rope_keys_written'])} with both rope_type and "
        f"type; requested via {', '.join(rope['requested_type_keys']) or 'default'}.",
        "Decode speed: the client's TPOT, its time per token once the stream runs at the engine's pace (tpot_s "
        "in the glossary, docs/columns.md). The engine's ITL is its own mean inter-token latency of the one "
        "request (vLLM histogram sum / count over the point).",
    ]
    for _, r in frame.iterrows():
        label = f"{int(r['target_prompt_tokens'])} tokens ({r['pass']})"
        if r["status"] == "ok":
            tpot_ms = r["tpot_s"] * 1000 if pd.notna(r.get("tpot_s")) else None
            nvml = f", NVML peak {fmt(r['nvml_peak_used_gib'], 2)} GiB" if pd.notna(r.get("nvml_peak_used_gib")) else ""
            findings.append(
                f"{label}: served {int(r['prompt_tokens'])} prompt tokens ({r['extension_vs_native']:.2f}x native): "
                f"TTFT {fmt(r.get('ttft_s'), 3)} s client / {fmt(r.get('engine_ttft_s'), 3)} s engine, TPOT "
                f"{fmt(tpot_ms, 2)} ms client / ITL {fmt(_ms(r.get('engine_itl_s')), 2)} ms engine; KV held "
                f"{fmt(_mib(r.get('kv_used_analytical_gib')), 2)} MiB (analytical; sampled gauge peak "
                f"{fmt(_mib(r.get('kv_used_gauge_gib')), 2)} MiB), engine RSS peak "
                f"{fmt(r.get('process_rss_peak_gib'), 3)} GiB{nvml}.")
        else:
            findings.append(f"{label}: {str(r['status']).upper()} ({r['failure_kind']}): {r['reason']}")
    passes = s["passes"]
    facts = [
        ("targets", ", ".join(str(t) for t in s["targets"])),
        ("engine passes", ", ".join(f"{p['pass']} (KV dtype {p['kv_cache_dtype_requested']}, "
                                    f"{'started' if p.get('started') else 'did not start'})" for p in passes)),
        ("engine-reported max model len", (passes[0].get("engine") or {}).get("engine_max_model_len")),
        ("ok / failed / unsupported", " / ".join(str(int((frame["status"] == k).sum()))
                                                 for k in ("ok", "failed", "unsupported"))),
    ]
    table = _table(frame)
    markdown = markdown_table(table, 4)
    return {
        "findings": findings,
        "facts": facts,
        "tables": [{"caption": "Stress points", "html": html_table(table, 4),
                    "markdown": markdown}],
    }


def headline(results_dir: Path) -> dict[str, Any]:
    """The packet summary's key figures: which target lengths were served."""
    s = read_json(e6.EXPERIMENT.path(results_dir, "summary"))
    final = s["final_outcome"]
    served = sorted(int(k) for k, v in final.items() if v["status"] == "ok")
    failed = sorted(int(k) for k, v in final.items() if v["status"] != "ok")
    return {"figures": [("served (tokens)", ", ".join(map(str, served)) or "none"),
                        ("not served", ", ".join(f"{k} ({final[str(k)]['failure_kind']})" for k in failed) or "none")]}
