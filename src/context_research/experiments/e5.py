"""E5: peak-memory decomposition per prompt length x serving mode.

Per engine start (constant across points), from vLLM's own log: weights, peak activation,
non-torch memory, CUDA-graph memory and the allocated KV cache (on CPU hosts: the KV space the
CPU worker reserved). Per point (one long request in flight at a time):

* KV actually used, analytically: bytes/token x tokens held at the request's longest moment
  (prompt + output - 1: the last sampled token is never written to the cache), exact and rounded
  up to whole blocks, as vLLM's paged allocator holds them;
* KV actually used, measured: the peak of ``vllm:kv_cache_usage_perc`` (sampled while the request
  is in flight) x the allocated KV cache; checked against the block-rounded analytical figure;
* NVML peak used / total memory during the point (GPU hosts) and the peak RSS of the engine's
  process tree (psutil; CPU hosts, and GPU hosts for host memory).

``mode`` is a column so disaggregated serving can add its rows: register a measuring coroutine
in MODE_MEASURERS (for E3's producer/consumer pair: one row per engine role, each from its own
engine log). Until then a "disaggregated" mode gives recorded ``status="unsupported"`` rows.

The probe and the engine facts are ``context_research.memory_probe``'s (E6 samples with them too).
"""

from __future__ import annotations

import math
from typing import Any, Awaitable, Callable

import pandas as pd

from ..analysis.compare_layout import Layout, Metric, ok_status
from ..analysis.integrity import apply_status, check_request_row
from ..analysis.memory import GIB, check_kv_usage, kv_used_bytes, memory_components_row, parse_vllm_memory_log
from ..analysis.model_math import kv_bytes_per_token, weight_bytes
from ..columns import Column, Table
from ..backends.session import EngineSession
from ..memory_probe import MemoryProbe, allocated_kv_bytes, engine_facts, kv_tokens_held
from ..metadata import engine_gpu_name
from ..prompts import token_id_prompt
from ..records import GenerationRequest
from ..result_tables import integrity_columns, stamp_columns
from ..workload.checks import died_in_flight
from ..warmup import WarmupRule, warm_session
from .declaration import ONE_ENGINE, Experiment, Figure
from .runner import RunContext


# -- the KV check and the row ------------------------------------------------------------------

