"""E6: YaRN long-context stress past the model's native context length.

The served model is a derived folder (``<outdir>/model``, built by ``e6_model``): relative symlinks to the model's own
files plus a rewritten ``config.json`` whose RoPE block is YaRN-scaled by
``analysis.rope.normalize_rope_scaling`` (both the ``rope_type`` and the legacy ``type`` key,
``factor``, ``original_max_position_embeddings``; top-level ``max_position_embeddings`` =
original x factor). The engine serves it with ``max_model_len`` = ``experiments.e6.max_model_len``.

One request per target prompt length, one at a time, each recording TTFT, TPOT (client and
engine side) and memory (peak KV gauge, peak RSS of the engine process tree, NVML peak). A point
that fails (over the length limit, out of memory, engine crash, server error, a reply the client
could not read) is a row with
``status="failed"``, a ``failure_kind`` and the engine's reason. When
``kv_cache_dtype_fallback`` is set, the targets that failed for memory are retried on a second
engine started with ``--kv-cache-dtype <fallback>``; a fallback the engine refuses (e.g. fp8 KV
on a CPU without AVX-512) gives ``status="unsupported"`` rows with vLLM's reason.

Several engine starts (SEVERAL_ENGINES): the body asks the run for each engine.
"""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import pandas as pd

from ..analysis.compare_layout import CLIENT_METRICS, Layout, Metric, ok_status
from ..analysis.integrity import apply_status, check_request_row
from ..analysis.memory import GIB, kv_used_bytes, parse_vllm_memory_log
from ..backends.base import ServingBackend
from ..columns import Column, Table
from ..backends.session import EngineSession
from ..engine_log import engine_error_lines
from ..engine_metrics import engine_summary
from ..errors import ContextResearchError, EngineDiedError
from ..memory_probe import MemoryProbe, allocated_kv_bytes, engine_facts, kv_tokens_held
from ..metadata import engine_gpu_name
from ..prompts import token_id_prompt
from ..records import GenerationRequest
from ..result_tables import TPOT_MEANING, integrity_columns, stamp_columns
from ..warmup import WarmupRule, warm_session
from .declaration import SEVERAL_ENGINES, Experiment, Figure
from .e6_model import derive_rope_config, model_source_dir, write_derived_model
from .runner import ExperimentRun

# Failure kinds a smaller KV cache can fix: these are retried with kv_cache_dtype_fallback.
MEMORY_FAILURES = {"oom", "kv_cache_capacity", "engine_died"}


# -- failures ----------------------------------------------------------------------------------

# Checked in order: vLLM's KV-capacity refusal also says "decreasing `max_model_len`".
_FAILURE_PATTERNS = (
    ("kv_cache_capacity", r"KV cache is needed, which is larger than|No available memory for the cache blocks|"
                          r"insufficient.*KV cache|not enough KV cache"),
    ("oom", r"out of memory|OutOfMemoryError|Cannot allocate memory|MemoryError|std::bad_alloc"),
    ("over_length_limit", r"maximum context length|longer than the maximum model length|exceeds this limit|"
                          r"prompt is too long"),
    ("unsupported", r"NotImplementedError|is not supported|not implemented|Unsupported|requires x86 with"),
    ("timeout", r"TimeoutError|timed out"),
    # The server answered but the client could not read the answer: our side, not the engine's.
    ("client_error", r"LineTooLong|ClientPayloadError|JSONDecodeError|server sent no usage block"),
)


def classify_failure(text: str) -> str:
    """The failure kind of an error message or engine error lines (first pattern that matches)."""
    for kind, pattern in _FAILURE_PATTERNS:
        if re.search(pattern, text or "", re.IGNORECASE):
            return kind
    return "server_error"


