"""E6: YaRN long-context stress past the model's native context length.

The served model is a derived folder (``<outdir>/model``): relative symlinks to the model's own
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

Several engine starts, so this module provides ``run_standalone(config, outdir)``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.memory import GIB, kv_used_bytes, parse_vllm_memory_log
from ..analysis.rope import ROPE_KEYS, normalize_rope_scaling
from ..backends.base import make_backend
from ..config import experiment_config, experiment_hash, hash_inputs, model_profile
from ..engine_metrics import engine_summary, safe_snapshot
from ..errors import ConfigError, ContextResearchError
from ..gpu_stats import NvmlSampler
from ..hashing import sha256_file
from ..io import write_csv, write_json, write_text
from ..metadata import build_run_metadata, make_run_id, utc_now
from ..models import resolve_model
from ..prompts import token_id_prompt
from ..records import GenerationRequest
from .e5 import MemoryProbe, allocated_kv_bytes, engine_facts, kv_tokens_held
from .runner import RunContext, _raise_terminated
from .session import EngineSession

KEY = "experiments.e6"
# Failure kinds a smaller KV cache can fix: these are retried with kv_cache_dtype_fallback.
MEMORY_FAILURES = {"oom", "kv_cache_capacity", "engine_died"}
YARN_EXTRA_KEYS = ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim")


# -- the YaRN config ---------------------------------------------------------------------------

def requested_rope_type(block: dict[str, Any]) -> tuple[str, list[str]]:
    """The scaling type asked for under ``rope_type`` and/or the legacy ``type`` (default yarn),
    and which of the two keys were given. Both given and different -> ConfigError naming both."""
    given = [k for k in ("rope_type", "type") if block.get(k) is not None]
    if len(given) == 2 and block["rope_type"] != block["type"]:
        raise ConfigError(f"config keys '{KEY}.rope_scaling.rope_type' ({block['rope_type']!r}) and the legacy "
                          f"'{KEY}.rope_scaling.type' ({block['type']!r}) disagree; give one, or the same value")
    return (block[given[0]] if given else "yarn"), given


def native_context(hf_config: dict[str, Any]) -> tuple[int, str]:
    """The model's pre-scaling context: an existing RoPE block's original_max_position_embeddings,
    else config.json's max_position_embeddings."""
    for key in ROPE_KEYS:
        block = hf_config.get(key)
        if isinstance(block, dict) and block.get("original_max_position_embeddings"):
            return int(block["original_max_position_embeddings"]), f"config.json {key}.original_max_position_embeddings"
    if not hf_config.get("max_position_embeddings"):
        raise ConfigError(f"the model's config.json has no max_position_embeddings: set "
                          f"'{KEY}.rope_scaling.original_max_position_embeddings'")
    return int(hf_config["max_position_embeddings"]), "config.json max_position_embeddings"


def derive_rope_config(cfg: dict[str, Any], hf_config: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(new_hf_config, effective)`` for the E6 config block; ConfigError names the key when
    factor, original/maximum positions and max_model_len are inconsistent."""
    if not hf_config:
        raise ConfigError("models.<profile>.source: E6 needs the model's config.json (a local folder or the HF "
                          "cache) to derive a YaRN config")
    block = dict(cfg["rope_scaling"])
    rope_type, keys_given = requested_rope_type(block)
    factor = block.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 1:
        raise ConfigError(f"config key '{KEY}.rope_scaling.factor' must be a number > 1, got {factor!r}")
    if block.get("original_max_position_embeddings"):
        original, original_source = int(block["original_max_position_embeddings"]), \
            f"{KEY}.rope_scaling.original_max_position_embeddings"
    else:
        original, original_source = native_context(hf_config)
    scaled = int(original * factor)
    max_pos = cfg.get("max_position_embeddings")
    if max_pos is not None and max_pos != scaled:
        raise ConfigError(
            f"config key '{KEY}.max_position_embeddings' = {max_pos} must equal original_max_position_embeddings x "
            f"'{KEY}.rope_scaling.factor' = {original} x {factor:g} = {scaled} (or be left out)")
    max_len = cfg["max_model_len"]
    if max_len > scaled:
        raise ConfigError(
            f"config key '{KEY}.max_model_len' = {max_len} exceeds original_max_position_embeddings x "
            f"'{KEY}.rope_scaling.factor' = {original} x {factor:g} = {scaled}")
    try:
        new_cfg, effective = normalize_rope_scaling(hf_config, float(factor), original, max_len, rope_type)
    except ConfigError as exc:
        raise ConfigError(f"config key '{KEY}.rope_scaling': {exc}") from None
    extras = {k: block[k] for k in YARN_EXTRA_KEYS if block.get(k) is not None}
    for key in effective["rope_keys_written"]:
        new_cfg[key].update(extras)
    effective.update({
        "requested_type_keys": keys_given,
        "original_max_position_embeddings_source": original_source,
        "native_context": native_context(hf_config)[0],
        "extra_parameters": extras,
        "rope_blocks_written": {k: new_cfg[k] for k in effective["rope_keys_written"]},
    })
    return new_cfg, effective


def model_source_dir(model: dict[str, Any]) -> Path:
    """A local folder holding the served model's files (the HF cache snapshot for a hub id)."""
    local = Path(str(model["path"]))
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model["source"]), local_files_only=True))
    except Exception as exc:
        raise ConfigError(f"models.{model.get('name')}.source: E6 needs the model's files on disk to derive a "
                          f"YaRN folder; {model['source']!r} is neither a folder nor in the HF cache ({exc})") from None


