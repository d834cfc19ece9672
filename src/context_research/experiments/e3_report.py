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
    "bytes_agree": "bytes agree", "kv_moved": "KV moved", "kv_save_ms_p50": "KV save p50 (ms)",
    "kv_wait_ms_p50": "KV wait p50 (ms)", "kv_load_ms_p50": "KV load p50 (ms)",
    "kv_step_requests_max": "requests per step (max)",
    "kv_load_gb_s_derived_p50": "load GB/s (derived)", "kv_stall_ratio_p50": "stall ratio",
    "delta_ttft_ms_p50": "Δ TTFT p50 (ms)", "delta_tpot_ms_p50": "Δ TPOT p50 (ms)", "delta_goodput_rps": "Δ goodput",
    "reason": "reason",
}


def _frame(results_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(e3.EXPERIMENT.path(results_dir, "comparison"))
    frame["series"] = frame["mode"] + " c=" + frame["concurrency"].astype(str)
    return frame


def _transfers(results_dir: Path) -> pd.DataFrame:
    path = e3.EXPERIMENT.path(results_dir, "transfers")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # no handoff at all (disaggregation refused)
        return pd.DataFrame()


def _provenance(results_dir: Path, summary: dict) -> str:
    meta = read_json(e3.EXPERIMENT.path(results_dir, "metadata"))
    conn = summary.get("connector", {})
    return f"{provenance_line(meta)}; client and engine (measuring connector); connector {conn.get('name')}"


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
    _transfer_figure(frame, _transfers(results_dir), e3.EXPERIMENT.figure_path(results_dir, "transfer"), prov,
                     summary)
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


# Waterfall segments (transfers.csv), in order, with their colours' legend labels.
WATERFALL_SEGMENTS = {
    "waterfall_producer_frontend_ms": "producer: HTTP + tokenize",
    "waterfall_producer_engine_ms": "producer engine: queue + prefill + KV save",
    "waterfall_producer_reply_ms": "producer: reply",
    "waterfall_broker_ms": "broker: hand to consumer",
    "waterfall_consumer_frontend_ms": "consumer: HTTP + tokenize",
    "waterfall_kv_wait_load_ms": "consumer engine: KV wait + load",
    "waterfall_first_token_ms": "consumer: first token",
}


def waterfall_requests(transfers: pd.DataFrame) -> pd.DataFrame:
    """One measured handoff per point: the one whose consumer TTFT is the point's median (lower
    middle for an even count), so the waterfall shows a typical request, not the best."""
    measured = transfers[(transfers["label"] == "measured") & (transfers["ok"].astype(str) == "True")]
    picks = []
    for _, sub in measured.groupby(["prompt_tokens", "concurrency"], sort=True):
        sub = sub.sort_values("consumer_ttft_s")
        picks.append(sub.iloc[(len(sub) - 1) // 2])
    return pd.DataFrame(picks)


def _transfer_figure(frame: pd.DataFrame, transfers: pd.DataFrame, path: Path, provenance: str,
                     summary: dict) -> Path:
    """Per point, one request's measured waterfall (client and engine times on one clock), beside the
    aggregated TTFT p50 of the same point (recomputing the prefill instead)."""
    picks = waterfall_requests(transfers) if len(transfers) else pd.DataFrame()
    agg = frame[(frame["mode"] == "aggregated") & (frame["status"] == "ok")].set_index(["prompt_tokens", "concurrency"])
    with matplotlib.rc_context(SVG_RC):
        fig, ax = plt.subplots(figsize=(10, max(3.5, 0.9 * len(picks) + 2.5)))
        try:
            if picks.empty:
                ax.text(0.5, 0.5, "no disaggregated request measured", ha="center", va="center",
                        transform=ax.transAxes)
            else:
                ys = list(range(len(picks)))
                left = [0.0] * len(picks)
                for col, label in WATERFALL_SEGMENTS.items():
                    widths = [max(0.0, _num(v) or 0.0) for v in picks[col]]
                    ax.barh(ys, widths, left=left, height=0.5, label=label)
                    left = [a + w for a, w in zip(left, widths)]
                recompute = [_num(agg["ttft_ms_p50"].get((int(r.prompt_tokens), int(r.concurrency)), math.nan))
                             for r in picks.itertuples()]
                ax.scatter([x if x is not None else math.nan for x in recompute], ys, marker="|", s=400, color="black",
                           label="aggregated TTFT p50 (recompute)", zorder=3)
                ax.set_yticks(ys)
                ax.set_yticklabels([f"{int(r.prompt_tokens)} tok, c={int(r.concurrency)}" for r in picks.itertuples()],
                                   fontsize=8)
                ax.invert_yaxis()
                ax.legend(fontsize=7, loc="lower right")
                ax.grid(True, axis="x", alpha=0.3)
            ax.set_xlabel("ms from the producer send (one median-TTFT request per point)")
            conn = summary.get("connector", {})
            fig.suptitle(f"E3: where a disaggregated request's first token goes ({conn.get('name')})")
            ax.set_title(provenance, fontsize=8, style="italic")
            fig.tight_layout()
            return write_figure(path, fig)
        finally:
            plt.close(fig)


_INT_COLUMNS = ("transfer_bytes_per_request", "analytical_bytes_per_request")


def _cell(value: Any, column: str) -> str:
    """Display text: blank for missing, yes/no for flags, whole bytes, 3 significant decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in ("bytes_agree", "kv_moved"):
        flag = agreement(value)
        return "could not check" if flag is None else ("yes" if flag else "NO")
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
        timed = (f"engine-timed p50: KV save {fmt(_num(row.get('kv_save_ms_p50')), 2, grouped=True)} ms on the "
                 f"producer, KV wait {fmt(_num(row.get('kv_wait_ms_p50')), 2, grouped=True)} ms and load "
                 f"{fmt(_num(row.get('kv_load_ms_p50')), 2, grouped=True)} ms on the consumer")
        if delta > 0:
            out.append(f"The handoff costs more than it saves {where}: disaggregated TTFT p50 is {delta:,.1f} ms "
                       f"higher than aggregated through {via} ({timed}).")
        else:
            out.append(f"The handoff saves more than it costs {where}: disaggregated TTFT p50 is {-delta:,.1f} ms "
                       f"lower than aggregated through {via} ({timed}).")
    return out


def waterfall_sentences(transfers: pd.DataFrame) -> list[str]:
    """Per point, the median-TTFT request's first-token time split into its measured segments."""
    out = []
    for r in waterfall_requests(transfers).itertuples() if len(transfers) else ():
        parts = [(label, _num(getattr(r, col))) for col, label in WATERFALL_SEGMENTS.items()]
        known = [(label, v) for label, v in parts if v is not None]
        if not known:
            continue
        total = sum(v for _, v in known)
        biggest = max(known, key=lambda kv: kv[1])
        out.append(f"{int(r.prompt_tokens):,} tokens, c={int(r.concurrency)} (handoff {r.handoff_id}): "
                   + ", ".join(f"{label} {v:,.1f} ms" for label, v in known)
                   + f"; largest: {biggest[0]} ({biggest[1] / total:.0%} of {total:,.1f} ms).")
    return out


def share_rule_sentence(definitions: dict) -> str:
    """How a step that served several requests is split among them (the report says which rule)."""
    rule = definitions.get("per_request_share")
    if not rule:
        return "not stated: this run predates per-step sharing (a request's time is its steps' whole time)"
    return (f"{rule}; kv_save_step_ms and kv_load_step_ms keep the steps' whole time and kv_step_requests_max how "
            f"many requests one step served")


def shared_step_sentences(dis_ok: pd.DataFrame) -> list[str]:
    """Points where one engine step saved or loaded several requests: per-request times are shares."""
    out = []
    for r in dis_ok.sort_values(["prompt_tokens", "concurrency"]).itertuples():
        shared = _num(getattr(r, "kv_step_requests_max", None))
        if shared is not None and shared > 1:
            out.append(f"{int(r.prompt_tokens):,} tokens, c={int(r.concurrency)}: up to {int(shared)} requests shared "
                       f"one engine step; per request, KV save p50 {fmt(_num(r.kv_save_ms_p50), 2, grouped=True)} ms "
                       f"of a {fmt(_num(getattr(r, 'kv_save_step_ms_p50', None)), 2, grouped=True)} ms step and KV "
                       f"load p50 {fmt(_num(r.kv_load_ms_p50), 2, grouped=True)} ms (step "
                       f"{fmt(_num(getattr(r, 'kv_load_step_ms_p50', None)), 2, grouped=True)} ms) are token shares.")
    return out


def _availability(fact: dict | None, show) -> str:
    if not fact:
        return "not recorded"
    return show(fact) if fact.get("available") else f"not measured: {fact.get('reason')}"


def link_sentences(dis_ok: pd.DataFrame, conn: dict) -> list[str]:
    """The achieved KV load rate against what the link can carry, and a transport slower than
    the host allows."""
    out = []
    transport, ceiling = conn.get("kv_transport") or {}, conn.get("link_ceiling") or {}
    if transport.get("available"):
        out.append(("FLAGGED: " if transport.get("slower_than_host_allows") else "") + transport["note"] + ".")
    if ceiling.get("available"):
        for r in dis_ok.sort_values(["prompt_tokens", "concurrency"]).itertuples():
            rate = _num(getattr(r, "kv_load_gb_s_derived_p50", None))
            if rate is not None:
                out.append(f"{int(r.prompt_tokens):,} tokens, c={int(r.concurrency)}: the consumer loaded the KV at "
                           f"{rate:,.2f} GB/s, {rate / ceiling['gb_s']:.2%} of the link ceiling "
                           f"({ceiling['gb_s']:,.0f} GB/s, {ceiling['kind']}).")
    return out


def report_section(results_dir: Path) -> dict[str, Any]:
    results_dir = Path(results_dir)
    s = read_json(e3.EXPERIMENT.path(results_dir, "summary"))
    frame = _frame(results_dir)
    conn, tr, gpu = s["connector"], s["transfer"], s["gpu_assignment"]
    findings = transfer_verdicts(frame, conn["name"])
    dis_ok = frame[(frame["mode"] == "disaggregated") & (frame["status"] == "ok")]
    for r in dis_ok.sort_values(["prompt_tokens", "concurrency"]).itertuples():
        check = r.kv_bytes_check if isinstance(getattr(r, "kv_bytes_check", None), str) else "bytes not checked"
        findings.append(
            f"{int(r.prompt_tokens):,} tokens, concurrency {int(r.concurrency)}: KV bytes: {check} "
            f"({fmt(_num(r.analytical_bytes_per_request), 0, grouped=True)} analytical bytes per request = "
            f"{fmt(_num(r.stored_tokens), 0, grouped=True)} tokens x {fmt(_num(r.kv_bytes_per_token), 0, grouped=True)} B); "
            f"over the point's {int(r.handoffs_ok)} handoffs the consumer loaded "
            f"{fmt(_num(r.external_kv_tokens), 0, grouped=True)} of {fmt(_num(r.consumer_expected_kv_tokens), 0, grouped=True)} "
            f"expected prompt tokens; stall ratio "
            f"{fmt(_num(r.kv_stall_ratio_p50), 2, grouped=True)} (engine-timed), "
            f"Δ TPOT p50 {fmt(_num(r.delta_tpot_ms_p50), 2, grouped=True)} ms, "
            f"Δ goodput {fmt(_num(r.delta_goodput_rps), 2, grouped=True)} req/s.")
    findings.extend(shared_step_sentences(dis_ok))
    findings.extend(waterfall_sentences(_transfers(results_dir)))
    findings.extend(link_sentences(dis_ok, conn))
    not_moved = tr.get("kv_not_moved") or []
    if not_moved:
        findings.append(f"KV NOT MOVED for {len(not_moved)} handoff(s); their points fail: "
                        + "; ".join(f"{h['handoff_id']}: {h['reason']}" for h in not_moved[:3])
                        + (" ..." if len(not_moved) > 3 else ""))
    if tr.get("bytes_agree_all") is False:
        points = [c for c in tr.get("bytes_checks") or [] if c.get("bytes_agree") is False]
        findings.append(f"Byte accounting FLAGGED: {len(tr['bytes_disagreements'])} handoff(s) and {len(points)} "
                        f"point(s) differ from the analytical KV size by more than the tolerance (see "
                        f"{e3.EXPERIMENT.outputs['transfers']} and {e3.EXPERIMENT.outputs['comparison']}).")
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
        ("handoffs whose KV moved", f"{tr.get('handoffs_kv_moved')} / {tr['handoffs']}"),
        ("KV transport (UCX)", _availability(conn.get("kv_transport"), lambda t: ", ".join(t["transports"]))),
        ("link ceiling", _availability(conn.get("link_ceiling"), lambda c: f"{c['gb_s']:,.0f} GB/s ({c['kind']})")),
        ("transfer timing", "; ".join(tr.get("kv_timing_sources") or []) or "not measured"),
        ("definitions", "; ".join(f"{k} = {tr['definitions'][k]}" for k in ("kv_save_ms", "kv_load_ms",
                                                                              "kv_wait_ms", "kv_stall_ratio")
                                  if k in tr["definitions"])),
        ("per-request save and load times", share_rule_sentence(tr.get("definitions") or {})),
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
