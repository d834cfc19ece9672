"""E3's table and packet section: does moving the KV cost more than recomputing it, and which way
of moving it (``kv_path``) comes closest? The figures are drawn by ``e3_figures``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.stats import format_with_ci
from ..io import read_json, write_text
from ..report import provenance_line
from ..tables import fmt, html_table
from . import e3  # the declaration (its module never imports this one)
from .e3_figures import (WATERFALL_SEGMENTS, goodput_figure, latency_figure, num as _num, series_labels,
                         transfer_figure, waterfall_requests, way_of)
from ..disagg.tables import E3_MODE_COMPARISON

# mode_comparison.csv's columns the report shows, headed by their declared labels and units
# (E3_MODE_COMPARISON).
TABLE_COLUMNS = ("prompt_tokens", "concurrency", "mode", "kv_path", "status", "ttft_ms_p50", "ttft_ms_p95",
                 "tpot_ms_p50", "tpot_ms_p95", "e2e_ms_p50", "goodput_rps", "transfer_bytes_per_request",
                 "analytical_bytes_per_request", "bytes_agree", "kv_moved", "kv_save_ms_p50", "kv_wait_ms_p50",
                 "kv_load_ms_p50", "kv_step_requests_max", "kv_load_gb_s_derived_p50", "kv_stall_ratio_p50",
                 "delta_ttft_ms_p50", "delta_tpot_ms_p50", "delta_goodput_rps", "reason")
# The ways compared (item 4 of issue 27): one row per way and point.
PATH_COLUMNS = ("kv_path", "prompt_tokens", "concurrency", "connector", "kv_transfer_direction", "ucx_env",
                "kv_transport", "kv_transport_slow", "kv_load_gb_s_derived_p50", "nixl_gb_s",
                "kv_load_share_of_ceiling", "kv_wait_ms_p50", "kv_stall_ratio_p50", "delta_ttft_ms_p50", "bytes_agree",
                "status")


def _frame(results_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(e3.EXPERIMENT.path(results_dir, "comparison"))
    frame["series"] = series_labels(frame)
    return frame


def _transfers(results_dir: Path) -> pd.DataFrame:
    path = e3.EXPERIMENT.path(results_dir, "transfers")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # no handoff at all (disaggregation refused)
        return pd.DataFrame()


def _ways(summary: dict) -> list[dict]:
    return summary.get("kv_paths") or []


def _connectors(summary: dict) -> str:
    return ", ".join(sorted({w["connector"].get("connector") or w["name"] for w in _ways(summary)})) or "none"


def _provenance(results_dir: Path, summary: dict) -> str:
    meta = read_json(e3.EXPERIMENT.path(results_dir, "metadata"))
    return f"{provenance_line(meta)}; client and engine (measuring connector); connector {_connectors(summary)}"


def make_figures(results_dir: Path) -> None:
    results_dir = Path(results_dir)
    summary = read_json(e3.EXPERIMENT.path(results_dir, "summary"))
    frame = _frame(results_dir)
    ok = frame[frame["status"] == "ok"]
    prov = _provenance(results_dir, summary)
    latency_figure(ok, e3.EXPERIMENT.figure_path(results_dir, "latency"), prov)
    goodput_figure(ok, e3.EXPERIMENT.figure_path(results_dir, "goodput"), prov, summary["slo"])
    transfer_figure(frame, _transfers(results_dir), e3.EXPERIMENT.figure_path(results_dir, "transfer"), prov,
                    f"E3: where a disaggregated request's first token goes ({_connectors(summary)})")
    write_text(e3.EXPERIMENT.figure_path(results_dir, "table"), _table_html(frame))


_INT_COLUMNS = ("transfer_bytes_per_request", "analytical_bytes_per_request", "prompt_tokens", "concurrency",
                "kv_step_requests_max")
_FLAG_COLUMNS = ("bytes_agree", "kv_moved", "kv_transport_slow")


def _cell(value: Any, column: str) -> str:
    """Display text: blank for missing, yes/no for flags, whole bytes, 3 significant decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in _FLAG_COLUMNS:
        flag = agreement(value)
        return "could not check" if flag is None else ("yes" if flag else "NO")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if column in _INT_COLUMNS:
            return f"{value:,.0f}"
        if column == "kv_load_share_of_ceiling":
            return f"{value:.2%}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def _table_frame(frame: pd.DataFrame, columns: tuple[str, ...] = TABLE_COLUMNS) -> pd.DataFrame:
    cols = [c for c in columns if c in frame.columns]
    return E3_MODE_COMPARISON.shown(pd.DataFrame({c: [_cell(v, c) for v in frame[c]] for c in cols}), cols)