def write_derived_model(source_dir: Path, hf_config: dict[str, Any], dest: Path,
                        effective: dict[str, Any]) -> dict[str, Any]:
    """Build ``dest``: relative symlinks to ``source_dir``'s files, the rewritten config.json, a
    tokenizer_config.json whose model_max_length covers the new length, and derived_from.json.
    Built beside ``dest`` and renamed into place, so a reader never sees half a folder."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    linked = []
    for entry in sorted(source_dir.iterdir()):
        if entry.name in ("config.json", "tokenizer_config.json", "manifest.json", "derived_from.json"):
            continue
        (tmp / entry.name).symlink_to(os.path.relpath(entry.resolve(), dest.resolve().parent / dest.name))
        linked.append(entry.name)
    write_text(tmp / "config.json", json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    tok_cfg = source_dir / "tokenizer_config.json"
    if tok_cfg.exists():
        tok = json.loads(tok_cfg.read_text())
        if int(tok.get("model_max_length") or 0) < effective["max_position_embeddings"]:
            tok["model_max_length"] = effective["max_position_embeddings"]
        write_text(tmp / "tokenizer_config.json", json.dumps(tok, indent=2, sort_keys=True) + "\n")
    info = {"source_dir": str(source_dir.resolve()), "linked_files": linked, "rope": effective,
            "config_sha256": sha256_file(tmp / "config.json")}
    write_json(tmp / "derived_from.json", info)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return info


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


_ERROR_LINE = re.compile(r"\b\w*(?:Error|Exception)\b:\s|out of memory", re.IGNORECASE)
_LOG_PREFIX = re.compile(r"^(?:\([^)]*\)\s+)?(?:[A-Z]+\s+\d\d-\d\d \d\d:\d\d:\d\d\s+\[[^\]]*\]\s*)?")
_WARNING_LINE = re.compile(r"\b(?:WARNING|INFO|DEBUG)\b \d")  # vLLM's "LEVEL MM-DD" prefix
# vLLM's wrappers around the root cause ("See root cause above"): kept only if nothing else is.
_WRAPPER_LINE = re.compile(r"initialization failed|See (?:stack trace|root cause)", re.IGNORECASE)


def engine_error_lines(log_text: str, n: int = 3) -> str:
    """The engine's reason for failing: the last ``n`` distinct "SomethingError: message" lines of
    its log, root causes preferred over vLLM's "initialization failed" wrappers; " | "-joined."""
    found: list[str] = []
    for line in (log_text or "").splitlines():
        if not _ERROR_LINE.search(line) or _WARNING_LINE.search(line):
            continue
        line = _LOG_PREFIX.sub("", line.strip())  # the same error is logged with and without a prefix
        if line not in found:
            found.append(line)
    causes = [line for line in found if not _WRAPPER_LINE.search(line)]
    return " | ".join((causes or found)[-n:])


