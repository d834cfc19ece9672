"""One E2 point: its requests (closed loop, Poisson schedule or trace), its measurement between
/metrics scrapes and NVML readings, its ``concurrency.csv`` row, and a capacity probe's verdict."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from ..analysis.integrity import (SEND_LAG_QUANTILE, apply_status, check_point_row, check_send_lag,
                                  send_lag_stats)
from ..analysis.latency import THROUGHPUT_CI_METRICS, goodput, latency_row, meets_slo, poisson_schedule
from ..analysis.probe import ProbeRules, ProbeSample, Verdict, probe_requests, probe_schedule, probe_verdict
from ..analysis.saturation import SaturationMonitor
from ..backends.session import EngineSession
from ..records import GenerationRequest, RequestRecord
from ..traces import read_trace
from ..workload.checks import point_status, prompt_length_mismatches
from ..workload.columns import engine_columns, ttft_gap_columns
from ..workload.prompts import PromptFactory
from .e2_load import LOAD_COLUMNS, energy_reading, point_load_columns

MODES = ("concurrency", "rate", "capacity", "trace")
OPEN_LOOP = ("rate", "capacity", "trace")


def sweep_points(cfg: dict[str, Any]) -> list[tuple[str, float]]:
    return [("concurrency", int(c)) for c in cfg["concurrency_levels"]] + \
           [("rate", float(r)) for r in cfg["request_rates"]]


def requests_for_point(cfg: dict[str, Any], mode: str, level: float) -> int:
    """Requests a point sends: ``requests_per_point``, and for a closed-loop point at least
    ``min_waves`` times its concurrency. With fewer, every request of the point starts at once and
    the point measures one lock-step wave (all prefills queued together), not steady state."""
    n = int(cfg["requests_per_point"])
    if mode == "concurrency":
        n = max(n, int(cfg.get("min_waves", 1)) * int(level))
    return n


def point_row(mode: str, level: float, records: Sequence[RequestRecord], duration_s: float | None,
              engine: dict[str, Any], ttft_slo_ms: float, tpot_slo_ms: float, prompt_tokens: int,
              max_tokens: int | None, prefix_caching: bool, gpu_name: str | None = None,
              hf_config: dict[str, Any] | None = None, load: dict[str, Any] | None = None) -> dict[str, Any]:
    """The concurrency.csv row of one measured point, checked for plausibility (client against
    engine, both against the physical floors where the GPU is known). ``load``: its
    ``e2_load.point_load_columns`` (empty when not given)."""
    eng = engine_columns(engine, records)
    status, reason = point_status(records, eng["local_cache_hit_tokens"])
    row: dict[str, Any] = {"mode": mode, "level": level, "status": status, "reason": reason,
                           "prompt_tokens": prompt_tokens, "max_tokens": max_tokens}
    lat = latency_row(records)
    row.update(lat)
    if records and duration_s and duration_s > 0:
        g = goodput(records, duration_s, ttft_slo_ms, tpot_slo_ms)
        n = len(records)
        row.update({
            "duration_s": duration_s,
            "request_throughput_rps": g["request_throughput_rps"],
            "output_throughput_tok_s": g["output_throughput_tok_s"],
            "total_token_throughput_tok_s": g["total_token_throughput_tok_s"],
            "ttft_slo_ms": ttft_slo_ms, "tpot_slo_ms": tpot_slo_ms,
            "n_slo_met": g["n_slo_met"],
            "slo_attainment": g["slo_attainment"],
            "ttft_slo_attainment": sum(meets_slo(r, ttft_slo_ms, math.inf) for r in records) / n,
            "tpot_slo_attainment": sum(meets_slo(r, math.inf, tpot_slo_ms) for r in records) / n,
            "goodput_rps": g["goodput_rps"],
            **{k: v for k, v in g.items() if k.endswith(("_ci_low", "_ci_high"))},
            "throughput_ci_windows": g["throughput_ci_windows"],
        })
        if g["throughput_ci_note"]:
            row["stats_note"] = " | ".join(p for p in (row["stats_note"], g["throughput_ci_note"]) if p)
    else:
        row.update({k: None for k in ("duration_s", "request_throughput_rps", "output_throughput_tok_s",
                                      "total_token_throughput_tok_s", "n_slo_met", "slo_attainment",
                                      "ttft_slo_attainment", "tpot_slo_attainment", "goodput_rps",
                                      "throughput_ci_windows")})
        row.update({f"{m}_ci_{side}": None for m in THROUGHPUT_CI_METRICS for side in ("low", "high")})
        row.update({"ttft_slo_ms": ttft_slo_ms, "tpot_slo_ms": tpot_slo_ms})
    row["offered_rate_rps"] = level if mode in ("rate", "capacity") else None
    row["prompt_tokens_mismatches"] = len(prompt_length_mismatches(records))
    row["prefix_caching"] = prefix_caching
    row.update(eng)
    row.update(ttft_gap_columns(row["ttft_ms_mean"], eng["engine_ttft_ms_mean"]))
    row.update({k: (load or {}).get(k) for k in LOAD_COLUMNS})
    row.update(send_lag_columns(records))
    row["measured_on"] = "client; engine_* columns: engine /metrics; energy_*: NVML"
    findings = check_point_row(row, gpu_name, hf_config, records)
    if mode in OPEN_LOOP:
        findings.merge(check_send_lag([r.send_lag_s for r in records], schedule_mean_gap_s(records)))
    return apply_status(row, findings)


def send_lag_columns(records: Sequence[RequestRecord]) -> dict[str, float | None]:
    """The quantile the send-lag check judges (the column says p90) and the largest send lag of a
    point's scheduled requests (ms)."""
    assert SEND_LAG_QUANTILE == 0.9, "send_lag_ms_p90 names the quantile"
    stats = send_lag_stats([r.send_lag_s for r in records])
    if stats is None:
        return {"send_lag_ms_p90": None, "send_lag_ms_max": None}
    return {"send_lag_ms_p90": stats[0] * 1000.0, "send_lag_ms_max": stats[1] * 1000.0}


