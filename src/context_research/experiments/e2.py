"""E2: concurrency / arrival-rate sweep with SLO goodput (one engine start for every point).

Fixed prompt and output lengths; two kinds of points:

* ``concurrency``: closed loop, at most ``level`` requests in flight, the next one sent as soon
  as one finishes (``vllm bench serve --max-concurrency``);
* ``rate``: open loop, requests sent at the offsets of a seeded Poisson process of ``level``
  requests/s whether or not earlier ones finished (``vllm bench serve --request-rate``).

Per point, ``results/e2/concurrency.csv`` gets request and output-token throughput, client-side
TTFT / TPOT / E2E (mean, p50, p95, p99), SLO attainment and goodput (requests/s meeting BOTH the
TTFT and the TPOT SLO, DistServe's definition), the engine's preemptions and peak KV-cache usage,
and the engine's own TTFT next to the client's.

The SLOs are analysis keys: the run writes the measured point rows (``points.json``) and every
request (``requests.csv``); ``analyse`` (rule ``e2_analysis``) applies the SLOs to those records
and writes ``concurrency.csv`` and ``summary.json``, so a new SLO needs no engine start.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ..analysis.integrity import apply_status, check_point_row
from ..analysis.latency import THROUGHPUT_CI_METRICS, goodput, latency_row, meets_slo, poisson_schedule
from ..io import read_json, write_json
from ..records import RequestRecord
from ..tables import fmt as _f
from ..workload import (PointProgress, PromptFactory, context_overflow, engine_columns, engine_gpu_name,
                        point_status, prompt_length_mismatches, request_rows, sweep_summary, ttft_gap_columns)
from .declaration import ONE_ENGINE, Experiment, Figure
from .runner import RunContext
from .session import EngineSession

MODES = ("concurrency", "rate")


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


# The concurrency.csv columns that depend on the SLOs (analysis keys): rule e2_analysis fills them
# from the saved requests; the run leaves them empty.
SLO_COLUMNS = ("ttft_slo_ms", "tpot_slo_ms", "n_slo_met", "slo_attainment", "ttft_slo_attainment",
               "tpot_slo_attainment", "goodput_rps", "goodput_rps_ci_low", "goodput_rps_ci_high")


def slo_columns(records: Sequence[RequestRecord], duration_s: float | None, ttft_slo_ms: float | None,
                tpot_slo_ms: float | None) -> dict[str, Any]:
    """A point's SLO attainment and goodput; empty (but for the SLOs given) without SLOs or records."""
    out: dict[str, Any] = dict.fromkeys(SLO_COLUMNS)
    out.update(ttft_slo_ms=ttft_slo_ms, tpot_slo_ms=tpot_slo_ms)
    if ttft_slo_ms is None or tpot_slo_ms is None or not records or not duration_s or duration_s <= 0:
        return out
    g = goodput(records, duration_s, ttft_slo_ms, tpot_slo_ms)
    n = len(records)
    out.update({
        "n_slo_met": g["n_slo_met"],
        "slo_attainment": g["slo_attainment"],
        "ttft_slo_attainment": sum(meets_slo(r, ttft_slo_ms, math.inf) for r in records) / n,
        "tpot_slo_attainment": sum(meets_slo(r, math.inf, tpot_slo_ms) for r in records) / n,
        "goodput_rps": g["goodput_rps"],
        "goodput_rps_ci_low": g["goodput_rps_ci_low"],
        "goodput_rps_ci_high": g["goodput_rps_ci_high"],
    })
    return out


