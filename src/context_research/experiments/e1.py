"""E1: prompt-length latency sweep (batch 1, one engine start for every length).

For each configured prompt length: unmeasured requests until the engine is steady (``warmup``:
at least ``warmup_requests``, at most ``warmup_max_requests``), then ``trials``
measured requests sent one at a time, all with exact-length never-shared token-id prompts and
``max_tokens`` output tokens (``ignore_eos``). Per length, ``results/e1/latency.csv`` gets one
row: client-side TTFT / TPOT / ITL / E2E (mean, p50, p95, p99), the engine's own view of the same
requests (``/metrics`` histogram deltas taken around the point), the client-minus-engine TTFT
gap, the prompt-length and prefix-cache checks, and, where the engine runs on a GPU the datasheet
table knows, the physical floors (TTFT: prefill FLOPs / peak FLOP/s; TPOT: bytes read per decode
step / memory bandwidth) with efficiency = floor / measured p50.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..analysis.compare_layout import CLIENT_METRICS, ENGINE_METRICS, Layout, not_warmup
from ..analysis.hardware import lookup_gpu
from ..analysis.integrity import apply_status, check_point_row
from ..analysis.latency import latency_row
from ..analysis.model_math import efficiency, tpot_floor_s, ttft_floor_s
from ..columns import Column, Table
from ..backends.session import EngineSession
from ..errors import ConfigError
from ..metadata import engine_gpu_name
from ..records import RequestRecord
from ..result_tables import (engine_point_columns, integrity_columns, latency_stat_columns, measured_on_column,
                             point_check_columns, request_record_columns, stamp_columns, status_columns,
                             ttft_gap_columns as declared_ttft_gap_columns)
from ..tables import fmt as _fmt
from ..workload.checks import died_in_flight, point_status, prompt_length_mismatches
from ..workload.columns import engine_columns, request_rows, sweep_summary, ttft_gap_columns
from ..workload.progress import PointProgress
from ..workload.prompts import PromptFactory, context_overflow
from ..warmup import WarmupRule, warm_session
from .declaration import ONE_ENGINE, Experiment, Figure
from .runner import RunContext

_MS = 1000.0


def floor_columns(hf_config: dict[str, Any] | None, prompt_tokens: int, gpu_name: str | None,
                  ttft_ms_p50: float | None, tpot_ms_p50: float | None) -> dict[str, Any]:
    """Physical floors of one point and efficiency = floor / measured client p50.

    TPOT's floor is taken at the first decode step (KV = the prompt): the step that reads the
    least, so it is a lower bound for every step of the request. Empty, with a note, when the
    engine is not on a known GPU or the model's config.json is unavailable.
    """
    spec = lookup_gpu(gpu_name)
    out: dict[str, Any] = {"gpu": gpu_name, "gpu_spec": spec.key if spec else None, "ttft_floor_ms": None,
                           "ttft_efficiency": None, "tpot_floor_ms": None, "tpot_efficiency": None}
    if gpu_name is None:
        out["floor_note"] = "engine not on a GPU: no datasheet floor applies"
    elif spec is None:
        out["floor_note"] = f"GPU {gpu_name!r} is not in analysis.hardware.GPU_SPECS"
    elif not hf_config:
        out["floor_note"] = "model config.json unavailable: no FLOP/byte count"
    else:
        ttft_floor = ttft_floor_s(hf_config, prompt_tokens, spec) * _MS
        tpot_floor = tpot_floor_s(hf_config, prompt_tokens, spec) * _MS
        out.update({
            "ttft_floor_ms": ttft_floor,
            "ttft_efficiency": efficiency(ttft_floor, ttft_ms_p50),
            "tpot_floor_ms": tpot_floor,
            "tpot_efficiency": efficiency(tpot_floor, tpot_ms_p50),
            "floor_note": f"{spec.name} datasheet ({spec.bf16_dense_tflops:g} TFLOP/s dense BF16, "
                          f"{spec.mem_bandwidth_gbs:g} GB/s); efficiency = floor / client p50",
        })
    return out


def point_row(prompt_tokens: int, max_tokens: int, records: Sequence[RequestRecord], engine: dict[str, Any],
              hf_config: dict[str, Any] | None, gpu_name: str | None, prefix_caching: bool) -> dict[str, Any]:
    """The latency.csv row of one measured prompt length."""
    row = latency_row(records, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    eng = engine_columns(engine, records)
    status, reason = point_status(records, eng["local_cache_hit_tokens"])
    ok = [r for r in records if r.ok]
    row = {"prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "status": status, "reason": reason,
           **{k: v for k, v in row.items() if k not in ("prompt_tokens", "max_tokens")}}
    row["prompt_tokens_min"] = min((r.prompt_tokens for r in ok if r.prompt_tokens is not None), default=None)
    row["prompt_tokens_max"] = max((r.prompt_tokens for r in ok if r.prompt_tokens is not None), default=None)
    row["prompt_tokens_mismatches"] = len(prompt_length_mismatches(records))
    row["prefix_caching"] = prefix_caching
    row.update(eng)
    row.update(ttft_gap_columns(row["ttft_ms_mean"], eng["engine_ttft_ms_mean"]))
    row.update(floor_columns(hf_config, prompt_tokens, gpu_name, row["ttft_ms_p50"], row["tpot_ms_p50"]))
    row["measured_on"] = "client; engine_* columns: engine /metrics"
    return apply_status(row, check_point_row(row, gpu_name, hf_config, records))


def failed_point_row(prompt_tokens: int, max_tokens: int, reason: str, prefix_caching: bool,
                     gpu_name: str | None = None, hf_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A point that was not (or could not be) measured: same columns, no numbers, the reason.

    ``hf_config`` is the model's config.json, so the floor note says what a measured point's
    would (a datasheet floor on a known GPU, not "config.json unavailable")."""
    row = point_row(prompt_tokens, max_tokens, [], {}, hf_config, gpu_name, prefix_caching)
    row.update({"status": "failed", "reason": reason})
    return row