def _table_html(frame: pd.DataFrame) -> str:
    return html_table(_table_frame(frame))


def agreement(value: Any) -> bool | None:
    """A flag cell as read back from CSV: True, False, or None when nothing was measured (NaN/empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text in ("True", "true", "1", "1.0"):
        return True
    if text in ("False", "false", "0", "0.0"):
        return False
    return None


def _via(way: dict) -> str:
    conn = way.get("connector") or {}
    if conn.get("connector", way["name"]) == "ExampleConnector":
        return "shared storage"
    env = "; ".join(f"{k}={v}" for k, v in sorted((conn.get("ucx_env") or {}).items()))
    return f"{way['name']} ({conn.get('connector')}, {conn.get('direction')}{', ' + env if env else ''})"


def transfer_verdicts(frame: pd.DataFrame, way: dict) -> list[str]:
    """One plain sentence per prompt length (lowest measured concurrency): does this way's handoff pay off?"""
    out = []
    dis = frame[(frame["mode"] == "disaggregated") & (frame["status"] == "ok")]
    for n, sub in dis.groupby("prompt_tokens", sort=True):
        row = sub.sort_values("concurrency").iloc[0]
        delta = _num(row.get("delta_ttft_ms_p50"))
        if delta is None:
            continue
        where = f"at {int(n):,} tokens (concurrency {int(row['concurrency'])})"
        timed = (f"Engine-timed p50: KV save {fmt(_num(row.get('kv_save_ms_p50')), 2, grouped=True)} ms on the "
                 f"producer, KV wait {fmt(_num(row.get('kv_wait_ms_p50')), 2, grouped=True)} ms and load "
                 f"{fmt(_num(row.get('kv_load_ms_p50')), 2, grouped=True)} ms on the consumer")
        word, verb = ("higher", "costs more than it saves") if delta > 0 else ("lower", "saves more than it costs")
        out.append(f"The handoff {verb} {where}: disaggregated TTFT p50 is {abs(delta):,.1f} ms {word} than "
                   f"aggregated through {_via(way)}. {timed}.")
    return out


def pay_off_sentence(frame: pd.DataFrame) -> str | None:
    """Across the ways: where, if anywhere, disaggregation beats recomputing on this hardware."""
    dis = frame[(frame["mode"] == "disaggregated") & (frame["status"] == "ok")].copy()
    dis["delta"] = pd.to_numeric(dis.get("delta_ttft_ms_p50"), errors="coerce")
    dis = dis.dropna(subset=["delta"])
    if dis.empty or way_of(dis).nunique() < 2:
        return None
    wins = dis[dis["delta"] <= 0]
    if wins.empty:
        best = dis.sort_values("delta").iloc[0]
        return (f"No way of moving the KV made disaggregation pay off at any measured point: the smallest cost is "
                f"{best['delta']:+,.1f} ms TTFT p50 ({best['kv_path']}, {int(best['prompt_tokens']):,} tokens, "
                f"c={int(best['concurrency'])}).")
    return "Disaggregation paid off (TTFT p50 no higher than aggregated) with: " + "; ".join(
        f"{r.kv_path} at {int(r.prompt_tokens):,} tokens, c={int(r.concurrency)} ({r.delta:+,.1f} ms)"
        for r in wins.sort_values(["kv_path", "prompt_tokens", "concurrency"]).itertuples()) + "."


def byte_sentences(dis_ok: pd.DataFrame) -> list[str]:
    out = []
    for r in dis_ok.sort_values(["prompt_tokens", "concurrency"]).itertuples():
        check = r.kv_bytes_check if isinstance(getattr(r, "kv_bytes_check", None), str) else "bytes not checked"
        def n(x: Any, digits: int = 0) -> str:
            return fmt(_num(x), digits, grouped=True)

        out.append(
            f"{int(r.prompt_tokens):,} tokens, concurrency {int(r.concurrency)}: KV bytes: {check} "
            f"({n(r.analytical_bytes_per_request)} analytical bytes per request = {n(r.stored_tokens)} tokens x "
            f"{n(r.kv_bytes_per_token)} B). Over the point's {int(r.handoffs_ok)} handoffs the consumer loaded "
            f"{n(r.external_kv_tokens)} of {n(r.consumer_expected_kv_tokens)} expected prompt tokens. Stall ratio "
            f"{n(r.kv_stall_ratio_p50, 2)} (engine-timed), Δ TPOT p50 {n(r.delta_tpot_ms_p50, 2)} ms, "
            f"Δ goodput {n(r.delta_goodput_rps, 2)} req/s.")
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
                   + f". Largest: {biggest[0]} ({biggest[1] / total:.0%} of {total:,.1f} ms).")
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


