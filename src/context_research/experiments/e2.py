"""E2: load: concurrency / arrival-rate sweep, capacity under SLOs, trace replay (one engine start).

Points, each a row of ``results/e2/concurrency.csv``:

* ``concurrency``: closed loop, at most ``level`` requests in flight, the next one sent as soon
  as one finishes (``vllm bench serve --max-concurrency``);
* ``rate``: open loop, requests sent at the offsets of a seeded Poisson process of ``level``
  requests/s whether or not earlier ones finished (``vllm bench serve --request-rate``);
* ``capacity``: the probes of a capacity search, per prompt length (``analysis.capacity``): each
  is judged over its steady window (``analysis.probe``: pass, fail, inconclusive or invalid), and
  the highest Poisson rate that passed is DistServe's goodput, written with its bracket (from
  probes, not a confidence interval) to ``capacity.csv``;
* ``trace``: a JSONL trace replayed at its arrival offsets with its per-request lengths.

Per point: throughput, client TTFT / TPOT / E2E, SLO attainment and vLLM bench's per-run goodput
(``goodput_rps``: requests/s meeting BOTH SLOs over the run; not DistServe's goodput), the engine's
counters, and (``e2_load``) over-saturation, steady-state figures beside the whole-run ones,
NVML energy and the Pareto coordinates.

The SLOs (``ttft_slo_ms``, ``tpot_slo_ms``) and ``attainment_target`` are run keys, not analysis
keys: each probe's attainment decides the next rate the capacity search probes, so they change
which points are measured. The run writes ``concurrency.csv``, ``capacity.csv`` and
``summary.json`` itself; there is no ``e2_analysis`` rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..analysis.capacity import CapacitySearch, search_from_config
from ..analysis.compare_layout import CLIENT_METRICS, ENGINE_METRICS, Layout, not_warmup
from ..analysis.integrity import check_point_row
from ..analysis.probe import ProbeRules, probe_requests
from ..backends.session import EngineSession
from ..metadata import engine_gpu_name
from ..traces import read_trace
from ..tables import fmt as _f
from ..workload.checks import died_in_flight
from ..workload.columns import request_rows, sweep_summary
from ..workload.progress import PointProgress
from ..workload.prompts import PromptFactory, context_overflow
from ..warmup import WarmupRule, warm_session
from .declaration import ONE_ENGINE, Experiment, Figure
from .e2_tables import E2_CONCURRENCY, E2_CAPACITY, E2_REQUESTS
# The point functions are E2's API too (benchmarks/ measures one point with measure_point).
from .e2_points import (MODES, OPEN_LOOP, capacity_verdict, failed_point_row, measure_point,  # noqa: F401
                        point_requests, point_row, requests_for_point, sweep_points)
from .runner import RunContext


def capacity_row(prompt_tokens: int, search: CapacitySearch | None, cfg: dict[str, Any],
                 reason: str | None = None) -> dict[str, Any]:
    """The capacity.csv row of one prompt length (``reason``: why no search ran)."""
    result = search.result() if search is not None and search.probes else {"capacity_rps": None, "probes": 0,
                                                                            "stop_reason": reason}
    rules = ProbeRules.from_config(cfg)
    return {"prompt_tokens": prompt_tokens, "max_tokens": cfg["max_tokens"], "capacity_low_rps": None,
            "capacity_high_rps": None, "capacity_achieved_rps": None, "attainment_lower_bound": None,
            "converged": False, **result, "attainment_target": cfg["attainment_target"],
            "rel_tol": cfg["capacity_rel_tol"], "rate_tolerance": rules.rate_tolerance,
            "max_probes": cfg["capacity_max_probes"], "ttft_slo_ms": cfg["ttft_slo_ms"],
            "tpot_slo_ms": cfg["tpot_slo_ms"], "requests_per_probe": cfg.get("capacity_requests_per_probe"),
            "probe_min_window_s": rules.min_window_s, "probe_min_window_requests": rules.min_window_requests}


async def search_capacity(cfg: dict[str, Any], prompt_tokens: int, point) -> CapacitySearch:
    """One capacity search at ``prompt_tokens``: ``point(mode, rate, prompt_tokens, length)`` measures
    a probe and returns its row and records; each row gets its verdict's columns."""
    search, rules = search_from_config(cfg), ProbeRules.from_config(cfg)
    while (nxt := search.next_probe()) is not None:
        rate, length = nxt
        row, records = await point("capacity", rate, prompt_tokens, length)
        verdict = capacity_verdict(row, records, rate, rules, probe_requests(rate, rules, length))
        probe = search.record(rate, verdict, length)
        row.update({"probe_phase": probe.phase, "probe_length": length, **verdict.columns()})
    return search


