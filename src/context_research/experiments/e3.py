"""E3: aggregated vs prefill/decode-disaggregated serving, with real KV transfer and its accounting.

Both modes serve the same workload (prompt lengths x concurrency levels, the same token-id
prompts) on the real engine:

1. aggregated: one engine (no connector) prefills and decodes. Per prompt length it first
   serves prefills alone, one at a time (``max_tokens=1``, not streamed, no queueing): the
   baseline the producer's store time is measured against. The engine is stopped before the
   next phase.
2. disaggregated: a prefill engine (``kv_role=kv_producer``) and a decode engine
   (``kv_role=kv_consumer``) joined by a vLLM KV connector (default ``ExampleConnector`` through
   a fresh folder under /dev/shm, removed afterwards). The broker sends each prompt to the
   producer, then streams it from the consumer; what the connector wrote is measured once the
   point's requests have completed, outside every timed window.

Refused points are rows with ``status="failed"`` and the reason: prompt + output beyond
max_model_len; for disaggregation, prompts (or concurrent prompts together) longer than
``max_num_batched_tokens`` (vLLM stores only the first chunk of a chunked prefill, then the
consumer dies with "shape mismatch") and lengths ExampleConnector cannot hand over (shorter
than a block plus one token, or ``n - 1`` a multiple of the block size, where producer and
consumer disagree on the folder name).

Artifacts in the output folder: ``mode_comparison.csv`` (one row per point and mode, with the
disaggregated - aggregated deltas), ``requests.csv``, ``transfers.csv`` (one row per handoff),
``routes_aggregated.jsonl`` / ``routes_disaggregated.jsonl`` (route logs), ``summary.json``,
``engine_{aggregated,prefill,decode}.log``, ``gpu_stats.json`` and ``run_metadata.json``.
Timing definitions of the transfer are in ``context_research.disagg.broker``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..analysis.latency import goodput, latency_row
from ..analysis.model_math import kv_bytes_per_token
from ..analysis.stats import mean, percentile
from ..backends.base import make_backend
from ..config import experiment_config, experiment_hash, hash_inputs, model_profile
from ..disagg import connectors
from ..disagg.broker import (DEFAULT_TOLERANCE, KvBroker, example_connector_lookup_tokens,
                             example_connector_stored_tokens, served_kv_dtype)
from ..disagg.gpus import GpuAssignment, assign_gpus, discover_gpus
from ..disagg.schedulers import AggregatedScheduler, DisaggregatedScheduler, RouteLog, ServeResult
from ..engine_metrics import cache_config_info, engine_summary, safe_snapshot
from ..errors import ConfigError, EngineStartError
from ..gpu_stats import NvmlSampler
from ..io import write_csv, write_json, write_text
from ..metadata import build_run_metadata, make_run_id, utc_now
from ..models import resolve_model
from ..prompts import token_id_prompt
from ..records import GenerationRequest, RequestRecord
from ..workload import point_status
from .runner import RunContext, _raise_terminated
from .session import EngineSession

EXPERIMENT = "e3"
MODES = ("aggregated", "disaggregated")
# Columns compared between the modes: disaggregated - aggregated.
DELTA_METRICS = ("ttft_ms_p50", "ttft_ms_p95", "tpot_ms_p50", "tpot_ms_p95", "e2e_ms_p50", "e2e_ms_p95",
                 "goodput_rps")
TRANSFER_COLUMNS = (
    "connector", "block_size", "kv_dtype", "kv_bytes_per_token", "stored_tokens", "handoffs", "handoffs_ok",
    "transfer_bytes_per_request", "transfer_bytes_total", "analytical_bytes_per_request",
    "bytes_relative_error_max", "bytes_agree", "baseline_prefill_ms_p50", "producer_e2e_ms_p50",
    "store_ms_p50", "load_ms_p50", "transfer_ms_p50", "transfer_ms_mean", "transfer_throughput_mb_s",
    "stall_ratio_p50", "stall_ratio_mean", "consumer_expected_kv_tokens", "consumer_external_kv_tokens",
    "consumer_local_compute_tokens", "consumer_loaded_all")
POINT_COLUMNS = (
    ["prompt_tokens", "concurrency", "mode", "status", "reason", "max_tokens", "gpus_used"]
    + ["n", "n_ok", "n_failed"]
    + [f"{m}_ms_{s}" for m in ("ttft", "tpot", "itl", "e2e") for s in ("mean", "p50", "p95", "p99")]
    + ["prompt_tokens_mean", "output_tokens_mean", "duration_s", "request_throughput_rps",
       "output_throughput_tok_s", "ttft_slo_ms", "tpot_slo_ms", "n_slo_met", "slo_attainment", "goodput_rps",
       "goodput_rps_per_gpu", "engine_ttft_ms_mean"]
    + list(TRANSFER_COLUMNS)
    + [f"delta_{m}" for m in DELTA_METRICS]
    + ["measured_on"])


@dataclass(frozen=True)
class Point:
    index: int
    prompt_tokens: int
    concurrency: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.prompt_tokens, self.concurrency)

    @property
    def label(self) -> str:
        return f"L={self.prompt_tokens} C={self.concurrency}"

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "concurrency": self.concurrency}


def sweep_points(cfg: dict[str, Any]) -> list[Point]:
    pts = [(int(n), int(c)) for n in cfg["prompt_tokens"] for c in cfg["concurrency_levels"]]
    return [Point(i, n, c) for i, (n, c) in enumerate(pts)]


def batched_tokens_budget(cfg: dict[str, Any], max_model_len: int) -> int:
    """``max_num_batched_tokens`` every E3 engine gets: the config's, else max_model_len."""
    return int(cfg.get("max_num_batched_tokens") or max_model_len)


