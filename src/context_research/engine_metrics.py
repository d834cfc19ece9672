"""Engine-side measurements from vLLM's Prometheus ``/metrics`` endpoint.

A snapshot is taken before and after a workload; histogram and counter deltas give the
engine's own view of the same requests the client timed. A histogram serves its exact mean
(Δsum / Δcount) and count only: a percentile interpolated inside its coarse buckets is not a
measured percentile, so none is computed. Per-request engine percentiles come from vLLM's
per-request metrics instead (``records.RequestRecord.engine_*_ms``, ``workload.columns.engine_ttft_percentiles``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .analysis.latency import histogram_delta_mean

# Histograms summarized per workload (engine-side latency decomposition).
ENGINE_HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "itl": "vllm:inter_token_latency_seconds",
    "e2e": "vllm:e2e_request_latency_seconds",
    "queue": "vllm:request_queue_time_seconds",
    "prefill": "vllm:request_prefill_time_seconds",
    "decode": "vllm:request_decode_time_seconds",
}
ENGINE_COUNTERS = {
    "preemptions": "vllm:num_preemptions_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
}


@dataclass
class MetricsSnapshot:
    """Samples keyed by (sample name, sorted label items)."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "MetricsSnapshot":
        snap = cls()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                snap.samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return snap

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of every sample called ``name`` whose labels include ``labels``; None if absent."""
        found = [v for (n, lab), v in self.samples.items()
                 if n == name and all(dict(lab).get(k) == val for k, val in labels.items())]
        return sum(found) if found else None

    def histogram(self, name: str) -> dict[str, Any] | None:
        """Cumulative buckets (le -> count, summed over label sets), sum and count."""
        buckets: dict[float, float] = {}
        for (n, lab), v in self.samples.items():
            if n == f"{name}_bucket":
                le = dict(lab).get("le")
                key = math.inf if le in ("+Inf", "Inf") else float(le)
                buckets[key] = buckets.get(key, 0.0) + v
        if not buckets:
            return None
        return {"buckets": dict(sorted(buckets.items())), "sum": self.total(f"{name}_sum") or 0.0,
                "count": self.total(f"{name}_count") or 0.0}

    def label_values(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, lab), v in self.samples.items():
            if n == name and label in dict(lab):
                key = dict(lab)[label]
                out[key] = out.get(key, 0.0) + v
        return out


def cache_config_info(snapshot: MetricsSnapshot | None) -> dict[str, Any]:
    """Labels of vLLM's ``vllm:cache_config_info`` gauge: block_size, num_gpu_blocks, cache_dtype and
    kv_cache_memory_bytes (set when the pool size was given explicitly, e.g. by VLLM_CPU_KVCACHE_SPACE)."""
    if snapshot is None:
        return {}
    for (name, labels), _ in snapshot.samples.items():
        if name == "vllm:cache_config_info":
            lab = dict(labels)
            out: dict[str, Any] = {"cache_dtype": lab.get("cache_dtype")}
            for key in ("block_size", "num_gpu_blocks", "num_cpu_blocks", "kv_cache_memory_bytes"):
                try:
                    out[key] = int(lab[key])
                except (KeyError, TypeError, ValueError):
                    out[key] = None
            return out
    return {}


def engine_summary(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, Any]:
    """Engine-side view of the requests served between two snapshots (seconds / counts): per
    histogram its Δcount and exact mean (Δsum / Δcount), per counter its Δ. No percentiles."""
    out: dict[str, Any] = {"measured_on": "engine"}
    for short, name in ENGINE_HISTOGRAMS.items():
        a = after.histogram(name)
        if a is None:
            out[f"engine_{short}_count"] = None
            continue
        b = before.histogram(name) or {"buckets": {}, "sum": 0.0, "count": 0.0}
        count = a["count"] - b["count"]
        if count <= 0:
            out[f"engine_{short}_count"] = 0
            continue
        out[f"engine_{short}_count"] = count
        out[f"engine_{short}_sum_s"] = a["sum"] - b["sum"]
        out[f"engine_{short}_mean_s"] = histogram_delta_mean(b["sum"], a["sum"], b["count"], a["count"])
    for short, name in ENGINE_COUNTERS.items():
        a, b = after.total(name), before.total(name)
        out[f"engine_{short}"] = None if a is None else a - (b or 0.0)
    by_source_after = after.label_values("vllm:prompt_tokens_by_source_total", "source")
    by_source_before = before.label_values("vllm:prompt_tokens_by_source_total", "source")
    out["engine_prompt_tokens_by_source"] = {k: v - by_source_before.get(k, 0.0)
                                             for k, v in by_source_after.items()}
    return out


# The gauges E2 watches while a point runs (backends.session.EngineSession, every
# WATCH_INTERVAL_S): the KV cache's fill (its peak is engine_kv_cache_usage_peak) and the engine's
# waiting queue (the saturation monitor's engine-side backlog).
WATCHED_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_waiting")


def gauge_path(names: tuple[str, ...] = WATCHED_GAUGES) -> str:
    """The path that asks vLLM's API server for ``names`` alone. vLLM serves ``/metrics`` twice
    (``vllm/entrypoints/serve/instrumentator/metrics.py``): prometheus-fastapi-instrumentator's
    route, which renders every metric (~600 lines, ~5 ms of the API server's CPU on the 2-core
    host, in a worker thread under the GIL its event loop needs) and ignores any query; and,
    under ``/metrics/``, prometheus_client's ``make_asgi_app``, whose ``name[]`` parameters
    (``restricted_registry``) collect and render only those metrics: 6 lines, ~1 ms. A server
    that ignores them sends everything, which ``parse_gauges`` reads the same."""
    from urllib.parse import urlencode

    return "/metrics/?" + urlencode([("name[]", n) for n in names])


def parse_gauges(text: str, names: tuple[str, ...] = WATCHED_GAUGES) -> dict[str, float]:
    """The value of each of ``names`` (summed over its label sets) in Prometheus exposition text;
    a name with no sample is absent. A line scan, not ``prometheus_client``'s parser: that costs
    ~19 ms of CPU per full scrape on the 2-core host, held under the GIL that the measuring
    client's event loop needs, while this reads the few lines wanted in microseconds."""
    wanted, out = set(names), {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        end = brace if brace != -1 and (space == -1 or brace < space) else space
        name = line[:end] if end != -1 else line
        if name not in wanted:
            continue
        rest = line[line.rfind("}") + 1:] if brace == end else line[end:]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


# Per-request engine fields of RequestRecord (vLLM's --enable-per-request-metrics), in ms.
PER_REQUEST_FIELDS = ("engine_ttft_ms", "engine_queue_ms", "engine_generation_ms", "engine_itl_ms")
NO_PER_REQUEST_METRICS = ("no per-request engine metrics in the replies (server without "
                          "--enable-per-request-metrics, vLLM < 0.26, or the simulated backend): engine "
                          "percentiles are left empty; histograms give means only")


def per_request_summary(records) -> dict[str, Any]:
    """The engine's per-request timings of ``records`` (ok ones with metrics): for each field its
    mean, p50, p95 and p99 in ms with their CIs, under the client's rules (``analysis.stats``:
    MIN_SAMPLES to be stated, MIN_INTERVAL for a CI; ``stats_note`` says what is left out), and
    how many requests carried metrics (0: see ``note``)."""
    from .analysis.stats import interval_part, small_sample_note, small_sample_part, summarize_with_ci

    carried = [r for r in records if r.ok and r.engine_ttft_ms is not None]
    out: dict[str, Any] = {"requests_with_metrics": len(carried), "measured_on": "engine (per request)"}
    missing, no_interval = [], []
    for name in PER_REQUEST_FIELDS:
        values = [getattr(r, name) for r in carried if getattr(r, name) is not None]
        summary = summarize_with_ci(values, name)
        out.update(summary)
        missing.append(small_sample_part(name, len(values)))
        no_interval.append(interval_part(name, summary, name, len(values)))
    out["stats_note"] = small_sample_note(missing, no_interval) if carried else None
    if not carried:
        out["note"] = NO_PER_REQUEST_METRICS
    return out


# NIXL's own transfer telemetry (vLLM's NixlPromMetrics), read as deltas over a workload.
NIXL_HISTOGRAMS = {"bytes": "vllm:nixl_bytes_transferred", "xfer": "vllm:nixl_xfer_time_seconds"}
NIXL_FAILED = "vllm:nixl_num_failed_transfers"


def nixl_telemetry(before: MetricsSnapshot | None, after: MetricsSnapshot | None) -> dict[str, Any]:
    """Bytes NIXL transferred, its transfers and their mean duration, and failed transfers, between
    two snapshots; every value None where the engine exports no ``vllm:nixl_*`` metric."""
    out: dict[str, Any] = {"nixl_bytes_transferred": None, "nixl_transfers": None, "nixl_xfer_ms_mean": None,
                           "nixl_failed_transfers": None}
    if before is None or after is None:
        return out
    empty = {"buckets": {}, "sum": 0.0, "count": 0.0}
    moved = after.histogram(NIXL_HISTOGRAMS["bytes"])
    if moved is not None:
        b = before.histogram(NIXL_HISTOGRAMS["bytes"]) or empty
        out["nixl_bytes_transferred"] = moved["sum"] - b["sum"]
        out["nixl_transfers"] = moved["count"] - b["count"]
    xfer = after.histogram(NIXL_HISTOGRAMS["xfer"])
    if xfer is not None:
        b = before.histogram(NIXL_HISTOGRAMS["xfer"]) or empty
        mean_s = histogram_delta_mean(b["sum"], xfer["sum"], b["count"], xfer["count"])
        out["nixl_xfer_ms_mean"] = mean_s * 1000.0 if mean_s is not None else None
    failed = after.total(NIXL_FAILED)
    if failed is not None:
        out["nixl_failed_transfers"] = failed - (before.total(NIXL_FAILED) or 0.0)
    return out