def _check(cfg: dict[str, Any]) -> None:
    lengths = cfg["prompt_tokens"]
    if len(set(lengths)) != len(lengths):
        raise ConfigError("config key 'experiments.e1.prompt_tokens': lengths must be distinct")


async def run(session: EngineSession, cfg: dict, ctx: RunContext) -> dict:
    _check(cfg)
    model = session.model
    max_len, profile = int(model["max_model_len"]), model.get("name", "<profile>")
    max_tokens, trials = cfg["max_tokens"], cfg["trials"]
    prefix_caching = bool(session.backend.serving.get("enable_prefix_caching"))
    gpu_name = engine_gpu_name(session)
    factory = PromptFactory(model, cfg["seed"])
    rows: list[dict] = []
    requests: list[dict] = []
    warmups: list[dict] = []
    progress = PointProgress("e1", len(cfg["prompt_tokens"]))
    ctx.keep_on_failure("latency", rows)      # the points finished before an interrupt are kept
    ctx.keep_on_failure("requests", requests)
    for n in cfg["prompt_tokens"]:
        not_measurable = context_overflow(n, max_tokens, max_len, profile) or session.exit_reason()
        if not_measurable:
            rows.append(failed_point_row(n, max_tokens, not_measurable, prefix_caching, gpu_name,
                                         model.get("hf_config")))
            progress.point(f"{n} prompt tokens", "failed: " + not_measurable)
            continue
        # Warm-up until steady: the same shape as the measured requests, outside the /metrics window.
        warm, warmup = await warm_session(session, lambda k: factory.requests(f"warmup-{n}-{k}", 1, n, max_tokens),
                                             WarmupRule.from_cfg(cfg), desc=f"e1 warmup {n}", label=f"{n} tokens")
        requests += request_rows(warm, phase="warmup", prompt_tokens_point=n)
        measured = await session.measure(factory.requests(f"len{n}", trials, n, max_tokens), max_concurrency=1,
                                         desc=f"e1 {n} tokens")
        records = measured["records"]
        requests += request_rows(records, phase="measured", prompt_tokens_point=n)
        row = point_row(n, max_tokens, records, measured["engine"], model.get("hf_config"), gpu_name,
                        prefix_caching)
        row.update(warmup_requests_sent=warmup["requests"], warmup_settled=warmup["settled"])
        warmups.append(warmup)
        rows.append(died_in_flight(row, records, session.exit_reason()))
        progress.point(f"{n} prompt tokens", f"{row['status']}, TTFT p50 {_fmt(row['ttft_ms_p50'])} ms, "
                                             f"TPOT p50 {_fmt(row['tpot_ms_p50'])} ms")
        ctx.checkpoint()
    ctx.write_table("latency", ctx.frame(rows))
    ctx.write_table("requests", ctx.frame(requests))
    summary = {
        **ctx.stamp(),
        "workload": {"seed": cfg["seed"], "prompt_tokens": cfg["prompt_tokens"], "max_tokens": max_tokens,
                     "trials": trials, "warmup_requests": cfg["warmup_requests"],
                     "warmup_max_requests": cfg.get("warmup_max_requests"), "max_concurrency": 1,
                     "max_model_len": max_len, "prompt_kind": "token ids, unique prefix per request"},
        "prefix_caching": prefix_caching,
        "gpu": gpu_name,
        "floor_note": rows[0]["floor_note"] if rows else None,
        "warmup": warmups,  # per length: how many warm-up requests it took to settle
        **sweep_summary(rows, lambda r: {"prompt_tokens": r["prompt_tokens"]}),
    }
    ctx.write_json("summary", summary)
    session.raise_if_died()
    return {"points": summary["points"], "points_ok": summary["points_ok"], "prompt_tokens_mismatches": summary["prompt_tokens_mismatches"],
            "local_cache_hit_tokens": summary["local_cache_hit_tokens"]}