def refusal_reason(point: Point, mode: str, *, max_tokens: int, max_model_len: int, budget: int,
                   connector: str | None = None, block_size: int | None = None) -> str | None:
    """Why ``point`` cannot be measured in ``mode`` (None when it can)."""
    n, c = point.prompt_tokens, point.concurrency
    if n + max_tokens > max_model_len:
        return (f"prompt {n} + max_tokens {max_tokens} tokens exceed max_model_len {max_model_len} "
                "(models.<profile>.max_model_len)")
    if mode != "disaggregated":
        return None
    if n > budget:
        return (f"prompt of {n} tokens > max_num_batched_tokens {budget}: vLLM would chunk its prefill and the "
                "KV connector would store only the first chunk (known vLLM bug; the consumer then fails with "
                "'shape mismatch'). Raise experiments.e3.max_num_batched_tokens to >= the prompt length")
    if n * c > budget:
        return (f"{c} concurrent prompts of {n} tokens ({n * c}) exceed max_num_batched_tokens {budget}: "
                "a prefill sharing the step's token budget would be chunked and stored incompletely "
                "(known vLLM bug). Raise experiments.e3.max_num_batched_tokens or lower the concurrency")
    if connector == "ExampleConnector" and block_size:
        stored = example_connector_stored_tokens(n, block_size)
        lookup = example_connector_lookup_tokens(n, block_size)
        if stored == 0:
            return (f"prompt of {n} tokens is not longer than one KV block ({block_size}) plus one token: "
                    "ExampleConnector would transfer nothing")
        if stored != lookup:
            return (f"n - 1 = {n - 1} is a multiple of the KV block size {block_size}: ExampleConnector stores "
                    f"{stored} tokens but the consumer looks up {lookup}, misses and recomputes the prefill")
    return None


class _PromptIds:
    """Distinct prompt prefixes across the whole run, so no two prompts share a KV folder."""

    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next


def build_requests(model: dict[str, Any], cfg: dict[str, Any], point: Point, prefix: str, count: int,
                   max_tokens: int, ids: _PromptIds, seed_offset: int = 0) -> list[GenerationRequest]:
    n = point.prompt_tokens
    out = []
    for i in range(count):
        seed = cfg["seed"] + seed_offset + 1000 * point.index + i
        prompt = token_id_prompt(n, seed, model, unique_prefix=ids.take())
        out.append(GenerationRequest(request_id=f"{prefix}-L{n}-c{point.concurrency}-{i}", prompt=prompt,
                                     max_tokens=max_tokens, prompt_tokens_target=n, temperature=0.0,
                                     seed=cfg["seed"]))
    return out


# -- rows -------------------------------------------------------------------------------------
def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000.0