def schedule_mean_gap_s(records: Sequence[RequestRecord]) -> float | None:
    """Mean gap between planned sends: (last offset - first offset) / (sends - 1)."""
    offsets = sorted(r.scheduled_offset_s for r in records if r.scheduled_offset_s is not None)
    return (offsets[-1] - offsets[0]) / (len(offsets) - 1) if len(offsets) > 1 and offsets[-1] > offsets[0] else None


def capacity_verdict(row: dict[str, Any], records: Sequence[RequestRecord], rate_rps: float, rules: ProbeRules,
                     planned_requests: int) -> Verdict:
    """A capacity probe's verdict (``analysis.probe``): its records judged, or invalid when its row
    failed, is implausible (the checks' reason) or stopped early.

    One exception: a probe implausible only for client delivery (the client got its tokens later
    than the engine made them) is judged on its client-side records, and only a pass stands. Those
    latencies include the delay, so they overstate what the engine did: a pass is a lower bound the
    engine met, while any other verdict may be the client's and is invalid."""
    delivery = row["status"] == "implausible" and bool(row.get("client_delivery_only"))
    if row["status"] in ("failed", "implausible") and not delivery:
        return probe_verdict(ProbeSample.from_records([], rules.ttft_slo_ms, rules.tpot_slo_ms), rate_rps, rules,
                             not_judged=f"{row['status']}: {row['reason']}")
    if row.get("stopped_early"):
        return probe_verdict(ProbeSample.from_records([], rules.ttft_slo_ms, rules.tpot_slo_ms), rate_rps, rules,
                             not_judged=f"stopped early: {row.get('saturation_note')}")
    sample = ProbeSample.from_records(records, rules.ttft_slo_ms, rules.tpot_slo_ms)
    verdict = probe_verdict(sample, rate_rps, rules, planned_requests=planned_requests)
    if delivery and not verdict.passed:
        return probe_verdict(sample, rate_rps, rules, not_judged=(
            f"implausible: {row['reason']} (judged on the client's records it would be '{verdict.outcome}', which "
            "the delay may have caused)"))
    if delivery:
        return dataclasses.replace(verdict, reason=verdict.reason + "; the point is implausible only for client "
                                   "delivery, whose delay the client's latencies include: the pass stands")
    return verdict


def failed_point_row(mode: str, level: float, reason: str, cfg: dict[str, Any], prefix_caching: bool,
                     prompt_tokens: int | None = None) -> dict[str, Any]:
    row = point_row(mode, level, [], None, {}, cfg["ttft_slo_ms"], cfg["tpot_slo_ms"],
                    cfg["prompt_tokens"] if prompt_tokens is None else prompt_tokens, cfg["max_tokens"], prefix_caching)
    row.update({"status": "failed", "reason": reason})
    return row