# -- tables (docs/columns.md) ---------------------------------------------------------------------

C = Column

E1_LATENCY = Table("e1/latency.csv", (
    C("prompt_tokens", "tokens", "config", "the point's prompt length (exact token-id prompts)", "prompt tokens"),
    C("max_tokens", "tokens", "config", "output tokens per request (ignore_eos)"),
    *status_columns(),
    *latency_stat_columns(),
    C("prompt_tokens_min", "tokens", "engine", "smallest server-counted prompt length among the successful requests"),
    C("prompt_tokens_max", "tokens", "engine", "largest server-counted prompt length among the successful requests"),
    *point_check_columns(),
    *engine_point_columns(),
    *declared_ttft_gap_columns(),
    C("gpu", "", "label", "NVML name of GPU index 0 of the host when the engine runs on CUDA (not read from the "
                          "engine's own device); empty on CPU"),
    C("gpu_spec", "", "label", "analysis.hardware.GPU_SPECS entry matched to gpu (datasheet figures the floors use)"),
    C("ttft_floor_ms", "ms", "analytical", "prefill FLOPs of the prompt (config.json) / the datasheet's dense BF16 "
                                           "peak: a lower bound, never measured", "TTFT floor"),
    C("ttft_efficiency", "ratio", "derived", "ttft_floor_ms / ttft_ms_p50 (client TTFT, HTTP included)", "TTFT eff."),
    C("tpot_floor_ms", "ms", "analytical", "bytes of the first decode step (all weights + the prompt's KV) / datasheet "
                                           "memory bandwidth", "TPOT floor"),
    C("tpot_efficiency", "ratio", "derived", "tpot_floor_ms / tpot_ms_p50 (client TPOT)", "TPOT eff."),
    C("floor_note", "", "label", "datasheet used for the floors, or why there is none"),
    C("warmup_requests_sent", "count", "client", "unmeasured requests of this length sent before its trials, until "
                                                 "the engine was steady (context_research.warmup: the last "
                                                 "warmup_window TTFTs within warmup_tolerance of their median)"),
    C("warmup_settled", "bool", "client", "whether that warm-up settled; False: it stopped at warmup_max_requests "
                                          "and the trials may still drift"),
    *integrity_columns(),
    measured_on_column("client; engine_* columns: engine /metrics"),
    *stamp_columns(),
), "one row per prompt length, batch 1")

E1_REQUESTS = Table("e1/requests.csv", (
    C("phase", "", "label", "warmup (unmeasured, outside the /metrics window) or measured"),
    C("prompt_tokens_point", "tokens", "config", "prompt length of the point the request belongs to"),
    *request_record_columns(),
    C("prompt_tokens_match", "bool", "derived", "server-counted prompt tokens == target; empty for a failed request"),
    *stamp_columns(),
), "one row per request")


EXPERIMENT = Experiment(
    name="e1", title="E1 — prompt-length latency sweep", category="E1 prompt-length latency",
    engines=ONE_ENGINE, body=run,
    outputs={"latency": "latency.csv", "requests": "requests.csv", "summary": "summary.json",
             "engine_log": "engine.log"},
    figures=(Figure("ttft", "ttft.svg", "e1_ttft.rst"), Figure("tpot", "tpot.svg", "e1_tpot.rst"),
             Figure("table", "latency.html", "e1_latency.rst")),
    report_module="context_research.experiments.e1_report",
    code=("experiments/e1.py", "analysis/findings.py", "analysis/integrity.py", "analysis/hardware.py", "analysis/model_math.py", "tables.py"),
    report_code=("experiments/e1_report.py",),
    tables=(E1_LATENCY, E1_REQUESTS),
    comparison=Layout("requests.csv", ("prompt_tokens_point",), CLIENT_METRICS + ENGINE_METRICS, keep=not_warmup("phase"),
                      points_table="latency.csv", points_table_columns=("prompt_tokens",)),
    row_checks=(("latency", check_point_row),),
)