def empty_row(point: Point, mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    row = {c: None for c in POINT_COLUMNS}
    row.update({"prompt_tokens": point.prompt_tokens, "concurrency": point.concurrency, "mode": mode,
                "max_tokens": cfg["max_tokens"], "ttft_slo_ms": cfg["ttft_slo_ms"], "tpot_slo_ms": cfg["tpot_slo_ms"],
                "measured_on": "client; consumer_* and engine_* columns: engine /metrics; bytes: shared folder"})
    return row


def failed_row(point: Point, mode: str, cfg: dict[str, Any], reason: str,
               gpus_used: int | None = None) -> dict[str, Any]:
    row = empty_row(point, mode, cfg)
    row.update({"status": "failed", "reason": reason, "gpus_used": gpus_used})
    return row


def latency_columns(row: dict[str, Any], records: Sequence[RequestRecord], duration_s: float | None,
                    cfg: dict[str, Any], gpus_used: int) -> None:
    row.update(latency_row(records))
    row["gpus_used"] = gpus_used
    if records and duration_s and duration_s > 0:
        g = goodput(records, duration_s, cfg["ttft_slo_ms"], cfg["tpot_slo_ms"])
        row.update({k: g[k] for k in ("duration_s", "request_throughput_rps", "output_throughput_tok_s",
                                       "n_slo_met", "slo_attainment", "goodput_rps")})
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


def transfer_columns(row: dict[str, Any], handoffs: Sequence, decode_engine: dict[str, Any] | None,
                     tolerance: float) -> None:
    """Per-point transfer accounting of a disaggregated row (medians over the point's handoffs)."""
    hs = list(handoffs)
    ok = [h for h in hs if h.ok]
    rows = [h.as_row(tolerance) for h in ok]
    row["handoffs"], row["handoffs_ok"] = len(hs), len(ok)
    moved = [h.bytes_moved for h in ok if h.bytes_moved is not None]
    analytical = [h.analytical_bytes for h in ok if h.analytical_bytes is not None]
    row["stored_tokens"] = ok[0].stored_tokens_expected if ok else None
    row["transfer_bytes_per_request"] = mean(moved)
    row["transfer_bytes_total"] = sum(moved) if moved else None
    row["analytical_bytes_per_request"] = mean(analytical)
    errs = [r["bytes_relative_error"] for r in rows if r["bytes_relative_error"] is not None]
    row["bytes_relative_error_max"] = max(errs, key=abs) if errs else None
    row["bytes_agree"] = combine_agreement([r["bytes_agree"] for r in rows])
    row["baseline_prefill_ms_p50"] = _ms(ok[0].baseline_prefill_s) if ok else None
    row["producer_e2e_ms_p50"] = _ms(percentile([h.producer_e2e_s for h in ok], 50))
    row["store_ms_p50"] = _ms(percentile([h.store_s for h in ok], 50))
    row["load_ms_p50"] = _ms(percentile([h.load_s for h in ok], 50))
    row["transfer_ms_p50"] = _ms(percentile([h.transfer_s for h in ok], 50))
    row["transfer_ms_mean"] = _ms(mean([h.transfer_s for h in ok]))
    tp = percentile([h.throughput_bytes_per_s for h in ok], 50)
    row["transfer_throughput_mb_s"] = None if tp is None else tp / 1e6
    row["stall_ratio_p50"] = percentile([h.stall_ratio for h in ok], 50)
    row["stall_ratio_mean"] = mean([h.stall_ratio for h in ok])
    expected = [h.lookup_tokens_expected for h in ok if h.lookup_tokens_expected is not None]
    row["consumer_expected_kv_tokens"] = sum(expected) if expected else None
    by_source = (decode_engine or {}).get("engine_prompt_tokens_by_source") or {}
    if by_source:
        row["consumer_external_kv_tokens"] = by_source.get("external_kv_transfer")
        row["consumer_local_compute_tokens"] = by_source.get("local_compute")
        if expected and row["consumer_external_kv_tokens"] is not None:
            row["consumer_loaded_all"] = row["consumer_external_kv_tokens"] >= sum(expected)


def add_deltas(rows: list[dict[str, Any]]) -> None:
    """On each ok disaggregated row: disaggregated - aggregated of DELTA_METRICS at the same point."""
    agg = {(r["prompt_tokens"], r["concurrency"]): r for r in rows if r["mode"] == "aggregated" and r["status"] == "ok"}
    for r in rows:
        if r["mode"] != "disaggregated" or r["status"] != "ok":
            continue
        a = agg.get((r["prompt_tokens"], r["concurrency"]))
        for m in DELTA_METRICS:
            r[f"delta_{m}"] = (r[m] - a[m]) if a is not None and r[m] is not None and a[m] is not None else None


def request_rows(records: Sequence[RequestRecord], mode: str, point: Point | None, label: str,
                 handoffs: Sequence = ()) -> list[dict[str, Any]]:
    by_id = {h.request_id: h for h in handoffs}
    out = []
    for r in records:
        row = {"mode": mode, "label": label, "point_prompt_tokens": point.prompt_tokens if point else None,
               "concurrency": point.concurrency if point else None, **r.as_row()}
        h = by_id.get(r.request_id)
        row["handoff_id"] = h.handoff_id if h else None
        row["producer_e2e_s"] = h.producer_e2e_s if h else None
        row["consumer_ttft_s"] = h.consumer_ttft_s if h else None
        out.append(row)
    return out


# -- engines ----------------------------------------------------------------------------------
def merge_serving(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """``serving`` with overrides: ``env`` dicts merge, ``extra_args`` lists append, the rest replace."""
    out = dict(base)
    out["env"] = dict(base.get("env") or {})
    out["extra_args"] = list(base.get("extra_args") or [])
    for o in overrides:
        for k, v in o.items():
            if k == "env":
                out["env"].update({kk: str(vv) for kk, vv in v.items() if vv is not None})
            elif k == "extra_args":
                out["extra_args"] += [str(a) for a in v]
            else:
                out[k] = v
    return out


def engine_servings(config: dict[str, Any], cfg: dict[str, Any], model: dict[str, Any], assignment: GpuAssignment,
                    storage: Path | None) -> dict[str, dict[str, Any]]:
    """``serving`` dicts of the aggregated, prefill and decode engines."""
    common: dict[str, Any] = {"max_num_batched_tokens": batched_tokens_budget(cfg, int(model["max_model_len"]))}
    if cfg.get("block_size"):
        common["extra_args"] = ["--block-size", str(cfg["block_size"])]
    base = merge_serving(config["serving"], common)
    out = {"aggregated": merge_serving(base, assignment.engine_settings("aggregated"))}
    connector = cfg["connector"]
    for pool in ("prefill", "decode"):
        transfer = connectors.kv_transfer_config(connector, pool, cfg, storage)
        out[pool] = merge_serving(base, assignment.engine_settings(pool),
                                  {"extra_args": connectors.kv_transfer_args(transfer),
                                   "env": connectors.connector_env(connector, pool, cfg)})
        out[pool]["_kv_transfer_config"] = transfer
    return out


def _strip_private(serving: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in serving.items() if not k.startswith("_")}


def start_engines(backends: list, parallel: bool) -> dict[str, str]:
    """Start backends (in threads when ``parallel``); returns {log name: error} of those that failed."""
    errors: dict[str, str] = {}

    def start(b) -> None:
        try:
            b.start()
        except EngineStartError as exc:
            errors[b.log_path.name] = str(exc)
        except Exception as exc:  # a start that crashes is a recorded failure too
            errors[b.log_path.name] = f"{type(exc).__name__}: {exc}"

    if not parallel:
        for b in backends:
            start(b)
            if errors:
                break
        return errors
    threads = [threading.Thread(target=start, args=(b,), daemon=True) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"


def _log(msg: str) -> None:
    print(f"e3: {msg}", file=sys.stderr, flush=True)


def _p50(values: Sequence[float | None]) -> float | None:
    return percentile(values, 50)


# -- the two phases ---------------------------------------------------------------------------
@dataclass
class ModeOutcome:
    rows: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    route_log: RouteLog
    engines: dict[str, Any]
    start_error: str | None = None
    extra: dict[str, Any] | None = None


def run_aggregated(model, serving, cfg, points, workload, baseline_reqs, warm_reqs, outdir: Path,
                   assignment: GpuAssignment, budget: int) -> tuple[ModeOutcome, dict[int, float | None]]:
    """Phase 1: one engine; each prompt length's isolated prefill baseline and every point's workload."""
    route_log = RouteLog("aggregated")
    backend = make_backend(model, serving, outdir / "engine_aggregated.log")
    outcome = ModeOutcome(rows=[], requests=[], route_log=route_log, engines={})
    baselines: dict[int, float | None] = {}
    gpus = assignment.gpus_used("aggregated")
    try:
        _log("starting the aggregated engine")
        errors = start_engines([backend], parallel=False)
        if errors:
            outcome.start_error = "aggregated engine did not start: " + _first_line(next(iter(errors.values())))
            outcome.rows = [failed_row(p, "aggregated", cfg, outcome.start_error, gpus) for p in points]
            return outcome, baselines
        session = EngineSession(backend, model, progress=False)
        sched = AggregatedScheduler(session, route_log, float(serving.get("request_timeout_s", 900)))
        real = backend.mode == "real"

        async def main() -> None:
            try:
                if warm_reqs:
                    warm = await sched.serve(warm_reqs, max(cfg["concurrency_levels"]), _warm_point(warm_reqs),
                                             label="warmup")
                    outcome.requests.extend(request_rows(warm.records, "aggregated", None, "warmup"))
                    if real:
                        await sched.prefill_baseline(warm_reqs[:1], 1, _warm_point(warm_reqs), label="warmup")
                for p in points:
                    reason = refusal_reason(p, "aggregated", max_tokens=cfg["max_tokens"],
                                            max_model_len=int(model["max_model_len"]), budget=budget)
                    if reason:
                        outcome.rows.append(failed_row(p, "aggregated", cfg, reason, gpus))
                        continue
                    if real and p.prompt_tokens not in baselines:
                        # Isolated prefills (one in flight): the prefill cost without any queueing.
                        base = await sched.prefill_baseline(baseline_reqs[p.prompt_tokens], 1,
                                                            {"prompt_tokens": p.prompt_tokens, "concurrency": 1})
                        baselines[p.prompt_tokens] = _p50([b.e2e_s for b in base if b.ok])
                    before = safe_snapshot(session)
                    served = await sched.serve(workload[p.key], p.concurrency, p.as_dict())
                    after = safe_snapshot(session)
                    row = empty_row(p, "aggregated", cfg)
                    latency_columns(row, served.records, served.duration_s, cfg, gpus)
                    if before is not None and after is not None:
                        row["engine_ttft_ms_mean"] = _ms(engine_summary(before, after).get("engine_ttft_mean_s"))
                    outcome.rows.append(row)
                    outcome.requests.extend(request_rows(served.records, "aggregated", p, "measured"))
                    _log(f"aggregated {p.label}: {row['status']}, TTFT p50 {_fmt(row['ttft_ms_p50'])} ms, "
                         f"TPOT p50 {_fmt(row['tpot_ms_p50'])} ms")
            finally:
                await sched.aclose()
                await session.aclose()

        asyncio.run(main())
    finally:
        backend.stop()
        outcome.engines["aggregated"] = backend.info()
    return outcome, baselines


def run_disaggregated(model, servings, cfg, points, workload, warm_reqs, outdir: Path, assignment: GpuAssignment,
                      budget: int, storage: Path | None, baselines) -> ModeOutcome:
    """Phase 2: a prefill (producer) and a decode (consumer) engine joined by the KV connector."""
    connector = cfg["connector"]
    route_log = RouteLog("disaggregated")
    outcome = ModeOutcome(rows=[], requests=[], route_log=route_log, engines={}, extra={})
    gpus = assignment.gpus_used("disaggregated")
    prefill_be = make_backend(model, _strip_private(servings["prefill"]), outdir / "engine_prefill.log")
    decode_be = make_backend(model, _strip_private(servings["decode"]), outdir / "engine_decode.log")
    if prefill_be.mode != "real":
        reason = f"the {prefill_be.mode} backend has no KV connector: disaggregation needs the real engine"
        outcome.start_error = reason
        outcome.rows = [failed_row(p, "disaggregated", cfg, reason, gpus) for p in points]
        for b in (prefill_be, decode_be):
            write_text(b.log_path, f"# not started: {reason}\n")
        return outcome
    try:
        # Two engines on one GPU start one after the other: vLLM's memory profiling of one start
        # would otherwise count the other's allocations.
        parallel = not assignment.shared_gpu
        _log(f"starting the prefill and decode engines ({'in parallel' if parallel else 'one after the other'}), "
             f"connector {connector}")
        errors = start_engines([prefill_be, decode_be], parallel=parallel)
        if errors:
            name, err = next(iter(errors.items()))
            outcome.start_error = f"{name.removesuffix('.log').replace('engine_', '')} engine did not start: " \
                                  f"{_first_line(err)}"
            outcome.rows = [failed_row(p, "disaggregated", cfg, outcome.start_error, gpus) for p in points]
            for b in (prefill_be, decode_be):
                if not b.log_path.exists():
                    write_text(b.log_path, f"# not started: {outcome.start_error}\n")
            return outcome
        prefill = EngineSession(prefill_be, model, progress=False)
        decode = EngineSession(decode_be, model, progress=False)
        info = cache_config_info(safe_snapshot(decode))
        block_size = int(cfg.get("block_size") or info.get("block_size") or 0) or None
        kv_dtype, kv_dtype_source = served_kv_dtype(info, prefill_be.log_text(), model.get("hf_config"))
        per_token = kv_bytes_per_token(model["hf_config"], kv_dtype)
        tolerance = float(cfg.get("bytes_tolerance", DEFAULT_TOLERANCE))
        broker = KvBroker(connector, per_token, block_size,
                          storage if connector == "ExampleConnector" else None)
        outcome.extra.update({"block_size": block_size, "block_size_source": "config" if cfg.get("block_size") else
                              "engine /metrics cache_config_info", "kv_dtype": kv_dtype,
                              "kv_dtype_source": kv_dtype_source, "kv_bytes_per_token": per_token,
                              "cache_config_info": info, "broker": broker})
        sched = DisaggregatedScheduler(prefill, decode, broker, cfg, route_log,
                                       float(servings["decode"].get("request_timeout_s", 900)))
        common = {"connector": connector, "block_size": block_size, "kv_dtype": kv_dtype,
                  "kv_bytes_per_token": per_token}

        async def main() -> None:
            try:
                valid_warm = [r for r in warm_reqs if not refusal_reason(
                    Point(-1, r.prompt_tokens_target, 1), "disaggregated", max_tokens=cfg["max_tokens"],
                    max_model_len=int(model["max_model_len"]), budget=budget, connector=connector,
                    block_size=block_size)]
                if valid_warm:
                    warm = await sched.serve(valid_warm, 1, _warm_point(valid_warm), label="warmup")
                    outcome.requests.extend(request_rows(warm.records, "disaggregated", None, "warmup", warm.handoffs))
                for p in points:
                    reason = refusal_reason(p, "disaggregated", max_tokens=cfg["max_tokens"],
                                            max_model_len=int(model["max_model_len"]), budget=budget,
                                            connector=connector, block_size=block_size)
                    if reason:
                        row = failed_row(p, "disaggregated", cfg, reason, gpus)
                        row.update(common)
                        outcome.rows.append(row)
                        continue
                    d_before = safe_snapshot(decode)
                    served: ServeResult = await sched.serve(workload[p.key], p.concurrency, p.as_dict(),
                                                            baseline_prefill_s=baselines.get(p.prompt_tokens))
                    d_after = safe_snapshot(decode)
                    d_eng = engine_summary(d_before, d_after) if d_before and d_after else None
                    row = empty_row(p, "disaggregated", cfg)
                    row.update(common)
                    latency_columns(row, served.records, served.duration_s, cfg, gpus)
                    transfer_columns(row, served.handoffs, d_eng, tolerance)
                    if d_eng:
                        row["engine_ttft_ms_mean"] = _ms(d_eng.get("engine_ttft_mean_s"))
                    outcome.rows.append(row)
                    outcome.requests.extend(request_rows(served.records, "disaggregated", p, "measured",
                                                         served.handoffs))
                    _log(f"disaggregated {p.label}: {row['status']}, TTFT p50 {_fmt(row['ttft_ms_p50'])} ms, "
                         f"{_fmt(row['transfer_bytes_per_request'], 0)} B/request moved "
                         f"(analytical {_fmt(row['analytical_bytes_per_request'], 0)}), "
                         f"transfer p50 {_fmt(row['transfer_ms_p50'])} ms")
            finally:
                await sched.aclose()
                await prefill.aclose()
                await decode.aclose()

        asyncio.run(main())
        outcome.extra["storage_total_bytes"] = broker.storage_total_bytes()
    finally:
        prefill_be.stop()
        decode_be.stop()
        outcome.engines["prefill"] = prefill_be.info()
        outcome.engines["decode"] = decode_be.info()
    return outcome


def _warm_point(reqs: Sequence[GenerationRequest]) -> dict[str, Any]:
    return {"prompt_tokens": reqs[0].prompt_tokens_target if reqs else None, "concurrency": None}


def _fmt(x: float | None, nd: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{nd}f}"


def _stamped(rows: list[dict[str, Any]], stamp: dict[str, Any], columns: Sequence[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(columns) if columns else None)
    for key, value in stamp.items():
        frame[key] = value
    return frame


# -- entry point --------------------------------------------------------------------------------
def run_standalone(config: dict, outdir: str | Path) -> dict:
    """Run E3 with its own engine starts (aggregated: 1; disaggregated: 2) and write its artifacts.

    Mirrors ``runner.run_experiment``: SIGTERM becomes an exception so every engine is stopped,
    NVML is sampled over the whole run, and ``run_metadata.json`` / ``gpu_stats.json`` are written.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model = resolve_model(model_profile(config))
    cfg = experiment_config(config, EXPERIMENT)
    if not model.get("hf_config"):
        raise ConfigError("models.<profile>.source: E3 needs the model's config.json for the analytical KV size")
    chash = experiment_hash(config, EXPERIMENT)
    run_id = make_run_id(chash)
    serving = config["serving"]
    connector = cfg["connector"]
    from ..backends.vllm_server import resolve_device

    device = resolve_device(serving) if serving.get("backend", "vllm") == "vllm" else "cpu"
    # A core binding the user set for every engine wins over the split.
    split_cfg = {**cfg, "cpu_core_split": cfg.get("cpu_core_split", True)
                 and "VLLM_CPU_OMP_THREADS_BIND" not in (serving.get("env") or {})}
    assignment = assign_gpus(device, discover_gpus() if device == "cuda" else [], split_cfg,
                             float(serving.get("gpu_memory_utilization", 0.9)))
    max_model_len = int(model["max_model_len"])
    budget = batched_tokens_budget(cfg, max_model_len)
    if serving.get("backend", "vllm") == "vllm":
        probe = connectors.kv_transfer_config(connector, "decode", cfg, "/nonexistent")
        unsupported = connectors.installed_support(connector, probe)
        if unsupported:
            raise ConfigError(f"config key 'experiments.e3.connector': {unsupported}; choose one the installed "
                              f"vLLM provides (ExampleConnector works everywhere)")

    points = sweep_points(cfg)
    ids = _PromptIds()
    workload = {p.key: build_requests(model, cfg, p, "e3", cfg["requests_per_point"], cfg["max_tokens"], ids)
                for p in points}
    lengths = sorted({p.prompt_tokens for p in points})
    baseline_reqs = {n: build_requests(model, cfg, Point(500 + i, n, 1), "base", cfg["requests_per_point"], 1, ids,
                                       seed_offset=500_000) for i, n in enumerate(lengths)}
    valid_lengths = sorted({p.prompt_tokens for p in points
                            if p.prompt_tokens + cfg["max_tokens"] <= max_model_len})
    warm_point = Point(999_999, valid_lengths[0] if valid_lengths else 16, 1)
    warm_reqs = build_requests(model, cfg, warm_point, "warmup", cfg["warmup_requests"], cfg["max_tokens"], ids,
                               seed_offset=900_000) if valid_lengths else []

    ctx = RunContext(experiment=EXPERIMENT, run_id=run_id, config_hash=chash,
                     backend_mode="real" if serving.get("backend", "vllm") == "vllm" else "simulated",
                     weights=model["weights"], model_id=model["source"], outdir=outdir)
    started = utc_now()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    sampler = NvmlSampler().start()
    storage: Path | None = None
    agg: ModeOutcome | None = None
    dis: ModeOutcome | None = None
    servings: dict[str, dict[str, Any]] = {}
    try:
        if connector == "ExampleConnector":
            storage = connectors.make_shared_storage(cfg, run_id)
        servings = engine_servings(config, cfg, model, assignment, storage)
        agg, baselines = run_aggregated(model, _strip_private(servings["aggregated"]), cfg, points, workload,
                                        baseline_reqs, warm_reqs, outdir, assignment, budget)
        dis = run_disaggregated(model, servings, cfg, points, workload, warm_reqs, outdir, assignment, budget,
                                storage, baselines)
    finally:
        connectors.remove_shared_storage(storage)
        gpu = sampler.stop()
        signal.signal(signal.SIGTERM, previous)

    extra = dis.extra or {}
    broker: KvBroker | None = extra.pop("broker", None)
    tolerance = float(cfg.get("bytes_tolerance", DEFAULT_TOLERANCE))
    rows = sorted(agg.rows + dis.rows, key=lambda r: (r["prompt_tokens"], r["concurrency"], MODES.index(r["mode"])))
    add_deltas(rows)
    stamp = ctx.stamp()
    write_csv(outdir / "mode_comparison.csv", _stamped(rows, stamp, POINT_COLUMNS))
    write_csv(outdir / "requests.csv", _stamped(agg.requests + dis.requests, stamp))
    handoff_rows = [h.as_row(tolerance) for h in (broker.handoffs if broker else [])]
    write_csv(outdir / "transfers.csv", _stamped(handoff_rows, stamp, _handoff_columns()))
    agg.route_log.write(outdir / "routes_aggregated.jsonl")
    dis.route_log.write(outdir / "routes_disaggregated.jsonl")
    for name in ("engine_aggregated.log", "engine_prefill.log", "engine_decode.log"):
        if not (outdir / name).exists():
            write_text(outdir / name, "# engine not started\n")

    summary = build_summary(ctx, cfg, rows, agg, dis, extra, assignment, servings, storage, handoff_rows, budget)
    write_json(outdir / "summary.json", summary)
    write_json(outdir / "gpu_stats.json", {**stamp, "nvml": gpu, "gpu_assignment": assignment.as_dict()})
    engines = {**agg.engines, **dis.engines}
    engine_block = {"mode": ctx.backend_mode, "device": device, "engines": engines,
                    "startup_s": {k: v.get("startup_s") for k, v in engines.items()}}
    meta = build_run_metadata(experiment=EXPERIMENT, config_hash=chash,
                              hash_inputs=hash_inputs(config, EXPERIMENT),
                              model={k: v for k, v in model.items() if k != "hf_config"},
                              backend_mode=ctx.backend_mode, engine=engine_block, notes=ctx.notes + assignment.notes,
                              started_at=started, finished_at=utc_now(), run_id=run_id)
    meta["model_config"] = model.get("hf_config")
    meta["gpu_assignment"] = assignment.as_dict()
    meta["result_summary"] = {"points": len(points), "rows_ok": sum(r["status"] == "ok" for r in rows),
                              "rows_failed": sum(r["status"] != "ok" for r in rows),
                              "bytes_agree": summary["transfer"]["bytes_agree_all"],
                              "handoffs": summary["transfer"]["handoffs"]}
    write_json(outdir / "run_metadata.json", meta)
    return meta


def _handoff_columns() -> list[str]:
    from ..disagg.broker import Handoff

    sample = Handoff("h", "r", 0, "c").as_row()
    return list(sample)


def build_summary(ctx: RunContext, cfg, rows, agg: ModeOutcome, dis: ModeOutcome, extra, assignment: GpuAssignment,
                  servings, storage: Path | None, handoff_rows, budget: int) -> dict[str, Any]:
    ok_handoffs = [h for h in handoff_rows if h["ok"]]
    moved = sum(h["bytes_moved"] or 0 for h in ok_handoffs)
    all_moved = sum(h["bytes_moved"] or 0 for h in handoff_rows)
    return {
        **ctx.stamp(),
        "workload": {k: cfg[k] for k in ("seed", "prompt_tokens", "concurrency_levels", "requests_per_point",
                                         "max_tokens", "warmup_requests")},
        "slo": {"ttft_slo_ms": cfg["ttft_slo_ms"], "tpot_slo_ms": cfg["tpot_slo_ms"], "measured_on": "client"},
        "max_num_batched_tokens": budget,
        "gpu_assignment": assignment.as_dict(),
        "connector": {
            "name": cfg["connector"],
            "kv_transfer_config": {pool: servings.get(pool, {}).get("_kv_transfer_config")
                                   for pool in ("prefill", "decode")},
            "shared_storage": str(storage) if storage else None,
            "shared_storage_removed": bool(storage) and not storage.exists(),
            **{k: extra.get(k) for k in ("block_size", "block_size_source", "kv_dtype", "kv_dtype_source",
                                         "kv_bytes_per_token", "cache_config_info")},
        },
        "transfer": {
            "handoffs": len(handoff_rows),
            "handoffs_ok": len(ok_handoffs),
            "bytes_moved_total": moved,
            "storage_total_bytes": extra.get("storage_total_bytes"),
            # Every file in the shared folder belongs to a handoff (warmups included).
            "storage_matches_handoffs": (extra.get("storage_total_bytes") == all_moved
                                         if extra.get("storage_total_bytes") is not None else None),
            "bytes_tolerance": float(cfg.get("bytes_tolerance", DEFAULT_TOLERANCE)),
            "bytes_agree_all": combine_agreement([h["bytes_agree"] for h in ok_handoffs]),
            "bytes_disagreements": [{"handoff_id": h["handoff_id"], "relative_error": h["bytes_relative_error"]}
                                    for h in ok_handoffs if h["bytes_agree"] is False],
            "definitions": {
                "bytes_moved": "sum of the connector's files for the prompt in the shared folder (headers included)",
                "analytical_bytes": "kv_bytes_per_token(config.json, served KV dtype) x ((n-1)//block)*block tokens",
                "store_ms": ("producer E2E (max_tokens=1, KV written) - median aggregated prefill-only E2E of the "
                             "same prompt length, one request in flight (at concurrency > 1 the producer's "
                             "queueing counts as store time)"),
                "load_ms": ("consumer TTFT: files read and injected, untransferred tail computed, first token "
                            "(upper bound)"),
                "transfer_ms": "store_ms + load_ms",
                "stall_ratio": "load_ms / consumer E2E",
            },
        },
        "modes": {
            "aggregated": {"start_error": agg.start_error, "engines": list(agg.engines)},
            "disaggregated": {"start_error": dis.start_error, "engines": list(dis.engines)},
        },
        "failed_rows": [{"mode": r["mode"], "prompt_tokens": r["prompt_tokens"], "concurrency": r["concurrency"],
                         "reason": r["reason"]} for r in rows if r["status"] != "ok"],
        "rows": len(rows),
        "rows_ok": sum(r["status"] == "ok" for r in rows),
    }