def point_requests(factory: PromptFactory, mode: str, level: float, cfg: dict[str, Any], point_index: int,
                   prompt_tokens: int, length: float = 1.0) -> list[GenerationRequest]:
    """The requests of one point: a closed-loop batch, a seeded Poisson schedule, or the trace. A
    capacity probe sends ``probe.probe_requests`` (``length`` minimum windows) on a schedule whose
    steady window holds exactly ``level`` sends per second (``probe.probe_schedule``)."""
    label = f"{mode[0]}{level:g}" + ("" if mode != "capacity" else f"-p{prompt_tokens}-k{point_index}")
    if mode == "concurrency":
        return factory.requests(label, requests_for_point(cfg, mode, level), prompt_tokens, cfg["max_tokens"])
    if mode == "rate":
        n = requests_for_point(cfg, mode, level)
        offsets = poisson_schedule(n, float(level), cfg["seed"] + point_index)
        return factory.requests(label, n, prompt_tokens, cfg["max_tokens"], offsets=offsets)
    if mode == "capacity":
        rules = ProbeRules.from_config(cfg)
        n = probe_requests(float(level), rules, length)
        offsets = probe_schedule(n, float(level), cfg["seed"] + point_index, rules.trim)
        return factory.requests(label, n, prompt_tokens, cfg["max_tokens"], offsets=offsets)
    if mode == "trace":
        return [r for t in read_trace(cfg["trace_file"])
                for r in factory.requests("trace", 1, t.input_tokens, t.output_tokens, offsets=[t.arrival_offset_s])]
    raise ValueError(f"unknown E2 mode {mode!r}")


async def measure_point(session: EngineSession, factory: PromptFactory, mode: str, level: float,
                        cfg: dict[str, Any], point_index: int, prefix_caching: bool,
                        sample_kv_usage: bool = True, gpu_name: str | None = None, prompt_tokens: int | None = None,
                        probe_phase: str | None = None,
                        length: float = 1.0) -> tuple[dict[str, Any], list[RequestRecord]]:
    """Serve one point between two /metrics scrapes (and NVML energy readings) and build its row
    (also used by benchmarks/). Open-loop points are watched for over-saturation; a capacity probe
    is never stopped early (its verdict needs its whole window: ``analysis.probe``)."""
    prompt_tokens = cfg["prompt_tokens"] if prompt_tokens is None else prompt_tokens
    reqs = point_requests(factory, mode, level, cfg, point_index, prompt_tokens, length)
    monitor = SaturationMonitor(cfg["ttft_slo_ms"], cfg["tpot_slo_ms"], cfg.get("attainment_target", 0.9),
                                stop_enabled=cfg.get("stop_when_saturated", True) and mode != "capacity") \
        if mode in OPEN_LOOP else None
    # A CPU engine on a GPU host must not be charged the idle GPUs' energy.
    on_gpu = (session.backend.info() or {}).get("device") == "cuda"
    energy_before = energy_reading(on_gpu)
    measured = await session.measure(reqs, max_concurrency=int(level) if mode == "concurrency" else
                                     cfg.get("rate_max_concurrency"), use_schedule=mode in OPEN_LOOP,
                                     desc=f"e2 {mode}={level:g}", sample_kv_usage=sample_kv_usage,
                                     **({"monitor": monitor} if monitor is not None else {}))
    energy_after = energy_reading(on_gpu)
    records = measured["records"]
    trace = mode == "trace"
    row = point_row(mode, level, records, measured["duration_s"], measured["engine"], cfg["ttft_slo_ms"],
                    cfg["tpot_slo_ms"], None if trace else prompt_tokens, None if trace else cfg["max_tokens"],
                    prefix_caching, gpu_name, session.model.get("hf_config"))
    row.update(point_load_columns(
        records, measured["duration_s"], ttft_slo_ms=cfg["ttft_slo_ms"], tpot_slo_ms=cfg["tpot_slo_ms"],
        steady_state_trim=cfg.get("steady_state_trim", 0.1), monitor=monitor, energy_before=energy_before,
        energy_after=energy_after, probe_phase=probe_phase, tpot_ms_mean=row["tpot_ms_mean"],
        output_throughput_tok_s=row["output_throughput_tok_s"]))
    return row, records