def planned_points(cfg: dict[str, Any]) -> list[tuple[str, float, int | None]]:
    """(mode, level, prompt tokens) of the fixed points; capacity probes are decided as they go.
    A trace's level is its mean arrival rate (requests - 1) / last offset."""
    trace = []
    if cfg.get("trace_file"):
        t = read_trace(cfg["trace_file"])
        trace = [("trace", (len(t) - 1) / t[-1].arrival_offset_s if t[-1].arrival_offset_s > 0 else 0.0, None)]
    return [(m, lv, cfg["prompt_tokens"]) for m, lv in sweep_points(cfg)] + trace


def trace_overflow(cfg: dict[str, Any], max_model_len: int) -> str | None:
    """Why the trace cannot be replayed as written: requests longer than the served context."""
    over = [t for t in read_trace(cfg["trace_file"]) if t.input_tokens + t.output_tokens > max_model_len]
    if over:
        return (f"{len(over)} trace request(s) exceed max_model_len = {max_model_len} (the longest: "
                f"{max(t.input_tokens + t.output_tokens for t in over)} tokens); not sent")
    return None


@dataclass
class _Sweep:
    """One E2 run: its engine session and settings, and every row measured so far (kept on an
    interrupt by ``ctx.keep_on_failure``)."""
    session: EngineSession
    cfg: dict
    ctx: RunContext
    factory: PromptFactory
    prefix_caching: bool
    gpu_name: str | None
    progress: PointProgress
    rows: list[dict] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    capacity: list[dict] = field(default_factory=list)

    async def point(self, mode, level, prompt_tokens, index, not_measurable=None, length=1.0):
        """Measure one point (or record why it cannot be measured); returns its row and records."""
        session, cfg = self.session, self.cfg
        not_measurable = not_measurable or session.exit_reason()
        label = f"{mode}={level:.3g}" + (f" @{prompt_tokens} tokens" if mode == "capacity" else "")
        if not_measurable:
            self.rows.append(failed_point_row(mode, level, not_measurable, cfg, self.prefix_caching, prompt_tokens))
            self.progress.point(label, "failed: " + not_measurable)
            return self.rows[-1], []
        row, records = await measure_point(session, self.factory, mode, level, cfg, index, self.prefix_caching,
                                           gpu_name=self.gpu_name, prompt_tokens=prompt_tokens, length=length)
        self.rows.append(died_in_flight(row, records, session.exit_reason()))
        self.requests.extend(request_rows(records, phase="measured", mode=mode, level=level,
                                          prompt_tokens_point=prompt_tokens))
        self.progress.point(label, f"{row['status']}, {_f(row['request_throughput_rps'])} req/s, attainment "
                                   f"{_f(row['slo_attainment'])}, TTFT p99 {_f(row['ttft_ms_p99'])} ms"
                                   + (", stopped early: saturated" if row.get("stopped_early") else ""))
        self.ctx.checkpoint()
        return row, records

    async def warm_up(self) -> dict | None:
        """Warm-up until steady, in rounds of warmup_requests at the highest concurrency level."""
        cfg = self.cfg
        if not cfg["warmup_requests"]:
            return None
        top = max(cfg["concurrency_levels"], default=1)
        warm, warmup = await warm_session(
            self.session,
            lambda k: self.factory.requests(f"warmup{k}", cfg["warmup_requests"], cfg["prompt_tokens"],
                                            cfg["max_tokens"]),
            WarmupRule.from_cfg(cfg), max_concurrency=top, desc="e2 warmup", label="e2")
        self.requests += request_rows(warm, phase="warmup", mode=None, level=None)
        return warmup

    async def search(self, prompt_tokens: int, max_len: int, profile: str) -> None:
        """The capacity search at one prompt length: its probes are rows, its result a capacity row."""
        overflow = context_overflow(prompt_tokens, self.cfg["max_tokens"], max_len, profile)
        if overflow:
            self.capacity.append(capacity_row(prompt_tokens, None, self.cfg, overflow))
            return
        search = await search_capacity(self.cfg, prompt_tokens, lambda mode, rate, tokens, length: self.point(
            mode, rate, tokens, len(self.rows), length=length))
        self.capacity.append(capacity_row(prompt_tokens, search, self.cfg))


