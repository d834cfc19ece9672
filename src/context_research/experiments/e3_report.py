"""E3 figures, table and packet section: does moving the KV cost more than recomputing it?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.stats import format_with_ci
from ..analysis.plots import SVG_RC, line_plot  # noqa: E402
from ..io import read_json, write_figure, write_text  # noqa: E402
from ..report import provenance_line  # noqa: E402
from ..tables import fmt, html_table  # noqa: E402
from . import e3  # noqa: E402  (the declaration; e3 bottom-imports this module, resolved at call time)

TABLE_COLUMNS = {
    "prompt_tokens": "prompt tokens", "concurrency": "concurrency", "mode": "mode", "status": "status",
    "ttft_ms_p50": "TTFT p50 (ms)", "ttft_ms_p95": "TTFT p95 (ms)", "tpot_ms_p50": "TPOT p50 (ms)",
    "tpot_ms_p95": "TPOT p95 (ms)", "e2e_ms_p50": "E2E p50 (ms)", "goodput_rps": "goodput (req/s)",
    "transfer_bytes_per_request": "KV bytes moved / req", "analytical_bytes_per_request": "analytical bytes / req",
    "bytes_agree": "bytes agree", "store_ms_p50": "store p50 (ms)", "load_ms_p50": "load p50 (ms)",
    "transfer_ms_p50": "transfer p50 (ms)", "transfer_throughput_mb_s": "transfer MB/s",
    "stall_ratio_p50": "stall ratio",
    "delta_ttft_ms_p50": "Δ TTFT p50 (ms)", "delta_tpot_ms_p50": "Δ TPOT p50 (ms)", "delta_goodput_rps": "Δ goodput",
    "reason": "reason",
}


def _frame(results_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(e3.EXPERIMENT.path(results_dir, "comparison"))
    frame["series"] = frame["mode"] + " c=" + frame["concurrency"].astype(str)
    return frame


def _provenance(results_dir: Path, summary: dict) -> str:
    meta = read_json(e3.EXPERIMENT.path(results_dir, "metadata"))
    conn = summary.get("connector", {})
    return f"{provenance_line(meta)}, client-side; connector {conn.get('name')}"


def make_figures(results_dir: Path) -> None:
    results_dir = Path(results_dir)
    summary = read_json(e3.EXPERIMENT.path(results_dir, "summary"))
    frame = _frame(results_dir)
    ok = frame[frame["status"] == "ok"]
    prov = _provenance(results_dir, summary)
    _latency_figure(ok, e3.EXPERIMENT.figure_path(results_dir, "latency"), prov)
    line_plot(ok, "prompt_tokens", ["goodput_rps"], e3.EXPERIMENT.figure_path(results_dir, "goodput"),
              f"E3: goodput (TTFT <= {summary['slo']['ttft_slo_ms']:g} ms and TPOT <= "
              f"{summary['slo']['tpot_slo_ms']:g} ms), aggregated vs disaggregated",
              "prompt tokens", "requests/s within both SLOs", provenance=prov, group="series")
    _transfer_figure(frame, e3.EXPERIMENT.figure_path(results_dir, "transfer"), prov, summary)
    write_text(e3.EXPERIMENT.figure_path(results_dir, "table"), _table_html(frame))


def _latency_figure(ok: pd.DataFrame, path: Path, provenance: str) -> Path:
    with matplotlib.rc_context(SVG_RC):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        try:
            for ax, (col, label) in zip(axes, (("ttft_ms_p50", "TTFT p50 (ms)"), ("tpot_ms_p50", "TPOT p50 (ms)"))):
                drawn = 0
                for series, sub in ok.groupby("series", sort=True):
                    sub = sub[["prompt_tokens", col]].apply(pd.to_numeric, errors="coerce").dropna().sort_values(
                        "prompt_tokens")
                    if sub.empty:
                        continue
                    style = "-" if series.startswith("aggregated") else "--"
                    ax.plot(sub["prompt_tokens"], sub[col], style, marker="o", label=series)
                    drawn += 1
                if drawn:
                    ax.legend(fontsize=8)
                    ax.grid(True, alpha=0.3)
                else:
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                ax.set_xlabel("prompt tokens")
                ax.set_ylabel(label)
            fig.suptitle("E3: user-visible latency, aggregated (solid) vs disaggregated (dashed)")
            fig.text(0.5, 0.90, provenance, ha="center", fontsize=8, style="italic")
            fig.tight_layout(rect=(0, 0, 1, 0.9))
            return write_figure(path, fig)
        finally:
            plt.close(fig)


def _transfer_figure(frame: pd.DataFrame, path: Path, provenance: str, summary: dict) -> Path:
    """Per point: the handoff (store + load) next to the aggregated TTFT (recomputing the prefill)."""
    dis = frame[(frame["mode"] == "disaggregated") & (frame["status"] == "ok")]
    agg = frame[(frame["mode"] == "aggregated") & (frame["status"] == "ok")].set_index(["prompt_tokens", "concurrency"])
    with matplotlib.rc_context(SVG_RC):
        fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(dis) + 3), 4.8))
        try:
            if dis.empty:
                ax.text(0.5, 0.5, "no disaggregated point measured", ha="center", va="center", transform=ax.transAxes)
            else:
                xs = range(len(dis))
                # A time not measured stays NaN (no bar); only the stacking base treats it as 0. A
                # store within the baseline's noise (< 0) is drawn as 0.
                store = pd.to_numeric(dis["store_ms_p50"], errors="coerce").clip(lower=0.0)
                load = pd.to_numeric(dis["load_ms_p50"], errors="coerce")
                recompute = [agg["ttft_ms_p50"].get((r.prompt_tokens, r.concurrency), math.nan)
                             for r in dis.itertuples()]
                ax.bar([x - 0.2 for x in xs], store.tolist(), width=0.4,
                       label="store (producer E2E - prefill baseline)")
                ax.bar([x - 0.2 for x in xs], load.tolist(), width=0.4, bottom=store.fillna(0.0).tolist(),
                       label="load (consumer TTFT)")
                ax.bar([x + 0.2 for x in xs], recompute, width=0.4, label="aggregated TTFT (recompute)", color="grey")
                labels = []
                for r in dis.itertuples():
                    mb = (r.transfer_bytes_per_request or 0) / 1e6
                    labels.append(f"{r.prompt_tokens} tok, c={r.concurrency}\n{mb:.3g} MB/req")
                ax.set_xticks(list(xs))
                ax.set_xticklabels(labels, fontsize=8)
                ax.legend(fontsize=8)
                ax.grid(True, axis="y", alpha=0.3)
            ax.set_ylabel("ms (p50 per request)")
            conn = summary.get("connector", {})
            fig.suptitle(f"E3: KV handoff through {conn.get('name')} vs recomputing the prefill")
            ax.set_title(provenance, fontsize=8, style="italic")
            return write_figure(path, fig)
        finally:
            plt.close(fig)


_INT_COLUMNS = ("transfer_bytes_per_request", "analytical_bytes_per_request")


def _cell(value: Any, column: str) -> str:
    """Display text: blank for missing, yes/no for flags, whole bytes, 3 significant decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "bytes_agree":
        flag = agreement(value)
        return "not measured" if flag is None else ("yes" if flag else "NO")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if column in _INT_COLUMNS:
            return f"{value:,.0f}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def _table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in TABLE_COLUMNS if c in frame.columns]
    shown = pd.DataFrame({c: [_cell(v, c) for v in frame[c]] for c in cols})
    return shown.rename(columns=TABLE_COLUMNS)


