"""Measuring a serving engine's memory: what E5 and E6 both sample and read.

* ``MemoryProbe``: while a request is in flight, the peak ``vllm:kv_cache_usage_perc`` gauge, the
  peak RSS of the engine's process tree (psutil) and an NVML sampler of its own;
* ``engine_facts``: the engine's dtypes (from its config log line), KV block size, block count and
  exact pool bytes (``vllm:cache_config_info``) and its environment;
* the KV accounting both experiments share: tokens held at a request's longest moment and the
  allocated KV pool in bytes.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from .analysis.memory import GIB
from .engine_metrics import cache_config_info
from .gpu_stats import NvmlSampler

if TYPE_CHECKING:
    from .backends.session import EngineSession

# -- engine facts that are not in the memory-profile lines -------------------------------------

_ENGINE_INIT = re.compile(r"Initializing a V1 LLM engine.*", re.IGNORECASE)
_DTYPE = re.compile(r"(?<![_\w])dtype=(?:torch\.)?(\w+)")
_KV_DTYPE = re.compile(r"kv_cache_dtype=(\w+)")


def engine_dtypes(log_text: str) -> dict[str, str | None]:
    """Model and KV-cache dtypes as the engine logged its config ("Initializing a V1 LLM engine
    ... dtype=torch.bfloat16, ... kv_cache_dtype=auto"). vLLM-CPU downcasts float32 checkpoints
    to bfloat16, so the checkpoint's ``torch_dtype`` is not what the KV cache holds."""
    line = _ENGINE_INIT.search(log_text or "")
    text = line.group(0) if line else ""
    model = _DTYPE.search(text)
    kv = _KV_DTYPE.search(text)
    model_dtype = model.group(1) if model else None
    kv_dtype = kv.group(1) if kv else None
    effective = model_dtype if kv_dtype in (None, "auto") else kv_dtype
    return {"model_dtype": model_dtype, "kv_cache_dtype": kv_dtype, "kv_effective_dtype": effective}


def engine_facts(session: "EngineSession", log_text: str, parsed: dict) -> dict[str, Any]:
    """dtypes from the engine's config line; block size, block count and exact pool bytes from
    the ``vllm:cache_config_info`` labels; the engine's environment from the backend."""
    facts: dict[str, Any] = dict(engine_dtypes(log_text))
    info = cache_config_info(session.snapshot())
    facts["block_size"] = info.get("block_size")
    facts["cache_dtype_label"] = info.get("cache_dtype")
    facts["kv_cache_memory_bytes"] = info.get("kv_cache_memory_bytes")
    blocks = info.get("num_gpu_blocks")
    if not blocks and facts["block_size"] and parsed.get("kv_cache_tokens"):
        blocks = parsed["kv_cache_tokens"] // facts["block_size"]
    facts["num_blocks"] = blocks
    facts["env"] = session.backend.info().get("env", {})
    return facts


# -- KV accounting -----------------------------------------------------------------------------

def kv_tokens_held(prompt_tokens: int, output_tokens: int) -> int:
    """Tokens whose K/V sit in the cache at the request's last decode step: the prompt plus every
    output token but the last (it is sampled, never fed back)."""
    return prompt_tokens + max(output_tokens - 1, 0)


def allocated_kv_bytes(parsed: dict[str, Any], engine: dict[str, Any]) -> tuple[float | None, str | None]:
    """The KV pool in bytes: vLLM's exact ``kv_cache_memory_bytes`` label when it has one (CPU
    hosts, or an explicit --kv-cache-memory-bytes), else the log's GiB figure (2 decimals)."""
    if engine.get("kv_cache_memory_bytes"):
        return float(engine["kv_cache_memory_bytes"]), "metrics:cache_config_info.kv_cache_memory_bytes"
    if parsed.get("kv_cache_gib") is not None:
        return parsed["kv_cache_gib"] * GIB, f"log:{parsed.get('kv_cache_source')}"
    return None, None


# -- sampling while a request is in flight -----------------------------------------------------

def process_tree_rss_bytes(pid: int | None) -> int | None:
    """Resident set size summed over ``pid`` and all its descendants (shared pages count once per
    process, so this is an upper bound of the tree's footprint); None if the process is gone."""
    if pid is None:
        return None
    try:
        import psutil

        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except Exception:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:  # a worker can exit between listing and reading
            continue
    return total


def engine_pid(session: "EngineSession") -> int | None:
    proc = getattr(session.backend, "proc", None)
    return getattr(proc, "pid", None)


def nvml_peak(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """NvmlSampler summary -> ``{"peak_used_bytes", "total_bytes"}`` summed over devices; None on
    hosts without NVML."""
    if not summary or not summary.get("available"):
        return None
    devices = summary.get("devices") or []
    peaks = [d.get("memory_used_peak_bytes") for d in devices]
    totals = [d.get("memory_total_bytes") for d in devices]
    if not devices or any(p is None for p in peaks):
        return None
    return {"peak_used_bytes": sum(peaks), "total_bytes": sum(t or 0 for t in totals), "devices": len(devices)}


class MemoryProbe:
    """While a workload runs: peak ``vllm:kv_cache_usage_perc``, peak RSS of the engine's process
    tree and an NVML sampler of its own (so each point gets its own GPU peak)."""

    def __init__(self, session: "EngineSession", interval_s: float = 0.05):
        self.session = session
        self.interval_s = interval_s
        self.kv_usage_peak: float | None = None
        self.kv_samples = 0
        self.rss_peak_bytes: int | None = None
        self.nvml: dict[str, Any] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._sampler: NvmlSampler | None = None

    def _sample(self) -> tuple[float | None, int | None]:
        try:  # the one gauge alone: a full /metrics scrape every 50 ms would load the host it measures
            usage = (self.session.gauges(("vllm:kv_cache_usage_perc",)) or {}).get("vllm:kv_cache_usage_perc")
        except Exception:
            usage = None
        return usage, process_tree_rss_bytes(engine_pid(self.session))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            usage, rss = await loop.run_in_executor(None, self._sample)
            if usage is not None:
                self.kv_samples += 1
                self.kv_usage_peak = max(self.kv_usage_peak or 0.0, usage)
            if rss is not None:
                self.rss_peak_bytes = max(self.rss_peak_bytes or 0, rss)
            if self._stop.is_set():
                return
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    async def __aenter__(self) -> "MemoryProbe":
        self._sampler = NvmlSampler(interval_s=self.interval_s).start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._sampler is not None:
            self.nvml = self._sampler.stop()

    def nvml_peak(self) -> dict[str, Any] | None:
        return nvml_peak(self.nvml)