def kv_check(hf_config: dict[str, Any], prompt_tokens: int, output_tokens: int, *, kv_dtype: str | None,
             block_size: int | None, kv_usage_peak: float | None, allocated_kv_bytes: float | None,
             tolerance: float = 0.02) -> dict[str, Any]:
    """Analytical KV bytes of one request vs vLLM's gauge peak x the allocated pool.

    vLLM allocates whole blocks and its gauge counts blocks, so the reference is the
    block-rounded figure at the request's longest moment. ``kv_check_verdict``:

    * ``agree``: |gauge x pool - block-rounded analytical| <= tolerance (relative);
    * ``partial``: the peak sample is a whole number of blocks (at the analytical bytes/token)
      short of the final count: it was taken before the last block was allocated (explained);
    * ``inconclusive``: a whole number of blocks below the prompt's own: a chunked-prefill sample, or
      a bytes/token error by a whole factor (e.g. the checkpoint's fp32 instead of the engine's bf16);
    * ``not_observed``: no sample saw the request (it ran between two scrapes; explained);
    * ``disagree``: anything else; the analytical model or the pool size is wrong.
    """
    held = kv_tokens_held(prompt_tokens, output_tokens)
    per_token = kv_bytes_per_token(hf_config, kv_dtype)
    exact = kv_used_bytes(hf_config, held, kv_dtype_bytes=kv_dtype)
    rounded = kv_used_bytes(hf_config, held, block_size=block_size, kv_dtype_bytes=kv_dtype) if block_size else None
    final_blocks = math.ceil(held / block_size) if block_size else None
    out: dict[str, Any] = {
        "kv_tokens_held": held,
        "kv_bytes_per_token_analytical": per_token,
        "kv_used_analytical_bytes": exact,
        "kv_used_block_rounded_bytes": rounded,
        "kv_blocks_analytical": final_blocks,
        "kv_usage_peak": kv_usage_peak,
        "kv_used_gauge_bytes": None,
        "kv_blocks_gauge": None,
        "kv_gauge_relative_error": None,
        "kv_check_agree": None,
        "kv_check_verdict": None,
        "kv_check_tolerance": tolerance,
        "kv_check_note": None,
    }
    if not allocated_kv_bytes:
        out.update(kv_check_verdict="not_observed", kv_check_note="allocated KV cache size unknown (not in the log)")
        return out
    if not kv_usage_peak:
        out.update(kv_check_verdict="not_observed", kv_check_agree=False,
                   kv_check_note="no gauge sample saw the request in flight (it ran between two /metrics scrapes)")
        return out
    reference = rounded if rounded is not None else exact
    check = check_kv_usage(reference, kv_usage_peak, allocated_kv_bytes, tolerance)
    measured = check["measured_bytes"]
    out.update(kv_used_gauge_bytes=measured, kv_gauge_relative_error=check["relative_error"],
               kv_check_agree=check["agree"])
    if block_size:
        out["kv_blocks_gauge"] = measured / (block_size * per_token)
    if check["agree"]:
        out.update(kv_check_verdict="agree", kv_check_note="gauge x pool equals the block-rounded analytical KV"
                   if rounded is not None else "block size unknown: agrees with unrounded tokens")
        return out
    blocks = out["kv_blocks_gauge"]
    whole = blocks is not None and round(blocks) >= 1 and abs(blocks - round(blocks)) <= tolerance * max(blocks, 1)
    prompt_blocks = math.ceil(prompt_tokens / block_size) if block_size else None
    if whole and prompt_blocks <= round(blocks) < final_blocks:
        out.update(kv_check_verdict="partial", kv_check_note=(
            f"peak sample = {round(blocks)} whole blocks of {block_size} tokens at {per_token} B/token, between the "
            f"prompt's {prompt_blocks} and the final {final_blocks}: sampled before the last block was allocated"))
    elif whole and round(blocks) < prompt_blocks:
        # A chunked prefill sample, or bytes/token off by a whole factor: cannot tell which.
        out.update(kv_check_verdict="inconclusive", kv_check_note=(
            f"peak sample = {round(blocks)} whole blocks, fewer than the prompt's {prompt_blocks}: taken during "
            f"prefill, or the analytical bytes/token is off by a whole factor"))
    else:
        out.update(kv_check_verdict="disagree", kv_check_note=(
            f"gauge x pool = {measured:.0f} B is neither the analytical {reference:.0f} B nor a whole number of "
            f"blocks below it"))
    return out


