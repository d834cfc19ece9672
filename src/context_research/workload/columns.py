"""A point's engine-side columns (vLLM's /metrics means, per-request engine TTFT percentiles), the
client-minus-engine TTFT gap, the sweep summary and the per-request rows."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..analysis.stats import interval_part, ms, small_sample_note, small_sample_part, summarize_with_ci
from ..engine_metrics import NO_PER_REQUEST_METRICS
from ..records import RequestRecord
from .checks import local_cache_hit_tokens


def engine_columns(engine: dict[str, Any], records: Sequence[RequestRecord] | None = None) -> dict[str, Any]:
    """Engine-side view of one point (ms).

    The ``*_mean`` columns are vLLM's /metrics histograms over the point: Δsum / Δcount, exact
    means (no percentile is read from a histogram: interpolating inside its buckets is not a
    measurement). The TTFT percentiles come from the engine's per-request metrics of the point's
    successful ``records`` (``RequestRecord.engine_ttft_ms``, vLLM's --enable-per-request-metrics:
    first token - scheduled, queue excluded), under the client's minimum-n rules and with their
    CIs (``engine_ttft_percentiles``); ``engine_percentile_note`` says what is empty and why (too
    few requests for a percentile or its CI, or no record carries metrics: an older vLLM, the
    simulated backend, or no ``records``).
    """
    with_metrics = [r for r in (records or ()) if r.ok and r.engine_ttft_ms is not None]
    pct = engine_ttft_percentiles([r.engine_ttft_ms for r in with_metrics])
    note = pct.pop("note")
    if records is None:
        note = "the point's requests were not given to engine_columns: engine percentiles left empty"
    elif not with_metrics:
        note = NO_PER_REQUEST_METRICS
    return {
        "engine_requests": engine.get("engine_ttft_count"),
        "engine_ttft_ms_mean": ms(engine.get("engine_ttft_mean_s")),
        "engine_per_request_metrics": len(with_metrics),
        **pct,
        "engine_percentile_note": note,
        "engine_itl_ms_mean": ms(engine.get("engine_itl_mean_s")),
        "engine_e2e_ms_mean": ms(engine.get("engine_e2e_mean_s")),
        "engine_queue_ms_mean": ms(engine.get("engine_queue_mean_s")),
        "engine_prefill_ms_mean": ms(engine.get("engine_prefill_mean_s")),
        "engine_decode_ms_mean": ms(engine.get("engine_decode_mean_s")),
        "engine_preemptions": engine.get("engine_preemptions"),
        "engine_prompt_tokens": engine.get("engine_prompt_tokens"),
        "engine_generation_tokens": engine.get("engine_generation_tokens"),
        "engine_kv_cache_usage_peak": engine.get("engine_kv_cache_usage_peak"),
        "local_cache_hit_tokens": local_cache_hit_tokens(engine),
    }


ENGINE_PERCENTILES = ("p50", "p95", "p99")


def engine_ttft_percentiles(values_ms: Sequence[float]) -> dict[str, Any]:
    """``engine_ttft_ms_p50`` ... ``_p99`` of per-request engine TTFTs (ms), each with its CI, under
    the client's rules (``analysis.stats``: MIN_SAMPLES to be stated, MIN_INTERVAL for a CI), and
    ``note``: what was left out and why (None when nothing was)."""
    summary = summarize_with_ci(values_ms, "engine_ttft_ms")
    out: dict[str, Any] = {f"engine_ttft_ms_{s}{b}": summary[f"engine_ttft_ms_{s}{b}"]
                           for s in ENGINE_PERCENTILES for b in ("", "_ci_low", "_ci_high")}
    out["note"] = small_sample_note([small_sample_part("engine ttft", len(values_ms), only=ENGINE_PERCENTILES)],
                                    [interval_part("engine ttft", dict(out), "engine_ttft_ms", len(values_ms))])
    return out


def ttft_gap_columns(client_ttft_ms_mean: float | None, engine_ttft_ms_mean: float | None) -> dict[str, Any]:
    """Client-side minus engine-side mean TTFT: the HTTP, JSON streaming and API-server time
    outside the engine's own first-token clock."""
    if client_ttft_ms_mean is None or engine_ttft_ms_mean is None:
        return {"ttft_client_minus_engine_ms": None, "ttft_client_over_engine": None}
    return {"ttft_client_minus_engine_ms": client_ttft_ms_mean - engine_ttft_ms_mean,
            "ttft_client_over_engine": client_ttft_ms_mean / engine_ttft_ms_mean if engine_ttft_ms_mean > 0 else None}


def sweep_summary(rows: Sequence[dict[str, Any]], point_key: Callable[[dict[str, Any]], dict[str, Any]]
                  ) -> dict[str, Any]:
    """The sweep-level fields E1 and E2 both put in ``summary.json``, from their point rows.

    ``point_key(row)`` names a point in ``failed_points`` (e.g. ``{"prompt_tokens": 128}``).
    ``local_cache_hit_tokens`` sums over EVERY row with a value, failed points included: a point
    failed for prefix-cache hits must show its hits here (None when no row has a value).
    """
    ok = [r for r in rows if r["status"] == "ok"]
    gaps = [r["ttft_client_minus_engine_ms"] for r in rows if r.get("ttft_client_minus_engine_ms") is not None]
    hits = [r["local_cache_hit_tokens"] for r in rows if r.get("local_cache_hit_tokens") is not None]
    return {
        "points": len(rows),
        "points_ok": len(ok),
        "failed_points": [{**point_key(r), "reason": r["reason"]} for r in rows if r["status"] != "ok"],
        "prompt_tokens_mismatches": int(sum(r["prompt_tokens_mismatches"] for r in rows)),
        "local_cache_hit_tokens": float(sum(hits)) if hits else None,
        "ttft_client_minus_engine_ms_mean": sum(gaps) / len(gaps) if gaps else None,
        "ttft_client_minus_engine_ms_min": min(gaps) if gaps else None,
        "ttft_client_minus_engine_ms_max": max(gaps) if gaps else None,
    }


def request_rows(records: Sequence[RequestRecord], **keys: Any) -> list[dict[str, Any]]:
    """Per-request CSV rows (``keys`` first), with the prompt-length check spelled out."""
    rows = []
    for r in records:
        row = {**keys, **r.as_row()}
        row["prompt_tokens_match"] = (r.prompt_tokens == r.prompt_tokens_target) if r.ok else None
        rows.append(row)
    return rows