async def run(session: EngineSession, cfg: dict, ctx: RunContext) -> dict:
    model = session.model
    prefix_caching = bool(session.backend.serving.get("enable_prefix_caching"))
    gpu_name = engine_gpu_name(session)
    factory = PromptFactory(model, cfg["seed"])
    max_len, profile = int(model["max_model_len"]), model.get("name", "<profile>")
    capacity_lengths = list(cfg.get("capacity_prompt_tokens") or [cfg["prompt_tokens"]]) \
        if cfg.get("capacity_max_probes", 0) else []
    fixed = planned_points(cfg)
    sweep = _Sweep(session, cfg, ctx, factory, prefix_caching, gpu_name,
                   PointProgress("e2", len(fixed) + len(capacity_lengths) * cfg.get("capacity_max_probes", 0)))
    for key, kept in (("concurrency", sweep.rows), ("requests", sweep.requests), ("capacity", sweep.capacity)):
        ctx.keep_on_failure(key, kept)   # the points finished before an interrupt are kept
    too_long = context_overflow(cfg["prompt_tokens"], cfg["max_tokens"], max_len, profile)
    warmup = None if too_long else await sweep.warm_up()
    for i, (mode, level, prompt_tokens) in enumerate(fixed):
        await sweep.point(mode, level, prompt_tokens, i,
                          not_measurable=too_long if mode != "trace" else trace_overflow(cfg, max_len))
    for prompt_tokens in capacity_lengths:
        await sweep.search(prompt_tokens, max_len, profile)
    rows, capacity = sweep.rows, sweep.capacity
    ctx.write_table("concurrency", ctx.frame(rows))
    ctx.write_table("requests", ctx.frame(sweep.requests))
    ctx.write_table("capacity", ctx.frame(capacity))
    summary = _summary(cfg, ctx, rows, capacity, prefix_caching, warmup)
    ctx.write_json("summary", summary)
    session.raise_if_died()
    return {"points": summary["points"], "points_ok": summary["points_ok"], "best_goodput": summary["best_goodput"],
            "capacity": [{k: c.get(k) for k in ("prompt_tokens", "capacity_rps", "capacity_low_rps", "capacity_high_rps")}
                         for c in capacity],
            "prompt_tokens_mismatches": summary["prompt_tokens_mismatches"]}


