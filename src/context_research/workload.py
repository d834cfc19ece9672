"""Workload building and per-point checks shared by the latency experiments (E1, E2).

Every request gets a token-id prompt of exactly the target length (token ids need no
tokenizer, so the length is exact by construction) whose first tokens no other request of the
run shares, so the prefix cache can never serve a hit, whatever ``serving.enable_prefix_caching``
says. The server's ``usage.prompt_tokens`` is then checked against the target and the engine's
``vllm:prompt_tokens_by_source{source="local_cache_hit"}`` delta must stay 0: a point that
fails either check is a failed row with the reason, never a silent drift.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

from .analysis.stats import interval_part, ms, small_sample_note, small_sample_part, summarize_with_ci
from .engine_metrics import NO_PER_REQUEST_METRICS
from .metadata import gpu_inventory
from .prompts import token_id_prompt
from .records import GenerationRequest, RequestRecord


class PromptFactory:
    """Exact-length token-id requests; request k of the run gets prompt seed ``seed + k`` and the
    unique prefix k, so no two requests of one run (warmup included) share a cache block."""

    def __init__(self, model: dict[str, Any], seed: int):
        self.model = model
        self.seed = seed
        self.issued = 0

    def requests(self, phase: str, n: int, prompt_tokens: int, max_tokens: int,
                 offsets: Sequence[float] | None = None) -> list[GenerationRequest]:
        out = []
        for i in range(n):
            k = self.issued
            self.issued += 1
            prompt = token_id_prompt(prompt_tokens, self.seed + k, self.model, unique_prefix=k)
            out.append(GenerationRequest(
                request_id=f"{phase}-{k}", prompt=prompt, max_tokens=max_tokens,
                prompt_tokens_target=prompt_tokens, temperature=0.0, seed=self.seed, ignore_eos=True,
                scheduled_offset_s=None if offsets is None else float(offsets[i])))
        return out


def context_overflow(prompt_tokens: int, max_tokens: int, max_model_len: int, profile: str) -> str | None:
    """Why a point cannot be served (prompt + output exceed the context), or None if it fits."""
    if prompt_tokens + max_tokens > max_model_len:
        return (f"prompt {prompt_tokens} + output {max_tokens} = {prompt_tokens + max_tokens} tokens exceeds "
                f"models.{profile}.max_model_len = {max_model_len}; not sent")
    return None


def prompt_length_mismatches(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """Successful requests whose server-counted prompt length differs from the target."""
    return [r for r in records if r.ok and r.prompt_tokens_target is not None
            and r.prompt_tokens != r.prompt_tokens_target]


def local_cache_hit_tokens(engine: dict[str, Any]) -> float | None:
    """Prompt tokens the engine took from its local prefix cache during a point (must be 0).

    None when the engine exports no ``vllm:prompt_tokens_by_source`` counter at all; 0 when it
    exports the counter but never created the ``local_cache_hit`` label (no hit ever happened).
    """
    by_source = engine.get("engine_prompt_tokens_by_source") or {}
    if not by_source:
        return None
    return float(by_source.get("local_cache_hit", 0.0))


def point_status(records: Sequence[RequestRecord], cache_hits: float | None) -> tuple[str, str]:
    """("ok", "") or ("failed", reason): any failed request, a prompt-length mismatch or a
    prefix-cache hit fails the point (its numbers stay in the row for inspection)."""
    reasons = []
    failed = [r for r in records if not r.ok]
    if not records:
        reasons.append("no request was sent")
    if failed:
        reasons.append(f"{len(failed)} of {len(records)} requests failed (first: {failed[0].error})")
    mismatched = prompt_length_mismatches(records)
    if mismatched:
        r = mismatched[0]
        reasons.append(f"prompt length mismatch in {len(mismatched)} request(s): the server counted "
                       f"{r.prompt_tokens} tokens for a {r.prompt_tokens_target}-token target ({r.request_id})")
    if cache_hits:
        reasons.append(f"{cache_hits:g} prompt tokens were prefix-cache hits (must be 0)")
    return ("failed", "; ".join(reasons)) if reasons else ("ok", "")


def died_in_flight(row: dict[str, Any], records: Sequence[RequestRecord], exit_reason: str | None) -> dict[str, Any]:
    """A point during which the engine died (it has exited and some request of the point failed,
    or none was served): failed, with the engine's reason rather than its clients' broken streams."""
    if exit_reason and (not records or any(not r.ok for r in records)):
        row.update(status="failed", reason=exit_reason)
    return row


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


def engine_gpu_name(session) -> str | None:
    """NVML name of the GPU the engine runs on (the one run_metadata records), or None on CPU."""
    if (session.backend.info() or {}).get("device") != "cuda":
        return None
    inv = gpu_inventory()
    return inv["gpus"][0]["name"] if inv.get("available") else None


class PointProgress:
    """One line per finished sweep point on stderr (the rule's log): index, share done, elapsed
    time and a naive ETA, so a long sweep in a log file shows where it is."""

    def __init__(self, experiment: str, total: int, stream=None):
        self.experiment = experiment
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def point(self, label: str, detail: str = "") -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.experiment} {self.done}/{self.total} {self.done / max(self.total, 1):4.0%}] {label}"
              f"{': ' + detail if detail else ''} (elapsed {elapsed:.0f} s, eta ~{eta:.0f} s)",
              file=self.stream, flush=True)