def _table_html(frame: pd.DataFrame) -> str:
    return html_table(_table_frame(frame))


def agreement(value: Any) -> bool | None:
    """A ``bytes_agree`` cell as read back from CSV: True, False, or None when the bytes were not
    measured (NaN/empty: e.g. NIXL / P2P NCCL connectors, which leave no folder to measure)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text in ("True", "true", "1", "1.0"):
        return True
    if text in ("False", "false", "0", "0.0"):
        return False
    return None


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def transfer_verdicts(frame: pd.DataFrame, connector: str) -> list[str]:
    """One plain sentence per prompt length (lowest measured concurrency): does the handoff pay off?"""
    out = []
    dis = frame[(frame["mode"] == "disaggregated") & (frame["status"] == "ok")]
    for n, sub in dis.groupby("prompt_tokens", sort=True):
        row = sub.sort_values("concurrency").iloc[0]
        delta = _num(row.get("delta_ttft_ms_p50"))
        if delta is None:
            continue
        via = "shared storage" if connector == "ExampleConnector" else connector
        where = f"at {int(n):,} tokens (concurrency {int(row['concurrency'])})"
        store = _num(row.get("store_ms_p50"))
        noise = (" (a store time <= 0 means writing the KV cost less than the prefill's run-to-run noise)"
                 if store is not None and store <= 0 else "")
        if delta > 0:
            out.append(f"Disaggregated TTFT p50 is {delta:,.1f} ms higher than aggregated {where}: the KV transfer "
                       f"through {via} costs more than recomputing the prefill on this hardware "
                       f"(handoff p50 {fmt(_num(row.get('transfer_ms_p50')), 1, grouped=True)} ms = store "
                       f"{fmt(store, 1, grouped=True)} + load {fmt(_num(row.get('load_ms_p50')), 1, grouped=True)} ms{noise}).")
        else:
            out.append(f"Disaggregated TTFT p50 is {-delta:,.1f} ms lower than aggregated {where}: moving the KV "
                       f"through {via} is cheaper than recomputing the prefill here "
                       f"(handoff p50 {fmt(_num(row.get('transfer_ms_p50')), 1, grouped=True)} ms = store {fmt(store, 1, grouped=True)} + load "
                       f"{fmt(_num(row.get('load_ms_p50')), 1, grouped=True)} ms{noise}).")
    return out


def report_section(results_dir: Path) -> dict[str, Any]:
    results_dir = Path(results_dir)
    s = read_json(e3.EXPERIMENT.path(results_dir, "summary"))
    frame = _frame(results_dir)
    conn, tr, gpu = s["connector"], s["transfer"], s["gpu_assignment"]
    findings = transfer_verdicts(frame, conn["name"])
    dis_ok = frame[(frame["mode"] == "disaggregated") & (frame["status"] == "ok")]
    for r in dis_ok.sort_values(["prompt_tokens", "concurrency"]).itertuples():
        err = _num(r.bytes_relative_error_max)
        flag = agreement(r.bytes_agree)
        verdict = {True: "measured and analytical agree", False: "measured and analytical DISAGREE",
                   None: "bytes moved not measured (no shared folder to measure for this connector), so "
                         "measured and analytical are not compared"}[flag]
        findings.append(
            f"{int(r.prompt_tokens):,} tokens, concurrency {int(r.concurrency)}: "
            f"{fmt(_num(r.transfer_bytes_per_request), 0, grouped=True)} "
            f"bytes moved per request vs {fmt(_num(r.analytical_bytes_per_request), 0, grouped=True)} analytical "
            f"({fmt(_num(r.stored_tokens), 0, grouped=True)} stored tokens x {fmt(_num(r.kv_bytes_per_token), 0, grouped=True)} B): "
            f"{verdict} (largest difference {'n/a' if err is None else f'{err:+.2%}'}, tolerance "
            f"{tr['bytes_tolerance']:.0%}); stall ratio {fmt(_num(r.stall_ratio_p50), 2, grouped=True)}, "
            f"Δ TPOT p50 {fmt(_num(r.delta_tpot_ms_p50), 2, grouped=True)} ms, "
            f"Δ goodput {fmt(_num(r.delta_goodput_rps), 2, grouped=True)} req/s.")
    if tr.get("bytes_agree_all") is False:
        findings.append(f"Byte accounting FLAGGED: {len(tr['bytes_disagreements'])} handoff(s) differ from the "
                        f"analytical KV size by more than the tolerance (see {e3.EXPERIMENT.outputs['transfers']}).")
    failed = s.get("failed_rows", [])
    if failed:
        findings.append(f"{len(failed)} point/mode row(s) not measured: " + "; ".join(
            f"{f['mode']} {f['prompt_tokens']} tok c={f['concurrency']}: {f['reason']}" for f in failed[:4])
            + (" ..." if len(failed) > 4 else ""))
    facts = [
        ("connector", f"{conn['name']} (prefill kv_producer -> decode kv_consumer)"),
        ("KV block size / dtype", f"{conn.get('block_size')} tokens ({conn.get('block_size_source')}) / "
                                  f"{conn.get('kv_dtype')} ({conn.get('kv_dtype_source')})"),
        ("analytical KV bytes per token", fmt(conn.get("kv_bytes_per_token"), 0, grouped=True)),
        ("handoffs (ok / all)", f"{tr['handoffs_ok']} / {tr['handoffs']}"),
        ("KV bytes moved, all handoffs", fmt(tr["bytes_moved_total"], 0, grouped=True)),
        ("shared folder bytes = sum of handoffs", str(tr.get("storage_matches_handoffs"))),
        ("GPU assignment", "; ".join(gpu.get("notes") or []) or gpu.get("device")),
        ("max_num_batched_tokens (all engines)", s.get("max_num_batched_tokens")),
        ("SLOs (client-side)", f"TTFT <= {s['slo']['ttft_slo_ms']:g} ms, TPOT <= {s['slo']['tpot_slo_ms']:g} ms"),
        ("transfer timing", f"store = {tr['definitions']['store_ms']}; load = {tr['definitions']['load_ms']}; "
                            f"stall ratio = {tr['definitions']['stall_ratio']}"),
    ]
    table = _table_frame(frame)
    markdown = table.to_markdown(index=False, disable_numparse=True) if _has_tabulate() else table.to_string()
    return {
        "findings": findings,
        "facts": facts,
        "tables": [{"caption": "Aggregated vs disaggregated per point (client-side; Δ = disaggregated - aggregated)",
                    "html": _table_html(frame),
                    "markdown": markdown}],
    }


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def headline(results_dir: Path) -> dict[str, Any]:
    """The packet summary's key figures: TTFT p50 of both modes at the largest ok point."""
    frame = pd.read_csv(e3.EXPERIMENT.path(results_dir, "comparison"))
    ok = frame[frame["status"] == "ok"].sort_values(["prompt_tokens", "concurrency"])
    figures = []
    for mode in ("aggregated", "disaggregated"):
        rows = ok[ok["mode"] == mode]
        if len(rows):
            row = rows.iloc[-1]
            figures.append((f"{mode} TTFT p50 at {int(row['prompt_tokens'])} tokens, c={int(row['concurrency'])} (ms)",
                            format_with_ci(row, "ttft_ms_p50", 1)))
    return {"figures": figures or [("points", "no ok point")]}