def memory_row(*, parsed: dict[str, Any], hf_config: dict[str, Any], engine: dict[str, Any], mode: str,
               prompt_tokens_target: int, record: dict[str, Any], kv_usage_peak: float | None,
               nvml: dict[str, Any] | None, rss_peak_bytes: int | None, tolerance: float,
               stamp: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One E5 CSV row for one served request.

    ``parsed``: parse_vllm_memory_log of the engine log. ``engine``: engine_facts (dtypes, block
    size, pool, env). ``record``: RequestRecord.as_row(). ``nvml``: nvml_peak() or None (CPU).
    """
    kv_dtype = engine.get("kv_effective_dtype")
    pool_bytes, pool_source = allocated_kv_bytes(parsed, engine)
    ok = record.get("error") is None
    prompt = record.get("prompt_tokens") if ok else None
    output = record.get("output_tokens") if ok else None
    check = (kv_check(hf_config, prompt, output, kv_dtype=kv_dtype, block_size=engine.get("block_size"),
                      kv_usage_peak=kv_usage_peak, allocated_kv_bytes=pool_bytes, tolerance=tolerance)
             if ok and prompt is not None and output is not None else {})
    row = memory_components_row(parsed, nvml, kv_used_analytical_bytes=check.get("kv_used_analytical_bytes"),
                                process_rss_bytes=rss_peak_bytes, mode=mode,
                                status="ok" if ok else "failed", reason=None if ok else record.get("error"),
                                prompt_tokens_target=prompt_tokens_target, prompt_tokens=prompt,
                                output_tokens=output)
    pool_tokens = parsed.get("kv_cache_tokens")
    log_pool = parsed.get("kv_cache_gib") * GIB if parsed.get("kv_cache_gib") is not None else None
    row.update({
        "weights_analytical_gib": _gib(weight_bytes(hf_config, engine["model_dtype"]))
        if engine.get("model_dtype") else None,
        "kv_used_block_rounded_gib": _gib(check.get("kv_used_block_rounded_bytes")),
        "kv_used_gauge_gib": _gib(check.get("kv_used_gauge_bytes")),
        "kv_usage_peak": kv_usage_peak,
        "kv_tokens_held": check.get("kv_tokens_held"),
        "kv_blocks_analytical": check.get("kv_blocks_analytical"),
        "kv_blocks_gauge": check.get("kv_blocks_gauge"),
        "kv_gauge_relative_error": check.get("kv_gauge_relative_error"),
        "kv_check_agree": check.get("kv_check_agree"),
        "kv_check_verdict": check.get("kv_check_verdict") if ok else "request_failed",
        "kv_check_tolerance": tolerance,
        "kv_check_note": check.get("kv_check_note") if ok else "request failed",
        "kv_pool_bytes": pool_bytes,
        "kv_pool_source": pool_source,
        "kv_bytes_per_token_analytical": check.get("kv_bytes_per_token_analytical")
        if ok else kv_bytes_per_token(hf_config, kv_dtype),
        # What vLLM's own two log numbers imply: pool bytes / pool tokens (2-decimal GiB rounding).
        "kv_bytes_per_token_engine": log_pool / pool_tokens if log_pool and pool_tokens else None,
        "kv_cache_tokens": pool_tokens,
        "kv_cache_device": parsed.get("kv_cache_device"),
        "kv_dtype": kv_dtype,
        "block_size": engine.get("block_size"),
        "num_kv_blocks": engine.get("num_blocks"),
        "cpu_kv_cache_gib": parsed.get("cpu_kv_cache_gib"),
        "cpu_kvcache_space_env_gib": _float((engine.get("env") or {}).get("VLLM_CPU_KVCACHE_SPACE")),
        "ttft_s": record.get("ttft_s"),
        "e2e_s": record.get("e2e_s"),
        **(extra or {}),
    })
    row.update(stamp)
    return row


def unsupported_rows(mode: str, lengths: list[int], reason: str, stamp: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"mode": mode, "status": "unsupported", "reason": reason, "prompt_tokens_target": n, **stamp}
            for n in lengths]


def _gib(x: float | None) -> float | None:
    return None if x is None else x / GIB


def _float(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


# -- the run -----------------------------------------------------------------------------------

Measurer = Callable[[EngineSession, dict, RunContext, dict, dict], Awaitable[list[dict]]]
# Verdicts worth another attempt: the gauge simply missed the request's last block.
_RETRY_VERDICTS = {"partial", "inconclusive", "not_observed"}


async def measure_aggregated(session: EngineSession, cfg: dict, ctx: RunContext, parsed: dict,
                             engine: dict) -> list[dict]:
    """One request at a time on the one engine (prefill and decode share it). A point whose gauge
    missed the last block is re-sent (fresh prompt, same length) up to ``kv_gauge_attempts``
    times; memory peaks are the maximum over attempts."""
    rows: list[dict] = []
    ctx.keep_on_failure("memory", lambda: pd.DataFrame(rows))  # the points finished before an interrupt
    gpu_name = engine_gpu_name(session)
    for i, n in enumerate(cfg["prompt_tokens"]):
        rss_peak, nvml, row = None, None, None
        for attempt in range(cfg["kv_gauge_attempts"]):
            req = GenerationRequest(
                request_id=f"aggregated-{n}-{attempt}",
                prompt=token_id_prompt(n, cfg["seed"] + 1000 * attempt + i, session.model,
                                       unique_prefix=1000 * attempt + i),
                max_tokens=cfg["max_tokens"], prompt_tokens_target=n, temperature=0.0, seed=cfg["seed"])
            async with MemoryProbe(session, cfg["poll_interval_s"]) as probe:
                records, _ = await session.run_requests([req], max_concurrency=1, desc=f"E5 {n} tokens")
            rss_peak = _max(rss_peak, probe.rss_peak_bytes)
            peak = probe.nvml_peak()
            if peak is not None and (nvml is None or peak["peak_used_bytes"] > nvml["peak_used_bytes"]):
                nvml = peak
            row = memory_row(parsed=parsed, hf_config=session.model["hf_config"], engine=engine,
                             mode="aggregated", prompt_tokens_target=n, record=records[0].as_row(),
                             kv_usage_peak=probe.kv_usage_peak, nvml=nvml, rss_peak_bytes=rss_peak,
                             tolerance=cfg["kv_check_tolerance"], stamp=ctx.stamp(),
                             extra={"kv_gauge_samples": probe.kv_samples, "attempts": attempt + 1})
            if row["kv_check_verdict"] not in _RETRY_VERDICTS:
                break
        rows.append(died_in_flight(apply_status(row, check_request_row(row, gpu_name, session.model["hf_config"])),
                                   records, session.exit_reason()))
        ctx.checkpoint()
    return rows


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


# E3 registers "disaggregated" here once its prefill/decode engines exist.
MODE_MEASURERS: dict[str, Measurer] = {"aggregated": measure_aggregated}


async def run(session: EngineSession, cfg: dict, ctx: RunContext) -> dict:
    log_text = session.backend.log_text()
    parsed = parse_vllm_memory_log(log_text)
    engine = engine_facts(session, log_text, parsed)
    if cfg["warmup_requests"]:  # until steady (warmup.WarmupRule); how long it took goes to run_metadata.json
        await warm_session(session, lambda k: [GenerationRequest(
            request_id=f"warmup-{k}", prompt=token_id_prompt(64, 10_007 + k, session.model), max_tokens=4,
            prompt_tokens_target=64)], WarmupRule.from_cfg(cfg), label="e5")
    rows: list[dict] = []
    for mode in cfg["modes"]:
        measurer = MODE_MEASURERS.get(mode)
        if measurer is None:
            rows += unsupported_rows(mode, cfg["prompt_tokens"], f"serving mode {mode!r} is not wired into E5: it "
                                     "needs E3's producer/consumer engines (a measurer in e5.MODE_MEASURERS)",
                                     ctx.stamp())
            continue
        rows += await measurer(session, cfg, ctx, parsed, engine)
    frame = pd.DataFrame(rows)
    ctx.write_table("memory", frame)
    verdicts = frame["kv_check_verdict"].value_counts().to_dict() if "kv_check_verdict" in frame else {}
    summary = {
        **ctx.stamp(),
        "measured_on": {"components": "engine log (vLLM memory profile)", "kv_usage": "engine /metrics gauge",
                        "kv_used_analytical": "derived: config.json shapes x engine KV dtype x served token counts",
                        "nvml": "nvml", "process_rss": "psutil (engine process tree)"},
        "engine": {k: v for k, v in engine.items() if k != "env"},
        "engine_env": engine["env"],
        "parsed_log": parsed,
        "points": len(frame),
        "ok_points": int((frame["status"] == "ok").sum()),
        "kv_check_verdicts": {str(k): int(v) for k, v in verdicts.items()},
        "workload": {k: cfg[k] for k in ("prompt_tokens", "max_tokens", "modes", "seed", "kv_check_tolerance",
                                         "kv_gauge_attempts", "poll_interval_s")},
    }
    ctx.write_json("summary", summary)
    session.raise_if_died()
    return {"points": summary["points"], "ok_points": summary["ok_points"],
            "kv_check_verdicts": summary["kv_check_verdicts"], "kv_cache_gib": parsed.get("kv_cache_gib"),
            "kv_cache_source": parsed.get("kv_cache_source")}


# -- tables (docs/columns.md) ---------------------------------------------------------------------

C = Column

_LOG = "engine log (vLLM's memory profile, 2-decimal GiB)"

E5_MEMORY = Table("e5/memory.csv", (
    C("mode", "", "config", "serving mode (aggregated; disaggregated rows are status unsupported)", "mode"),
    C("status", "", "label", "ok, failed (the request failed), unsupported (mode not wired) or implausible (a "
                             "latency breaks a floor or disagrees with the engine: analysis.integrity)", "status"),
    C("reason", "", "label", "why the row is not ok", "reason"),
    C("prompt_tokens_target", "tokens", "config", "prompt length asked for", "prompt tokens"),
    C("prompt_tokens", "tokens", "engine", "server-counted prompt tokens of the (last) attempt"),
    C("output_tokens", "tokens", "engine", "server-counted output tokens of the (last) attempt"),
    C("weights_gib", "GiB", "engine", f"model weights: the '... for weight' figure, else 'Model loading took X GiB' "
                                      f"({_LOG}; weights_source says which)", "vLLM weights"),
    C("peak_activation_gib", "GiB", "engine", f"peak activation memory of the profiling run ({_LOG})",
      "peak activation"),
    C("non_torch_gib", "GiB", "engine", f"non-torch memory ({_LOG}; vLLM >= 0.27: the consumed figure minus weights)",
      "non-torch"),
    C("cuda_graph_gib", "GiB", "engine", f"CUDA-graph memory: profile figure, else graph pool (actual), else capture "
                                         f"size ({_LOG})", "CUDA graphs"),
    C("kv_cache_allocated_gib", "GiB", "engine", f"KV pool: 'Current kv cache memory in use', else 'Available KV cache "
                                                 f"memory', else the CPU worker's KV space ({_LOG})", "KV allocated"),
    C("kv_used_analytical_gib", "GiB", "analytical", "KV bytes/token (config.json, engine KV dtype) x tokens held "
                                                     "(prompt + output - 1), not block-rounded", "KV used, analytical"),
    C("nvml_peak_used_gib", "GiB", "nvml", "sum over EVERY GPU NVML sees of its peak used memory during the point "
                                           "(other processes included; max over attempts); empty on CPU", "NVML peak"),
    C("nvml_total_gib", "GiB", "nvml", "sum of the total memory of every GPU NVML sees", "NVML total"),
    C("process_rss_gib", "GiB", "process", "PEAK resident set size of the engine's process tree during the point (max "
                                           "over attempts; shared pages counted per process)", "engine RSS peak"),
    C("weights_plus_non_torch_gib", "GiB", "engine",
      f"vLLM >= 0.27's 'consumed memory (weights + non-torch)' ({_LOG})"),
    C("cpu_non_kv_gib", "GiB", "engine", "vLLM-CPU's 'memory was consumed by non-kv usages' (engine log)"),
    C("weights_source", "", "label", "profile or model_loading: the log line weights_gib came from"),
    C("kv_cache_source", "", "label", "the log line kv_cache_allocated_gib came from"),
    C("weights_analytical_gib", "GiB", "analytical", "parameter count (config.json) x bytes of the engine's model "
                                                     "dtype", "analytical weights"),
    C("kv_used_block_rounded_gib", "GiB", "analytical", "kv_used_analytical rounded up to whole KV blocks, as the "
                                                        "paged allocator holds them", "KV used, block-rounded"),
    C("kv_used_gauge_gib", "GiB", "derived", "kv_usage_peak x kv_pool_bytes", "KV used, gauge"),
    C("kv_usage_peak", "ratio", "engine", "peak of vllm:kv_cache_usage_perc (a fraction 0-1) sampled every "
                                          "poll_interval_s while the request ran"),
    C("kv_tokens_held", "tokens", "derived", "server-counted prompt + output - 1 (the last sampled token is never "
                                             "cached)"),
    C("kv_blocks_analytical", "blocks", "analytical", "ceil(kv_tokens_held / block_size)"),
    C("kv_blocks_gauge", "blocks", "derived", "gauge bytes / (block_size x analytical bytes/token)"),
    C("kv_gauge_relative_error", "ratio", "derived", "(gauge bytes - block-rounded analytical) / block-rounded "
                                                     "analytical (unrounded when the block size is unknown)"),
    C("kv_check_agree", "bool", "derived", "|kv_gauge_relative_error| <= kv_check_tolerance"),
    C("kv_check_verdict", "", "derived", "agree, partial, inconclusive, not_observed, disagree or request_failed "
                                         "(kv_check_note explains)", "KV check"),
    C("kv_check_tolerance", "ratio", "config", "experiments.e5.kv_check_tolerance"),
    C("kv_check_note", "", "label", "the verdict's explanation"),
    C("kv_pool_bytes", "bytes", "engine", "KV pool: cache_config_info kv_cache_memory_bytes when exported (exact), "
                                          "else the log's GiB x 2^30"),
    C("kv_pool_source", "", "label", "where kv_pool_bytes came from"),
    C("kv_bytes_per_token_analytical", "bytes/token", "analytical", "2 x layers x kv_heads x head_dim x KV dtype bytes "
                                                                    "(config.json, engine KV dtype)"),
    C("kv_bytes_per_token_engine", "bytes/token", "derived", "the log's KV pool GiB / the log's KV cache tokens "
                                                             "(2-decimal GiB rounding)"),
    C("kv_cache_tokens", "tokens", "engine", "'KV cache size: N tokens' from the engine log"),
    C("kv_cache_device", "", "engine", "device word of that log line (GPU, CPU, ...)"),
    C("kv_dtype", "", "engine", "effective KV dtype from the engine's config log line (kv_cache_dtype, or the model "
                                "dtype when auto)"),
    C("block_size", "tokens", "engine", "KV block size (cache_config_info)"),
    C("num_kv_blocks", "blocks", "engine", "cache_config_info num_gpu_blocks, else kv_cache_tokens // block_size"),
    C("cpu_kv_cache_gib", "GiB", "engine", "vLLM-CPU's KV space 'set (X/Y) GiB for KV cache' (engine log)"),
    C("cpu_kvcache_space_env_gib", "GiB", "config", "VLLM_CPU_KVCACHE_SPACE the engine was started with"),
    C("ttft_s", "s", "client", "TTFT of the (last) attempt's request"),
    C("e2e_s", "s", "client", "E2E of the (last) attempt's request"),
    C("kv_gauge_samples", "count", "client", "/metrics scrapes that returned the KV gauge during the (last) attempt"),
    C("attempts", "count", "client", "requests sent for the point (a gauge that missed the last block is retried)"),
    *integrity_columns(),
    *stamp_columns(),
), "one row per prompt length and mode (one request in flight)")


EXPERIMENT = Experiment(
    name="e5", title="E5 — peak-memory decomposition", category="E5 peak-memory decomposition",
    engines=ONE_ENGINE, body=run,
    outputs={"memory": "memory.csv", "summary": "summary.json", "engine_log": "engine.log"},
    figures=(Figure("memory", "memory.svg", "e5_memory.rst"),
             Figure("table", "memory.html", "e5_memory_table.rst")),
    report_module="context_research.experiments.e5_report",
    code=("experiments/e5.py", "analysis/memory.py", "memory_probe.py", "analysis/findings.py", "analysis/integrity.py", "analysis/hardware.py", "analysis/model_math.py"),
    report_code=("experiments/e5_report.py",),
    tables=(E5_MEMORY,),
    # One request per point: the point table is the record.
    comparison=Layout("memory.csv", ("prompt_tokens_target", "mode"),
                      (Metric("ttft_ms", "ttft_s", 1000.0, noise="ttft_ms"), Metric("e2e_ms", "e2e_s", 1000.0, noise="e2e_ms"),
                       Metric("kv_cache_allocated_gib", "kv_cache_allocated_gib", lower_is_better=False),
                       Metric("peak_activation_gib", "peak_activation_gib"), Metric("weights_gib", "weights_gib"),
                       # what a KV format changes: bytes per token (vLLM's pool / its token capacity) and
                       # the pool's capacity in blocks at the same memory budget
                       Metric("kv_bytes_per_token_engine", "kv_bytes_per_token_engine"),
                       Metric("num_kv_blocks", "num_kv_blocks", lower_is_better=False)),
                      keep=ok_status, points_table="memory.csv", points_table_columns=("prompt_tokens_target", "mode"),
                      single=True),
    row_checks=(("memory", check_request_row),),
    # kv_check_tolerance is no analysis-only key: the verdict it gives decides whether a point
    # is re-sent to the engine (kv_gauge_attempts), so it changes what is served.
    analysis_keys=(),
)