def link_sentences(dis_ok: pd.DataFrame, transport: dict, ceiling: dict) -> list[str]:
    """The achieved KV load rate against what the link can carry, and a transport slower than
    the host allows."""
    out = []
    if (transport or {}).get("available"):
        out.append(("FLAGGED: " if transport.get("slower_than_host_allows") else "") + transport["note"] + ".")
    if (ceiling or {}).get("available"):
        for r in dis_ok.sort_values(["prompt_tokens", "concurrency"]).itertuples():
            rate, nixl = _num(getattr(r, "kv_load_gb_s_derived_p50", None)), _num(getattr(r, "nixl_gb_s", None))
            if rate is not None:
                own = f"; NIXL's own rate {nixl:,.2f} GB/s ({nixl / ceiling['gb_s']:.2%})" if nixl is not None else ""
                out.append(f"{int(r.prompt_tokens):,} tokens, c={int(r.concurrency)}: the consumer loaded the KV at "
                           f"{rate:,.2f} GB/s, {rate / ceiling['gb_s']:.2%} of the link ceiling "
                           f"({ceiling['gb_s']:,.0f} GB/s, {ceiling['kind']}){own}.")
    return out


def way_findings(frame: pd.DataFrame, transfers: pd.DataFrame, way: dict, summary: dict, several: bool) -> list[str]:
    """Every finding of one way, each prefixed with its name when the run compared several."""
    name, tr = way["name"], way["transfer"]
    mine = frame[way_of(frame) == name] if several else frame
    dis_ok = mine[(mine["mode"] == "disaggregated") & (mine["status"] == "ok")]
    agg = frame[frame["mode"] == "aggregated"]
    found = transfer_verdicts(pd.concat([agg, mine[mine["mode"] == "disaggregated"]]), way)
    found += byte_sentences(dis_ok) + shared_step_sentences(dis_ok)
    found += waterfall_sentences(transfers[way_of(transfers) == name] if several and len(transfers) else transfers)
    found += link_sentences(dis_ok, way["connector"].get("kv_transport") or {}, summary.get("link_ceiling") or {})
    if way.get("start_error"):
        found.append(f"Its engines did not start: {way['start_error']}")
    not_moved = tr.get("kv_not_moved") or []
    if not_moved:
        found.append(f"KV NOT MOVED for {len(not_moved)} handoff(s); their points fail: "
                     + "; ".join(f"{h['handoff_id']}: {h['reason']}" for h in not_moved[:3])
                     + (" ..." if len(not_moved) > 3 else ""))
    if tr.get("bytes_agree_all") is False:
        points = [c for c in tr.get("bytes_checks") or [] if c.get("bytes_agree") is False]
        found.append(f"Byte accounting FLAGGED: {len(tr['bytes_disagreements'])} handoff(s) and {len(points)} "
                     f"point(s) differ from the analytical KV size by more than the tolerance (see "
                     f"{e3.EXPERIMENT.outputs['transfers']} and {e3.EXPERIMENT.outputs['comparison']}).")
    return [f"[{name}] {f}" for f in found] if several else found


def way_facts(way: dict, several: bool) -> list[tuple[str, Any]]:
    conn, tr = way["connector"], way["transfer"]
    env = "; ".join(f"{k}={v}" for k, v in sorted((conn.get("ucx_env") or {}).items())) or "none"
    facts = [
        ("connector", f"{conn.get('connector')} (prefill kv_producer -> decode kv_consumer; the KV moves by "
                      f"{conn.get('direction')}); UCX variables: {env}"),
        ("KV block size / dtype", f"{conn.get('block_size')} tokens ({conn.get('block_size_source')}) / "
                                  f"{conn.get('kv_dtype')} ({conn.get('kv_dtype_source')})"),
        ("analytical KV bytes per token", fmt(conn.get("kv_bytes_per_token"), 0, grouped=True)),
        ("handoffs (ok / all)", f"{tr['handoffs_ok']} / {tr['handoffs']}"),
        ("KV bytes moved", f"{fmt(tr['bytes_moved_total'], 0, grouped=True)} "
                           f"({tr.get('bytes_moved_source', 'files, every handoff (warm-ups included)')})"),
        ("shared folder bytes = sum of handoffs", str(tr.get("storage_matches_handoffs"))),
        ("handoffs whose KV moved", f"{tr.get('handoffs_kv_moved')} / {tr['handoffs']}"),
        ("KV transport (UCX)", _availability(conn.get("kv_transport"), lambda t: ", ".join(t["transports"]))),
        ("transfer timing", "; ".join(tr.get("kv_timing_sources") or []) or "not measured"),
    ]
    return [(f"{way['name']}: {k}", v) for k, v in facts] if several else facts