def _summary(cfg: dict, ctx: RunContext, rows: list[dict], capacity: list[dict], prefix_caching: bool,
             warmup: dict | None) -> dict:
    """summary.json: the workload, the SLOs, the capacity rows and the sweep's totals and bests."""
    sweep = sweep_summary(rows, lambda r: {"mode": r["mode"], "level": r["level"], "prompt_tokens": r["prompt_tokens"]})
    return {
        **ctx.stamp(),
        "workload": {k: cfg.get(k) for k in ("seed", "prompt_tokens", "max_tokens", "concurrency_levels", "request_rates",
                                             "rate_max_concurrency", "requests_per_point", "min_waves", "warmup_requests",
                                             "warmup_max_requests", "warmup_window", "warmup_tolerance",
                                             "trace_file", "steady_state_trim", "stop_when_saturated")},
        "requests_per_point_sent": {f"{m}={lv:g}": requests_for_point(cfg, m, lv) for m, lv in sweep_points(cfg)},
        "slo": {"ttft_slo_ms": cfg["ttft_slo_ms"], "tpot_slo_ms": cfg["tpot_slo_ms"], "measured_on": "client",
                "attainment_target": cfg.get("attainment_target", 0.9)},
        "capacity": capacity,
        "prefix_caching": prefix_caching,
        "warmup": warmup,  # how many warm-up requests it took until the engine was steady
        **{k: sweep[k] for k in ("points", "points_ok", "failed_points", "prompt_tokens_mismatches",
                                 "local_cache_hit_tokens")},
        "saturated_points": [{"mode": r["mode"], "level": r["level"], "prompt_tokens": r["prompt_tokens"],
                              "stopped_early": bool(r.get("stopped_early")), "note": r.get("saturation_note")}
                             for r in rows if r.get("saturated")],
        "energy": next(({"available": True} for r in rows if r.get("energy_available")),
                       {"available": False, "reason": next((r["energy_note"] for r in rows if r.get("energy_note")),
                                                           "no point measured")}),
        "best_goodput": _best(rows, "goodput_rps"),
        "best_output_throughput": _best(rows, "output_throughput_tok_s"),
        **{k: sweep[k] for k in ("ttft_client_minus_engine_ms_mean", "ttft_client_minus_engine_ms_min",
                                 "ttft_client_minus_engine_ms_max")},
        "total_preemptions": float(sum(r["engine_preemptions"] or 0 for r in rows)),
        "kv_cache_usage_peak": max((r["engine_kv_cache_usage_peak"] for r in rows
                                    if r["engine_kv_cache_usage_peak"] is not None), default=None),
    }


def _best(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    cands = [r for r in rows if r.get(key) is not None]
    if not cands:
        return None
    best = max(cands, key=lambda r: r[key])
    return {"mode": best["mode"], "level": best["level"], "prompt_tokens": best["prompt_tokens"], key: best[key]}


EXPERIMENT = Experiment(
    name="e2", title="E2 — load: concurrency / rate sweep, capacity under SLOs, trace replay",
    category="E2 concurrency and goodput",
    engines=ONE_ENGINE, body=run,
    outputs={"concurrency": "concurrency.csv", "capacity": "capacity.csv", "requests": "requests.csv",
             "summary": "summary.json", "engine_log": "engine.log"},
    figures=(Figure("throughput", "throughput.svg", "e2_throughput.rst"),
             Figure("latency", "latency.svg", "e2_latency.rst"),
             Figure("goodput", "goodput.svg", "e2_goodput.rst"),
             Figure("attainment", "attainment.svg", "e2_attainment.rst"),
             Figure("timeline", "timeline.svg", "e2_timeline.rst"),
             Figure("pareto", "pareto.svg", "e2_pareto.rst"),
             Figure("table", "concurrency.html", "e2_concurrency.rst")),
    report_module="context_research.experiments.e2_report",
    code=("experiments/e2.py", "experiments/e2_tables.py", "experiments/e2_points.py", "experiments/e2_load.py",
          "analysis/capacity.py", "analysis/probe.py", "analysis/saturation.py", "analysis/findings.py", "analysis/integrity.py", "analysis/hardware.py", "analysis/model_math.py", "tables.py",
          "traces.py"),
    report_code=("experiments/e2_report.py", "experiments/e2_figures.py"),
    tables=(E2_CONCURRENCY, E2_CAPACITY, E2_REQUESTS),
    comparison=Layout("requests.csv", ("mode", "level", "prompt_tokens_point"), CLIENT_METRICS + ENGINE_METRICS,
                      keep=not_warmup("phase"), points_table="concurrency.csv",
                      points_table_columns=("mode", "level", "prompt_tokens")),
    row_checks=(("concurrency", check_point_row),),
    # No analysis keys: the SLOs and attainment_target steer the capacity search (which rates are
    # probed), so they are run keys, in the run's config and hash; a new SLO reruns the engine rule.
    analysis_keys=(),
    data_inputs=lambda config: [p for p in [config["experiments"]["e2"].get("trace_file")] if p],
)