def failure_row(target: int, reason: str, *, kind: str | None = None, pass_label: str = "primary",
                kv_cache_dtype: str | None = None, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recorded failed point: status ``failed`` (``unsupported`` when the engine refused the
    configuration itself), the failure kind and the reason; no measurement columns."""
    kind = kind or classify_failure(reason)
    return {"target_prompt_tokens": target, "pass": pass_label, "kv_cache_dtype": kv_cache_dtype,
            "status": "unsupported" if kind == "unsupported" else "failed", "failure_kind": kind,
            "reason": (reason or "").strip()[:1000] or kind, **(context or {})}


# -- one engine, all its points ----------------------------------------------------------------

def _engine_died(session: EngineSession) -> bool:
    proc = getattr(session.backend, "proc", None)
    return proc is not None and proc.poll() is not None


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
    for i in range(cfg["warmup_requests"]):
        await session.run_requests([GenerationRequest(request_id=f"{pass_label}-warmup-{i}", prompt=token_id_prompt(
            64, 7_919 + i, session.model), max_tokens=4, prompt_tokens_target=64)], desc="warmup")
    rows = []
    hf = session.model["hf_config"]
    for i, target in enumerate(targets):
        point = {**context, "beyond_native": target > native, "extension_vs_native": target / native}
        if _engine_died(session):
            rows.append(failure_row(target, "engine process exited before this point: "
                                    + engine_error_lines(session.backend.log_text()), kind="engine_died",
                                    pass_label=pass_label, kv_cache_dtype=engine.get("kv_cache_dtype"), context=point))
            continue
        req = GenerationRequest(request_id=f"{pass_label}-{target}", prompt=token_id_prompt(
            target, cfg["seed"] + i, session.model, unique_prefix=i), max_tokens=cfg["max_tokens"],
            prompt_tokens_target=target, temperature=0.0, seed=cfg["seed"])
        async with MemoryProbe(session, cfg["poll_interval_s"]) as probe:
            before = safe_snapshot(session)
            records, _ = await session.run_requests([req], max_concurrency=1, desc=f"E6 {target} tokens")
            after = safe_snapshot(session)
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
            died = _engine_died(session)
            reason = rec.error + (" | engine exited: " + engine_error_lines(session.backend.log_text()) if died else "")
            kind = classify_failure(reason)
            if died and kind not in MEMORY_FAILURES:
                kind = "engine_died"
            rows.append(failure_row(target, reason, kind=kind, pass_label=pass_label,
                                    kv_cache_dtype=engine.get("kv_cache_dtype"), context={**point, **memory}))
            continue
        held = kv_tokens_held(rec.prompt_tokens, rec.output_tokens)
        rows.append({
            "target_prompt_tokens": target, "pass": pass_label, "kv_cache_dtype": engine.get("kv_cache_dtype"),
            "status": "ok", "failure_kind": None, "reason": None, **point,
            "prompt_tokens": rec.prompt_tokens, "output_tokens": rec.output_tokens,
            "ttft_s": rec.ttft_s, "tpot_s": rec.tpot_s, "e2e_s": rec.e2e_s,
            "engine_ttft_s": eng.get("engine_ttft_mean_s"), "engine_prefill_s": eng.get("engine_prefill_mean_s"),
            "engine_itl_s": eng.get("engine_itl_mean_s"), "engine_decode_s": eng.get("engine_decode_mean_s"),
            "kv_used_analytical_gib": kv_used_bytes(hf, held, kv_dtype_bytes=kv_dtype) / GIB if kv_dtype else None,
            **memory,
        })
    return rows, engine


def serve_pass(served: dict, serving: dict, cfg: dict, targets: list[int], *, outdir: Path, log_name: str,
               pass_label: str, context: dict[str, Any], native: int) -> dict[str, Any]:
    """Start one engine, measure ``targets`` on it, always stop it. A start that fails turns every
    target into a failure row with the engine's reason."""
    backend = make_backend(served, serving, outdir / log_name)
    requested_kv = _kv_dtype_arg(serving)
    out: dict[str, Any] = {"pass": pass_label, "log": log_name, "kv_cache_dtype_requested": requested_kv,
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
        session = EngineSession(backend, served)

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

def run_standalone(config: dict, outdir: str | Path) -> dict:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cfg = experiment_config(config, "e6")
    base = resolve_model(model_profile(config))
    new_cfg, rope = derive_rope_config(cfg, base.get("hf_config"))
    derived = write_derived_model(model_source_dir(base), new_cfg, outdir / "model", rope)
    served = {**base, "path": str((outdir / "model").resolve()), "hf_config": new_cfg,
              "max_model_len": cfg["max_model_len"], "derived_from": base["path"]}
    chash = experiment_hash(config, "e6")
    run_id = make_run_id(chash)
    serving = copy.deepcopy(config["serving"])
    ctx = RunContext(experiment="e6", run_id=run_id, config_hash=chash,
                     backend_mode=make_backend(served, serving, outdir / "engine.log").mode,
                     weights=base["weights"], model_id=base["source"], outdir=outdir)
    ctx.notes.append(f"served a derived model folder {outdir / 'model'}: {rope['rope_type']} factor "
                     f"{rope['factor']:g} x original {rope['original_max_position_embeddings']} = "
                     f"max_position_embeddings {rope['max_position_embeddings']}, max_model_len {cfg['max_model_len']} "
                     f"(profile's {base.get('max_model_len')})")
    context = {"rope_type": rope["rope_type"], "rope_factor": rope["factor"],
               "original_max_position_embeddings": rope["original_max_position_embeddings"],
               "max_model_len": cfg["max_model_len"], **ctx.stamp()}
    native = rope["original_max_position_embeddings"]
    started = utc_now()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    sampler = NvmlSampler().start()
    passes = []
    try:
        passes.append(serve_pass(served, serving, cfg, cfg["targets"], outdir=outdir, log_name="engine.log",
                                 pass_label="primary", context=context, native=native))
        retry = fallback_targets(passes[0]["rows"])
        fallback = cfg["kv_cache_dtype_fallback"]
        if retry and fallback:
            ctx.notes.append(f"retrying {retry} with --kv-cache-dtype {fallback} after memory failures")
            fb_serving = {**serving, "extra_args": [*serving.get("extra_args", []), "--kv-cache-dtype", fallback]}
            passes.append(serve_pass(served, fb_serving, cfg, retry, outdir=outdir, log_name="engine_fallback.log",
                                     pass_label=f"fallback-{fallback}", context=context, native=native))
    finally:
        gpu = sampler.stop()
        signal.signal(signal.SIGTERM, previous)
    rows = [r for p in passes for r in p["rows"]]
    frame = pd.DataFrame(rows)
    write_csv(outdir / "stress.csv", frame)
    write_json(outdir / "gpu_stats.json", {**ctx.stamp(), "nvml": gpu})
    final = final_outcomes(rows)
    summary = {
        **ctx.stamp(),
        "rope": rope,
        "derived_model": {"path": str(outdir / "model"), **{k: v for k, v in derived.items() if k != "rope"}},
        "native_context": native,
        "max_model_len": cfg["max_model_len"],
        "profile_max_model_len": base.get("max_model_len"),
        "targets": cfg["targets"],
        "final_outcome": final,
        "passes": [{k: v for k, v in p.items() if k != "rows"} for p in passes],
        "measured_on": {"ttft_s/tpot_s/e2e_s": "client", "engine_*": "engine /metrics histograms",
                        "kv_usage_peak": "engine /metrics gauge (sampled)", "process_rss_peak_gib": "psutil",
                        "nvml_*": "nvml", "kv_used_analytical_gib": "derived from config.json and token counts"},
        "workload": {k: cfg[k] for k in ("targets", "max_tokens", "seed", "poll_interval_s",
                                         "kv_cache_dtype_fallback")},
    }
    write_json(outdir / "summary.json", summary)
    primary = passes[0]
    meta = build_run_metadata(
        experiment="e6", config_hash=chash, hash_inputs=hash_inputs(config, "e6"),
        model={k: v for k, v in served.items() if k != "hf_config"}, backend_mode=primary["backend_mode"],
        engine=primary["info"], notes=ctx.notes, started_at=started, finished_at=utc_now(), run_id=run_id)
    meta["model_config"] = new_cfg
    meta["rope"] = rope
    meta["derived_model"] = summary["derived_model"]
    meta["engine_passes"] = [{k: v for k, v in p.items() if k != "rows"} for p in passes]
    meta["result_summary"] = {"final_outcome": final, "rope_type": rope["rope_type"], "factor": rope["factor"],
                              "max_position_embeddings": rope["max_position_embeddings"],
                              "max_model_len": cfg["max_model_len"], "passes": [p["pass"] for p in passes]}
    write_json(outdir / "run_metadata.json", meta)
    return meta


def final_outcomes(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per target: the last pass's status (a fallback's outcome supersedes the primary's)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out[str(r["target_prompt_tokens"])] = {"status": r["status"], "pass": r["pass"],
                                               "failure_kind": r.get("failure_kind")}
    return out