def point_row(mode: str, level: float, records: Sequence[RequestRecord], duration_s: float | None,
              engine: dict[str, Any], ttft_slo_ms: float | None, tpot_slo_ms: float | None, prompt_tokens: int,
              max_tokens: int, prefix_caching: bool, gpu_name: str | None = None,
              hf_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The concurrency.csv row of one measured point, checked for plausibility (client against
    engine, both against the physical floors where the GPU is known). SLOs None (the engine run):
    the SLO columns stay empty for ``slo_columns`` to fill later."""
    eng = engine_columns(engine, records)
    status, reason = point_status(records, eng["local_cache_hit_tokens"])
    row: dict[str, Any] = {"mode": mode, "level": level, "status": status, "reason": reason,
                           "prompt_tokens": prompt_tokens, "max_tokens": max_tokens}
    lat = latency_row(records)
    row.update(lat)
    if records and duration_s and duration_s > 0:
        g = goodput(records, duration_s, math.inf, math.inf)  # the SLO-free rates and their CIs
        row.update({
            "duration_s": duration_s,
            "request_throughput_rps": g["request_throughput_rps"],
            "output_throughput_tok_s": g["output_throughput_tok_s"],
            "total_token_throughput_tok_s": g["total_token_throughput_tok_s"],
            **{k: v for k, v in g.items() if k.endswith(("_ci_low", "_ci_high")) and not k.startswith("goodput")},
        })
    else:
        row.update({k: None for k in ("duration_s", "request_throughput_rps", "output_throughput_tok_s",
                                      "total_token_throughput_tok_s")})
        row.update({f"{m}_ci_{side}": None for m in THROUGHPUT_CI_METRICS for side in ("low", "high")})
    row.update(slo_columns(records, duration_s, ttft_slo_ms, tpot_slo_ms))
    row["offered_rate_rps"] = level if mode == "rate" else None
    row["prompt_tokens_mismatches"] = len(prompt_length_mismatches(records))
    row["prefix_caching"] = prefix_caching
    row.update(eng)
    row.update(ttft_gap_columns(row["ttft_ms_mean"], eng["engine_ttft_ms_mean"]))
    row["measured_on"] = "client; engine_* columns: engine /metrics"
    return apply_status(row, check_point_row(row, gpu_name, hf_config, records))


def failed_point_row(mode: str, level: float, reason: str, cfg: dict[str, Any], prefix_caching: bool) -> dict[str, Any]:
    row = point_row(mode, level, [], None, {}, cfg.get("ttft_slo_ms"), cfg.get("tpot_slo_ms"), cfg["prompt_tokens"],
                    cfg["max_tokens"], prefix_caching)
    row.update({"status": "failed", "reason": reason})
    return row


async def measure_point(session: EngineSession, factory: PromptFactory, mode: str, level: float,
                        cfg: dict[str, Any], point_index: int, prefix_caching: bool,
                        sample_kv_usage: bool = True, gpu_name: str | None = None) -> tuple[dict[str, Any], list[RequestRecord]]:
    """Serve one point between two /metrics scrapes and build its row (also used by benchmarks/)."""
    n = requests_for_point(cfg, mode, level)
    label = f"{mode}={level:g}"
    if mode == "concurrency":
        reqs = factory.requests(f"c{level:g}", n, cfg["prompt_tokens"], cfg["max_tokens"])
        measured = await session.measure(reqs, max_concurrency=int(level), desc=f"e2 {label}",
                                         sample_kv_usage=sample_kv_usage)
    elif mode == "rate":
        offsets = poisson_schedule(n, float(level), cfg["seed"] + point_index)
        reqs = factory.requests(f"r{level:g}", n, cfg["prompt_tokens"], cfg["max_tokens"], offsets=offsets)
        measured = await session.measure(reqs, max_concurrency=cfg.get("rate_max_concurrency"), use_schedule=True,
                                         desc=f"e2 {label}", sample_kv_usage=sample_kv_usage)
    else:
        raise ValueError(f"unknown E2 mode {mode!r}")
    records = measured["records"]
    # A run's cfg has no SLOs (analysis keys: rule e2_analysis applies them); benchmarks/ pass them.
    row = point_row(mode, level, records, measured["duration_s"], measured["engine"], cfg.get("ttft_slo_ms"),
                    cfg.get("tpot_slo_ms"), cfg["prompt_tokens"], cfg["max_tokens"], prefix_caching, gpu_name,
                    session.model.get("hf_config"))
    return row, records


async def run(session: EngineSession, cfg: dict, ctx: RunContext) -> dict:
    model = session.model
    prefix_caching = bool(session.backend.serving.get("enable_prefix_caching"))
    gpu_name = engine_gpu_name(session)
    factory = PromptFactory(model, cfg["seed"])
    points = sweep_points(cfg)
    rows: list[dict] = []
    requests: list[dict] = []
    too_long = context_overflow(cfg["prompt_tokens"], cfg["max_tokens"], int(model["max_model_len"]),
                                model.get("name", "<profile>"))
    progress = PointProgress("e2", len(points))
    if not too_long and cfg["warmup_requests"]:
        top = max(cfg["concurrency_levels"], default=1)
        warm, _ = await session.run_requests(
            factory.requests("warmup", cfg["warmup_requests"], cfg["prompt_tokens"], cfg["max_tokens"]),
            max_concurrency=top, desc="e2 warmup")
        requests += request_rows(warm, phase="warmup", mode=None, level=None)
    for i, (mode, level) in enumerate(points):
        not_measurable = too_long or session.exit_reason()
        if not_measurable:
            rows.append(failed_point_row(mode, level, not_measurable, cfg, prefix_caching))
            progress.point(f"{mode}={level:g}", "failed: " + not_measurable)
            continue
        row, records = await measure_point(session, factory, mode, level, cfg, i, prefix_caching, gpu_name=gpu_name)
        rows.append(row)
        requests += request_rows(records, phase="measured", mode=mode, level=level)
        progress.point(f"{mode}={level:g}", f"{row['status']}, {_f(row['request_throughput_rps'])} req/s, "
                                            f"TTFT p99 {_f(row['ttft_ms_p99'])} ms")
    ctx.write_table("requests", ctx.frame(requests))
    sweep = sweep_summary(rows, lambda r: {"mode": r["mode"], "level": r["level"]})
    run_summary = {
        "workload": {k: cfg[k] for k in ("seed", "prompt_tokens", "max_tokens", "concurrency_levels", "request_rates",
                                         "rate_max_concurrency", "requests_per_point", "min_waves", "warmup_requests")},
        "requests_per_point_sent": {f"{m}={lv:g}": requests_for_point(cfg, m, lv) for m, lv in points},
        "prefix_caching": prefix_caching,
        **{k: sweep[k] for k in ("points", "points_ok", "failed_points", "prompt_tokens_mismatches",
                                 "local_cache_hit_tokens")},
        "best_output_throughput": _best(rows, "output_throughput_tok_s"),
        **{k: sweep[k] for k in ("ttft_client_minus_engine_ms_mean", "ttft_client_minus_engine_ms_min",
                                 "ttft_client_minus_engine_ms_max")},
        "total_preemptions": float(sum(r["engine_preemptions"] or 0 for r in rows)),
        "kv_cache_usage_peak": max((r["engine_kv_cache_usage_peak"] for r in rows
                                    if r["engine_kv_cache_usage_peak"] is not None), default=None),
    }
    # The measured point rows, SLO columns empty: rule e2_analysis writes concurrency.csv and
    # summary.json from them, requests.csv and the SLOs.
    write_json(ctx.path("points"), {"stamp": ctx.stamp(), "rows": rows, "summary": run_summary})
    session.raise_if_died()
    return {"points": run_summary["points"], "points_ok": run_summary["points_ok"],
            "best_output_throughput": run_summary["best_output_throughput"],
            "prompt_tokens_mismatches": run_summary["prompt_tokens_mismatches"]}


def analyse(results_dir: Path, analysis_cfg: dict[str, Any]) -> dict[str, Any]:
    """Rule e2_analysis: concurrency.csv and summary.json from the run's point rows, its measured
    requests and the SLOs (``analysis_cfg``: ttft_slo_ms, tpot_slo_ms). Every SLO-dependent number
    (attainments, goodput and its CI, the best-goodput point) is computed here from the records."""
    import pandas as pd

    from ..columns import write_table
    from ..result_tables import table_for

    ttft_slo, tpot_slo = analysis_cfg["ttft_slo_ms"], analysis_cfg["tpot_slo_ms"]
    points = read_json(EXPERIMENT.path(results_dir, "points"))
    requests = pd.read_csv(EXPERIMENT.path(results_dir, "requests"), float_precision="round_trip")
    # A sweep that sent nothing saved a requests.csv of the stamp columns only.
    sent = {"phase", "mode", "level"} <= set(requests.columns)
    measured = requests[requests["phase"] == "measured"] if sent else requests
    rows = []
    for row in points["rows"]:
        mine = measured[(measured["mode"] == row["mode"])
                        & (pd.to_numeric(measured["level"], errors="coerce") == float(row["level"]))] if sent else []
        records = [RequestRecord.from_row(r) for r in mine.to_dict("records")] if sent else []
        rows.append({**row, **slo_columns(records, row.get("duration_s"), ttft_slo, tpot_slo)})
    frame = pd.DataFrame(rows)
    for key, value in points["stamp"].items():
        frame[key] = value
    path = EXPERIMENT.path(results_dir, "concurrency")
    write_table(path, frame, table_for("e2", path.name))
    summary = {**points["stamp"], **points["summary"],
               "slo": {"ttft_slo_ms": ttft_slo, "tpot_slo_ms": tpot_slo, "measured_on": "client"},
               "best_goodput": _best(rows, "goodput_rps")}
    write_json(EXPERIMENT.path(results_dir, "summary"), summary)
    return summary


def _best(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    cands = [r for r in rows if r.get(key) is not None]
    if not cands:
        return None
    best = max(cands, key=lambda r: r[key])
    return {"mode": best["mode"], "level": best["level"], key: best[key]}



from . import e2_report  # noqa: E402  (bottom import: the report reads this module's declaration)

EXPERIMENT = Experiment(
    name="e2", title="E2 — concurrency / arrival-rate sweep with SLO goodput", category="E2 concurrency and goodput",
    engines=ONE_ENGINE, body=run,
    outputs={"points": "points.json", "requests": "requests.csv", "engine_log": "engine.log"},
    analyse=analyse,
    analysis_outputs={"concurrency": "concurrency.csv", "summary": "summary.json"},
    figures=(Figure("throughput", "throughput.svg", "e2_throughput.rst"),
             Figure("latency", "latency.svg", "e2_latency.rst"),
             Figure("goodput", "goodput.svg", "e2_goodput.rst"),
             Figure("table", "concurrency.html", "e2_concurrency.rst")),
    report=e2_report,
    analysis_keys=("ttft_slo_ms", "tpot_slo_ms"),
)
