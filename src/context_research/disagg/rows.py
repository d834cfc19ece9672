"""E3's result rows: one per point and mode (``POINT_COLUMNS``), one per request, one per handoff.

A point row carries the client-side latency and goodput columns of both modes; a disaggregated
row adds the transfer accounting of its handoffs and, once both modes are
measured, the disaggregated - aggregated deltas (``add_deltas``).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..analysis.latency import goodput, latency_row
from ..analysis.stats import mean, ms, percentile
from ..records import RequestRecord
from .tables import E3_MODE_COMPARISON
from ..result_tables import data_columns
from ..workload.checks import point_status
from .broker import Handoff
from .plan import Point
from .connectors import NIXL_CONNECTORS
from .verdict import point_bytes_check, point_verdict

MODES = ("aggregated", "disaggregated")
# Columns compared between the modes: disaggregated - aggregated.
DELTA_METRICS = ("ttft_ms_p50", "ttft_ms_p95", "tpot_ms_p50", "tpot_ms_p95", "e2e_ms_p50", "e2e_ms_p95",
                 "goodput_rps")
# The connector's own telemetry (NIXL's vllm:nixl_* histograms), Δ over the point on the decode engine.
NIXL_COLUMNS = ("nixl_bytes_transferred", "nixl_transfers", "nixl_xfer_ms_mean", "nixl_failed_transfers")
# Column order of mode_comparison.csv, declared once with E3's tables.
POINT_COLUMNS = data_columns(E3_MODE_COMPARISON)


def empty_row(point: Point, mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    row = {c: None for c in POINT_COLUMNS}
    row.update({"prompt_tokens": point.prompt_tokens, "concurrency": point.concurrency, "mode": mode,
                "max_tokens": cfg["max_tokens"], "ttft_slo_ms": cfg["ttft_slo_ms"], "tpot_slo_ms": cfg["tpot_slo_ms"],
                "measured_on": "client; kv_* columns: engine (measuring connector); consumer_* and engine_* and "
                               "nixl_* columns: engine /metrics; bytes: shared folder or NIXL's counter"})
    return row


def failed_row(point: Point, mode: str, cfg: dict[str, Any], reason: str,
               gpus_used: int | None = None) -> dict[str, Any]:
    row = empty_row(point, mode, cfg)
    row.update({"status": "failed", "reason": reason, "gpus_used": gpus_used})
    return row


def sort_rows(rows: list[dict[str, Any]], kv_paths: Sequence[str] = ()) -> list[dict[str, Any]]:
    """By prompt length, then concurrency, the aggregated row before the disaggregated ones, those
    in the order of ``kv_paths`` (the configured ways)."""
    order = list(kv_paths)

    def way(r: dict[str, Any]) -> int:
        return order.index(r.get("kv_path")) if r.get("kv_path") in order else -1

    return sorted(rows, key=lambda r: (r["prompt_tokens"], r["concurrency"], MODES.index(r["mode"]), way(r)))


def latency_columns(row: dict[str, Any], records: Sequence[RequestRecord], duration_s: float | None,
                    cfg: dict[str, Any], gpus_used: int) -> None:
    row.update(latency_row(records))
    row["gpus_used"] = gpus_used
    if records and duration_s and duration_s > 0:
        g = goodput(records, duration_s, cfg["ttft_slo_ms"], cfg["tpot_slo_ms"])
        row.update({k: g[k] for k in ("duration_s", "request_throughput_rps", "output_throughput_tok_s",
                                       "n_slo_met", "slo_attainment", "goodput_rps")})
        row.update({k: v for k, v in g.items() if k.endswith(("_ci_low", "_ci_high")) and k in row})
        row["goodput_rps_per_gpu"] = g["goodput_rps"] / gpus_used if gpus_used else None
    # Failed requests, prompt-length mismatches and an empty point fail the row (the shared rule
    # of the latency experiments; E3 has no prefix-cache check: prompts have distinct prefixes).
    status, reason = point_status(records, None)
    row["status"], row["reason"] = status, reason or None


def combine_agreement(flags: Sequence[bool | None]) -> bool | None:
    """Byte agreement of several handoffs: False if any disagrees, True only if every one was
    measured and agrees, None otherwise (bytes not measured, e.g. NIXL / P2P NCCL, or no handoff)."""
    if any(f is False for f in flags):
        return False
    if flags and all(f is True for f in flags):
        return True
    return None


def nixl_counter(direction: str | None, decode: dict[str, Any] | None, prefill: dict[str, Any] | None
                 ) -> tuple[dict[str, Any], str]:
    """NIXL's telemetry over a point and the engine it comes from. vLLM 0.26.0 records a transfer
    on the engine that holds its handle, the one that issues it: the decode engine for a read
    (pull), the prefill engine for a write (push). Where that engine counted no bytes and the
    other did, the other's count is used and the label says so."""
    first, second = ("prefill", "decode") if direction == "write" else ("decode", "prefill")
    tels = {"decode": decode or {}, "prefill": prefill or {}}
    if not tels[first].get("nixl_bytes_transferred") and (tels[second].get("nixl_bytes_transferred") or 0) > 0:
        return tels[second], f"{second} (the {first} engine, which issues the transfers, counted none)"
    return tels[first], first


def nixl_rate_gb_s(row: dict[str, Any]) -> float | None:
    """NIXL's own rate over the point: bytes / (transfers x mean transfer time), 1 GB = 1e9 bytes
    (each transfer is observed once in both histograms)."""
    moved, n, mean_ms = row.get("nixl_bytes_transferred"), row.get("nixl_transfers"), row.get("nixl_xfer_ms_mean")
    if not moved or not n or not mean_ms:
        return None
    return moved / (n * mean_ms / 1000.0) / 1e9