def failure_row(target: int, reason: str, *, kind: str | None = None, pass_label: str = "primary",
                kv_cache_dtype: str | None = None, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recorded failed point: status ``failed`` (``unsupported`` when the engine refused the
    configuration itself), the failure kind and the reason; no measurement columns."""
    kind = kind or classify_failure(reason)
    return {"target_prompt_tokens": target, "pass": pass_label, "kv_cache_dtype": kv_cache_dtype,
            "status": "unsupported" if kind == "unsupported" else "failed", "failure_kind": kind,
            "reason": (reason or "").strip()[:1000] or kind, **(context or {}),
            "integrity_note": "not checked: no request was served"}


# -- one engine, all its points ----------------------------------------------------------------


async def measure_points(session: EngineSession, cfg: dict, targets: list[int], *, pass_label: str,
                         context: dict[str, Any], native: int) -> tuple[list[dict], dict[str, Any]]:
    """Serve each target once (after warmup), one at a time; rows and the engine facts."""
    log_text = session.backend.log_text()
    parsed = parse_vllm_memory_log(log_text)
    engine = engine_facts(session, log_text, parsed)
    served_len = re.search(r"Using max model len (\d+)", log_text)
    engine["engine_max_model_len"] = int(served_len.group(1)) if served_len else None
    kv_dtype = engine.get("kv_effective_dtype")
    pool_bytes, _ = allocated_kv_bytes(parsed, engine)
    # warm-up until steady (warmup.WarmupRule), stated in the engine facts
    _, engine["warmup"] = await warm_session(session, lambda k: [GenerationRequest(
        request_id=f"{pass_label}-warmup-{k}", prompt=token_id_prompt(64, 7_919 + k, session.model), max_tokens=4,
        prompt_tokens_target=64)], WarmupRule.from_cfg(cfg), label=pass_label)
    rows = []
    hf = session.model["hf_config"]
    gpu_name = engine_gpu_name(session)
    for i, target in enumerate(targets):
        point = {**context, "beyond_native": target > native, "extension_vs_native": target / native}
        if session.exit_reason():
            rows.append(failure_row(target, "engine process exited before this point: "
                                    + engine_error_lines(session.backend.log_text()), kind="engine_died",
                                    pass_label=pass_label, kv_cache_dtype=engine.get("kv_cache_dtype"), context=point))
            continue
        req = GenerationRequest(request_id=f"{pass_label}-{target}", prompt=token_id_prompt(
            target, cfg["seed"] + i, session.model, unique_prefix=i), max_tokens=cfg["max_tokens"],
            prompt_tokens_target=target, temperature=0.0, seed=cfg["seed"])
        async with MemoryProbe(session, cfg["poll_interval_s"]) as probe:
            before = session.snapshot()
            records, _ = await session.run_requests([req], max_concurrency=1, desc=f"E6 {target} tokens")
            after = session.snapshot()
        rec = records[0]
        eng = engine_summary(before, after) if before is not None and after is not None else {}
        nvml = probe.nvml_peak() or {}
        memory = {
            "kv_usage_peak": probe.kv_usage_peak,
            "kv_gauge_samples": probe.kv_samples,
            "kv_used_gauge_gib": probe.kv_usage_peak * pool_bytes / GIB
            if probe.kv_usage_peak is not None and pool_bytes else None,
            "kv_pool_gib": pool_bytes / GIB if pool_bytes else None,
            "process_rss_peak_gib": probe.rss_peak_bytes / GIB if probe.rss_peak_bytes else None,
            "nvml_peak_used_gib": nvml["peak_used_bytes"] / GIB if nvml else None,
            "nvml_total_gib": nvml["total_bytes"] / GIB if nvml else None,
        }
        if not rec.ok:
            died = session.exit_reason() is not None
            reason = rec.error + (" | engine exited: " + engine_error_lines(session.backend.log_text()) if died else "")
            kind = classify_failure(reason)
            if died and kind not in MEMORY_FAILURES:
                kind = "engine_died"
            rows.append(failure_row(target, reason, kind=kind, pass_label=pass_label,
                                    kv_cache_dtype=engine.get("kv_cache_dtype"), context={**point, **memory}))
            continue
        held = kv_tokens_held(rec.prompt_tokens, rec.output_tokens)
        row = {
            "target_prompt_tokens": target, "pass": pass_label, "kv_cache_dtype": engine.get("kv_cache_dtype"),
            "status": "ok", "failure_kind": None, "reason": None, **point,
            "prompt_tokens": rec.prompt_tokens, "output_tokens": rec.output_tokens,
            "ttft_s": rec.ttft_s, "tpot_s": rec.tpot_s, "e2e_s": rec.e2e_s,
            "engine_ttft_s": eng.get("engine_ttft_mean_s"), "engine_prefill_s": eng.get("engine_prefill_mean_s"),
            "engine_itl_s": eng.get("engine_itl_mean_s"), "engine_decode_s": eng.get("engine_decode_mean_s"),
            "kv_used_analytical_gib": kv_used_bytes(hf, held, kv_dtype_bytes=kv_dtype) / GIB if kv_dtype else None,
            **memory,
        }
        rows.append(apply_status(row, check_request_row(row, gpu_name, hf)))
    return rows, engine


def serve_pass(backend: ServingBackend, cfg: dict, targets: list[int], *, pass_label: str,
               context: dict[str, Any], native: int) -> dict[str, Any]:
    """Start ``backend`` (not yet started, on the served model), measure ``targets`` on it, always
    stop it. A start that fails turns every target into a failure row with the engine's reason."""
    requested_kv = _kv_dtype_arg(backend.serving)
    out: dict[str, Any] = {"pass": pass_label, "log": backend.log_path.name, "kv_cache_dtype_requested": requested_kv,
                           "targets": list(targets), "backend_mode": backend.mode}
    try:
        backend.start()
    except ContextResearchError as exc:
        # Classify on the engine's error lines only: its warnings say "not supported" harmlessly.
        reason = engine_error_lines(backend.log_text()) or str(exc).splitlines()[0]
        kind = classify_failure(reason)
        out.update(started=False, start_error=reason, start_failure_kind=kind, info=backend.info(), engine={},
                   rows=[failure_row(t, f"engine did not start: {reason}", kind=kind, pass_label=pass_label,
                                     kv_cache_dtype=requested_kv,
                                     context={**context, "beyond_native": t > native,
                                              "extension_vs_native": t / native}) for t in targets])
        return out
    try:
        session = EngineSession(backend, backend.model)

        async def main():
            try:
                return await measure_points(session, cfg, targets, pass_label=pass_label, context=context,
                                            native=native)
            finally:
                await session.aclose()

        rows, engine = asyncio.run(main())
    finally:
        backend.stop()
    out.update(started=True, info=backend.info(), engine={k: v for k, v in engine.items() if k != "env"}, rows=rows)
    return out


def _kv_dtype_arg(serving: dict) -> str:
    args = [str(a) for a in serving.get("extra_args", [])]
    for i, a in enumerate(args):
        if a == "--kv-cache-dtype" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--kv-cache-dtype="):
            return a.split("=", 1)[1]
    return "auto"


def fallback_targets(rows: list[dict]) -> list[int]:
    return [r["target_prompt_tokens"] for r in rows if r["status"] == "failed" and r["failure_kind"] in MEMORY_FAILURES]


# -- the experiment ----------------------------------------------------------------------------

def run(run: ExperimentRun) -> dict:
    """Write the derived model, serve every target on it, retry memory failures with the fallback
    KV dtype; the run's metadata records the served (derived) model and both passes."""
    cfg, ctx, base = run.cfg, run.ctx, run.model
    new_cfg, rope = derive_rope_config(cfg, base.get("hf_config"))
    model_dir = ctx.path("model_config").parent
    derived = write_derived_model(model_source_dir(base), new_cfg, model_dir, rope)
    served = {**base, "path": str(model_dir.resolve()), "hf_config": new_cfg,
              "max_model_len": cfg["max_model_len"], "derived_from": base["path"]}
    serving = copy.deepcopy(run.serving)
    ctx.notes.append(f"served a derived model folder {model_dir}: {rope['rope_type']} factor "
                     f"{rope['factor']:g} x original {rope['original_max_position_embeddings']} = "
                     f"max_position_embeddings {rope['max_position_embeddings']}, max_model_len {cfg['max_model_len']} "
                     f"(profile's {base.get('max_model_len')})")
    context = {"rope_type": rope["rope_type"], "rope_factor": rope["factor"],
               "original_max_position_embeddings": rope["original_max_position_embeddings"],
               "max_model_len": cfg["max_model_len"], **ctx.stamp()}
    native = rope["original_max_position_embeddings"]
    passes: list[dict[str, Any]] = []
    ctx.keep_on_failure("stress", lambda: pd.DataFrame([r for p in passes for r in p["rows"]]))
    passes.append(serve_pass(run.backend(served, serving, "engine_log"), cfg, cfg["targets"], pass_label="primary",
                             context=context, native=native))
    ctx.checkpoint()
    retry = fallback_targets(passes[0]["rows"])
    fallback = cfg["kv_cache_dtype_fallback"]
    if retry and fallback:
        ctx.notes.append(f"retrying {retry} with --kv-cache-dtype {fallback} after memory failures")
        fb_serving = {**serving, "extra_args": [*serving.get("extra_args", []), "--kv-cache-dtype", fallback]}
        passes.append(serve_pass(run.backend(served, fb_serving, "engine_fallback"), cfg, retry, pass_label=f"fallback-{fallback}", context=context,
                                 native=native))
    rows = [r for p in passes for r in p["rows"]]
    ctx.write_table("stress", pd.DataFrame(rows))
    final = final_outcomes(rows)
    engine_passes = [{k: v for k, v in p.items() if k != "rows"} for p in passes]
    derived_model = {"path": str(model_dir), **{k: v for k, v in derived.items() if k != "rope"}}
    ctx.write_json("summary", {
        **ctx.stamp(),
        "rope": rope,
        "derived_model": derived_model,
        "native_context": native,
        "max_model_len": cfg["max_model_len"],
        "profile_max_model_len": base.get("max_model_len"),
        "targets": cfg["targets"],
        "final_outcome": final,
        "passes": engine_passes,
        "measured_on": {"ttft_s/tpot_s/e2e_s": "client", "engine_*": "engine /metrics histograms",
                        "kv_usage_peak": "engine /metrics gauge (sampled)", "process_rss_peak_gib": "psutil",
                        "nvml_*": "nvml", "kv_used_analytical_gib": "derived from config.json and token counts"},
        "workload": {k: cfg[k] for k in ("targets", "max_tokens", "seed", "poll_interval_s",
                                         "kv_cache_dtype_fallback")},
    })
    run.engine_info = passes[0]["info"]
    run.metadata_model = served
    run.model_config = new_cfg
    run.metadata_extra = {"rope": rope, "derived_model": derived_model, "engine_passes": engine_passes}
    unmeasured = [t for t, o in final.items() if o["failure_kind"] == "engine_died"]
    if unmeasured:  # a death the fallback pass did not make up for: the rule fails, the rows stay
        raise EngineDiedError(f"the engine died: target(s) {', '.join(unmeasured)} were left unmeasured ("
                              + next(r["reason"] for r in rows if r.get("failure_kind") == "engine_died") + ")")
    return {"final_outcome": final, "rope_type": rope["rope_type"], "factor": rope["factor"],
            "max_position_embeddings": rope["max_position_embeddings"], "max_model_len": cfg["max_model_len"],
            "passes": [p["pass"] for p in passes]}


def final_outcomes(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per target: the last pass's status (a fallback's outcome supersedes the primary's)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out[str(r["target_prompt_tokens"])] = {"status": r["status"], "pass": r["pass"],
                                               "failure_kind": r.get("failure_kind")}
    return out


# -- tables (docs/columns.md) ---------------------------------------------------------------------

C = Column

E6_STRESS = Table("e6/stress.csv", (
    C("target_prompt_tokens", "tokens", "config", "prompt length asked for", "target tokens"),
    C("pass", "", "label", "primary, or fallback-<dtype> (retry of memory failures with a smaller KV dtype)",
      "engine pass"),
    C("kv_cache_dtype", "", "engine", "kv_cache_dtype from the engine's config log line (auto = model dtype); the "
                                      "requested value when the engine did not start", "KV dtype"),
    C("status", "", "label", "ok, failed, unsupported (the engine refused the configuration) or implausible (client "
                             "TPOT/TTFT disagree with the engine's own view or break a floor: analysis.integrity)",
      "status"),
    C("failure_kind", "", "label", "kv_cache_capacity, oom, over_length_limit, unsupported, timeout, client_error, "
                                   "engine_died or server_error", "failure"),
    C("reason", "", "label", "the request's error and the engine's error lines", "reason"),
    C("rope_type", "", "config", "RoPE scaling written into the derived config.json (yarn)"),
    C("rope_factor", "ratio", "config", "RoPE scaling factor"),
    C("original_max_position_embeddings", "tokens", "config", "the model's native (pre-scaling) context"),
    C("max_model_len", "tokens", "config", "max_model_len the engine was started with (experiments.e6.max_model_len)"),
    *stamp_columns(),
    C("beyond_native", "bool", "derived", "target_prompt_tokens > original_max_position_embeddings"),
    C("extension_vs_native", "ratio", "derived", "target_prompt_tokens / original_max_position_embeddings"),
    C("prompt_tokens", "tokens", "engine", "server-counted prompt tokens", "prompt tokens served"),
    C("output_tokens", "tokens", "engine", "server-counted output tokens"),
    C("ttft_s", "s", "client", "time to first token, send to first token-carrying streamed chunk", "client TTFT"),
    C("tpot_s", "s", "client", TPOT_MEANING, "client TPOT"),
    C("e2e_s", "s", "client", "send to last token-carrying streamed chunk"),
    C("engine_ttft_s", "s", "engine", "vLLM TTFT histogram mean over the point (its one request)", "engine TTFT"),
    C("engine_prefill_s", "s", "engine", "vLLM request prefill-time histogram mean over the point"),
    C("engine_itl_s", "s", "engine", "vLLM inter-token-latency histogram mean over the point", "engine ITL"),
    C("engine_decode_s", "s", "engine", "vLLM request decode-time histogram mean over the point"),
    C("kv_used_analytical_gib", "GiB", "analytical", "KV bytes/token (derived config.json, engine KV dtype) x (prompt "
                                                     "+ output - 1), not block-rounded", "KV held"),
    C("kv_usage_peak", "ratio", "engine", "peak of vllm:kv_cache_usage_perc (a fraction 0-1) sampled while the request "
                                          "ran", "KV gauge peak"),
    C("kv_gauge_samples", "count", "client", "/metrics scrapes that returned the KV gauge during the request"),
    C("kv_used_gauge_gib", "GiB", "derived", "kv_usage_peak x KV pool"),
    C("kv_pool_gib", "GiB", "engine", "KV pool: cache_config_info kv_cache_memory_bytes, else the engine log's figure"),
    C("process_rss_peak_gib", "GiB", "process", "peak resident set size of the engine's process tree (shared pages "
                                                "counted per process)", "engine RSS peak"),
    C("nvml_peak_used_gib", "GiB", "nvml", "sum over every GPU NVML sees of its peak used memory during the request; "
                                           "empty on CPU", "NVML peak"),
    C("nvml_total_gib", "GiB", "nvml", "sum of the total memory of every GPU NVML sees"),
    *integrity_columns(),
), "one row per target length and engine pass (one request each)")


EXPERIMENT = Experiment(
    name="e6", title="E6 — YaRN long-context stress", category="E6 YaRN long-context stress",
    engines=SEVERAL_ENGINES, body=run,
    outputs={"stress": "stress.csv", "summary": "summary.json", "engine_log": "engine.log",
             "model_config": "model/config.json"},
    # written only when a fallback pass runs, so no rule output
    optional_outputs={"engine_fallback": "engine_fallback.log"},
    figures=(Figure("stress", "stress.svg", "e6_stress.rst"),
             Figure("table", "stress.html", "e6_stress_table.rst")),
    report_module="context_research.experiments.e6_report",
    code=("experiments/e6.py", "experiments/e6_model.py", "analysis/memory.py", "analysis/rope.py", "memory_probe.py",
          "analysis/findings.py", "analysis/integrity.py", "analysis/hardware.py", "analysis/model_math.py"),
    report_code=("experiments/e6_report.py",),
    tables=(E6_STRESS,),
    # One request per point: the point table is the record.
    comparison=Layout("stress.csv", ("target_prompt_tokens", "pass"),
                      CLIENT_METRICS + (Metric("engine_ttft_ms", "engine_ttft_s", 1000.0, noise="engine_ttft_ms",
                                               engine_side=True),
                                        Metric("engine_itl_ms", "engine_itl_s", 1000.0, noise="engine_itl_ms",
                                               engine_side=True)),
                      keep=ok_status, points_table="stress.csv", points_table_columns=("target_prompt_tokens", "pass"),
                      single=True),
    row_checks=(("stress", check_request_row),),
    # Every experiments.e6 key shapes the derived model or what is served: none is analysis-only.
    analysis_keys=(),
)