def report_section(results_dir: Path) -> dict[str, Any]:
    results_dir = Path(results_dir)
    s = read_json(e3.EXPERIMENT.path(results_dir, "summary"))
    frame, transfers = _frame(results_dir), _transfers(results_dir)
    ways, gpu = _ways(s), s["gpu_assignment"]
    several = len(ways) > 1
    findings = [f for way in ways for f in way_findings(frame, transfers, way, s, several)]
    pays = pay_off_sentence(frame)
    if pays:
        findings.insert(0, pays)
    failed = s.get("failed_rows", [])
    if failed:
        findings.append(f"{len(failed)} point/mode row(s) not measured: " + "; ".join(
            f"{f['mode']}{' ' + f['kv_path'] if f.get('kv_path') and several else ''} {f['prompt_tokens']} tok "
            f"c={f['concurrency']}: {f['reason']}" for f in failed[:4]) + (" ..." if len(failed) > 4 else ""))
    facts = [
        ("KV paths (engine starts)", f"{', '.join(w['name'] for w in ways)} ({s.get('engine_starts')}: the aggregated "
                                     f"engine once, then one pair per path)"),
        *[f for way in ways for f in way_facts(way, several)],
        ("GPU assignment", "; ".join(gpu.get("notes") or []) or gpu.get("device")),
        ("max_num_batched_tokens (all engines)", s.get("max_num_batched_tokens")),
        ("SLOs (client-side)", f"TTFT <= {s['slo']['ttft_slo_ms']:g} ms, TPOT <= {s['slo']['tpot_slo_ms']:g} ms"),
        ("link ceiling", _availability(s.get("link_ceiling"), lambda c: f"{c['gb_s']:,.0f} GB/s ({c['kind']})")),
        ("byte check tolerance", f"{s.get('bytes_tolerance', 0):.0%}"),
        ("definitions", "; ".join(f"{k} = {s['definitions'][k]}" for k in ("kv_save_ms", "kv_load_ms", "kv_wait_ms",
                                                                             "kv_stall_ratio", "kv_bytes_check")
                                  if k in s.get("definitions", {}))),
        ("per-request save and load times", share_rule_sentence(s.get("definitions") or {})),
    ]
    tables = [_table("Aggregated vs disaggregated per point (client-side; Δ = disaggregated - aggregated)",
                     _table_frame(frame))]
    dis = frame[frame["mode"] == "disaggregated"]
    if len(dis) and (several or dis.get("kv_transfer_direction", pd.Series(dtype=object)).isin(["read", "write"]).any()):
        tables.append(_table("The ways of moving the KV per point: rate against the link ceiling, transport, wait, "
                             "stall and Δ TTFT", _table_frame(dis, PATH_COLUMNS)))
    return {"findings": findings, "facts": facts, "tables": tables}


def _table(caption: str, shown: pd.DataFrame) -> dict[str, str]:
    markdown = shown.to_markdown(index=False, disable_numparse=True) if _has_tabulate() else shown.to_string()
    return {"caption": caption, "html": html_table(shown), "markdown": markdown}


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def headline(results_dir: Path) -> dict[str, Any]:
    """The packet summary's key figures: TTFT p50 of both modes (each way) at the largest ok point."""
    frame = pd.read_csv(e3.EXPERIMENT.path(results_dir, "comparison"))
    frame["_way"] = way_of(frame)
    ok = frame[frame["status"] == "ok"].sort_values(["prompt_tokens", "concurrency"])
    figures = []
    for (mode, way), rows in ok.groupby(["mode", "_way"], sort=False):
        row = rows.iloc[-1]
        label = mode if not way or frame.loc[frame["_way"] != "", "_way"].nunique() < 2 else f"{mode} {way}"
        figures.append((f"{label} TTFT p50 at {int(row['prompt_tokens'])} tokens, c={int(row['concurrency'])} (ms)",
                        format_with_ci(row, "ttft_ms_p50", 1)))
    return {"figures": figures or [("points", "no ok point")]}