def transfer_columns(row: dict[str, Any], handoffs: Sequence[Handoff], decode_engine: dict[str, Any] | None,
                     tolerance: float, telemetry: dict[str, Any] | None = None,
                     counter_engine: str | None = None) -> None:
    """Per-point transfer accounting of a disaggregated row (medians over the point's handoffs whose
    consumer succeeded), then the transfer verdict: a point whose KV did not move, or whose bytes
    disagree with the analytical count, is ``failed``. ``telemetry``: NIXL's counters over the
    point from ``counter_engine`` (``nixl_counter``)."""
    hs = list(handoffs)
    ok = [h for h in hs if h.ok]
    rows = [h.as_row(tolerance) for h in hs]
    ok_rows = [r for r in rows if r["ok"]]
    row["handoffs"], row["handoffs_ok"] = len(hs), len(ok)
    row["handoffs_kv_moved"] = sum(bool(r["kv_moved"]) for r in rows)
    moved = [h.bytes_moved for h in ok if h.bytes_moved is not None]
    row["stored_tokens"] = ok[0].stored_tokens_expected if ok else None
    row["transfer_bytes_per_request"] = mean(moved)
    row["transfer_bytes_total"] = sum(moved) if moved else None
    row["kv_bytes_loaded_per_request"] = mean([r["kv_bytes_loaded"] for r in ok_rows])
    row["analytical_bytes_per_request"] = mean([h.analytical_bytes for h in ok if h.analytical_bytes is not None])
    row["baseline_prefill_ms_p50"] = ms(ok[0].baseline_prefill_s) if ok else None
    row["producer_e2e_ms_p50"] = ms(percentile([h.producer_e2e_s for h in ok], 50))
    row["consumer_ttft_ms_p50"] = ms(percentile([h.consumer_ttft_s for h in ok], 50))
    for name in ("kv_save_ms", "kv_save_step_ms", "kv_load_ms", "kv_load_step_ms", "kv_wait_ms", "kv_stall_ms",
                 "kv_stall_ratio", "kv_load_gb_s_derived"):
        row[f"{name}_p50"] = percentile([r[name] for r in ok_rows], 50)
    shared = [r[k] for r in ok_rows for k in ("kv_save_step_requests", "kv_load_step_requests") if r[k] is not None]
    row["kv_step_requests_max"] = max(shared) if shared else None
    row["kv_timing_source"] = "; ".join(sorted({r["kv_timing_source"] for r in ok_rows})) or None
    expected = [r["expected_external_kv_tokens"] for r in ok_rows if r["expected_external_kv_tokens"] is not None]
    row["consumer_expected_kv_tokens"] = sum(expected) if expected else None
    loaded = [r["external_kv_tokens"] for r in ok_rows if r["external_kv_tokens"] is not None]
    row["external_kv_tokens"] = sum(loaded) if loaded else None
    by_source = (decode_engine or {}).get("engine_prompt_tokens_by_source") or {}
    if by_source:
        row["consumer_external_kv_tokens"] = by_source.get("external_kv_transfer")
        row["consumer_local_compute_tokens"] = by_source.get("local_compute")
    row.update({k: (telemetry or {}).get(k) for k in NIXL_COLUMNS})
    row["nixl_counter_engine"] = counter_engine
    row["nixl_gb_s"] = nixl_rate_gb_s(row)
    connector = hs[0].connector if hs else None
    byte_check = point_bytes_check(connector, ok_rows, row["nixl_bytes_transferred"],
                                   counter_engine if connector in NIXL_CONNECTORS else None, tolerance)
    row.update(byte_check)
    moved_ok, reason = point_verdict(rows, row.get("consumer_external_kv_tokens") if by_source else None, byte_check)
    row["kv_moved"] = moved_ok
    if row.get("status") == "ok" and not moved_ok:
        row["status"], row["reason"] = "failed", reason


def add_deltas(rows: list[dict[str, Any]]) -> None:
    """On each ok disaggregated row (every way's): disaggregated - aggregated of DELTA_METRICS at
    the same point."""
    agg = {(r["prompt_tokens"], r["concurrency"]): r for r in rows if r["mode"] == "aggregated" and r["status"] == "ok"}
    for r in rows:
        if r["mode"] != "disaggregated" or r["status"] != "ok":
            continue
        a = agg.get((r["prompt_tokens"], r["concurrency"]))
        for m in DELTA_METRICS:
            r[f"delta_{m}"] = (r[m] - a[m]) if a is not None and r[m] is not None and a[m] is not None else None


def request_rows(records: Sequence[RequestRecord], mode: str, point: Point | None, label: str,
                 handoffs: Sequence[Handoff] = ()) -> list[dict[str, Any]]:
    """One row per request: its mode, label (measured / warmup), point, record and handoff."""
    by_id = {h.request_id: h for h in handoffs}
    out = []
    for r in records:
        row = {"mode": mode, "kv_path": None, "label": label,
               "point_prompt_tokens": point.prompt_tokens if point else None,
               "concurrency": point.concurrency if point else None, **r.as_row()}
        h = by_id.get(r.request_id)
        row["handoff_id"] = h.handoff_id if h else None
        row["producer_e2e_s"] = h.producer_e2e_s if h else None
        row["consumer_ttft_s"] = h.consumer_ttft_s if h else None
        timing = h.timing if h else None
        for name in ("kv_wait_ms", "kv_load_ms", "external_kv_tokens"):
            row[name] = getattr(timing, name) if timing else None
        out.append(row)
    return out


def handoff_columns() -> list[str]:
    """Columns of one handoff row (``Handoff.as_row``), so an empty handoff table keeps its header."""
    return list(Handoff("h", "r", 0, "c").as_row())
