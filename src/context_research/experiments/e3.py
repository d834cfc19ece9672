"""E3: aggregated vs prefill/decode-disaggregated serving, with real KV transfer and its accounting.

Both modes serve the same workload (prompt lengths x concurrency levels, the same token-id
prompts) on the real engine:

1. aggregated: one engine (no connector) prefills and decodes. Per prompt length it first
   serves prefills alone, one at a time (``max_tokens=1``, not streamed, no queueing): the
   baseline the producer's store time is measured against. The engine is stopped before the
   next phase.
2. disaggregated, once per way of moving the KV (``experiments.e3.kv_paths``; default: the one
   way ``experiments.e3.connector``): a prefill engine (``kv_role=kv_producer``) and a decode
   engine (``kv_role=kv_consumer``) joined by a vLLM KV connector (ExampleConnector through a
   fresh folder under /dev/shm, removed afterwards; NIXL pull or push, with the way's UCX
   variables), loaded through the measuring connector (``disagg.measuring_connector``), which
   times saves, loads and waits inside the engines per request. The broker sends each prompt to
   the producer, then streams it from the consumer; what the connector wrote is measured once the
   point's requests have completed, outside every timed window. A point is ``ok`` only if the KV
   really moved (``disagg.verdict``). Each way's pair is stopped before the next one starts:
   1 + 2 x ways engine starts in all, against one aggregated baseline.

Refused points are rows with ``status="failed"`` and the reason: prompt + output beyond
max_model_len; for disaggregation, prompts (or concurrent prompts together) longer than
``max_num_batched_tokens`` (vLLM stores only the first chunk of a chunked prefill, then the
consumer dies with "shape mismatch") and lengths ExampleConnector cannot hand over (shorter
than a block plus one token, or ``n - 1`` a multiple of the block size, where producer and
consumer disagree on the folder name).

Artifacts (``EXPERIMENT.outputs``): the mode comparison (one row per point and mode, and per way
for the disaggregated rows, named in ``kv_path``, with the disaggregated - aggregated deltas), one
row per request, one row per handoff, both modes' route logs, the engines' KV ledger, a summary
and the engines' logs. The pieces live in ``context_research.disagg``: ``paths`` (the ways),
``plan`` (points, refusals, prompts), ``phases`` (the engines and the two phases), ``rows`` and
``summary``; the transfer's timing definitions are in ``disagg.ledger``, its status rules in
``disagg.verdict``.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..analysis.compare_layout import CLIENT_METRICS, ENGINE_METRICS, Layout, not_warmup
from ..analysis.integrity import check_point_row
from ..disagg.broker import DEFAULT_TOLERANCE
from ..disagg.gpus import assign_gpus, discover_gpus
from ..disagg.paths import PathOutcome, kv_paths, run_path
from ..disagg.phases import ENGINE_LOGS, aggregated_serving, pair_servings, require_installed_connector, run_aggregated
from ..disagg.plan import batched_tokens_budget, plan_workload
from ..disagg.rows import POINT_COLUMNS, add_deltas, handoff_columns, sort_rows
from ..disagg.summary import build_summary, result_summary
from ..disagg.transport import measure_link_ceiling
from ..errors import ConfigError, EngineDiedError
from .declaration import SEVERAL_ENGINES, Experiment, Figure
from ..disagg.tables import E3_MODE_COMPARISON, E3_REQUESTS, E3_TRANSFERS
from .runner import ExperimentRun


def run(run: ExperimentRun) -> dict[str, Any]:
    """The aggregated engine once, then one engine pair per way of moving the KV, then every artifact."""
    cfg, model, serving, ctx = run.cfg, run.model, run.serving, run.ctx
    if not model.get("hf_config"):
        raise ConfigError("models.<profile>.source: E3 needs the model's config.json for the analytical KV size")
    from ..backends.vllm_server import resolve_device  # imported when run, like make_backend does

    paths = kv_paths(cfg)
    real = ctx.backend_mode == "real"
    device = resolve_device(serving) if real else "cpu"
    # A core binding the user set for every engine wins over the split.
    split_cfg = {**cfg, "cpu_core_split": cfg.get("cpu_core_split", True)
                 and "VLLM_CPU_OMP_THREADS_BIND" not in (serving.get("env") or {})}
    assignment = assign_gpus(device, discover_gpus() if device == "cuda" else [], split_cfg,
                             float(serving.get("gpu_memory_utilization", 0.9)))
    budget = batched_tokens_budget(cfg, int(model["max_model_len"]))
    for path in paths:  # every way's connector and engine settings, checked before any engine starts
        if real:
            require_installed_connector(path.cfg(cfg), f"{path.key}.connector")
        pair_servings(run.config, path.cfg(cfg), model, assignment, "/nonexistent")
    workload = plan_workload(model, cfg)
    # What the KV's link can carry, measured before any engine holds GPU memory.
    ceiling = (measure_link_ceiling(assignment.prefill_visible_devices, assignment.decode_visible_devices)
               if device == "cuda" else {"available": False, "reason": "CPU engines: the KV moves through memory"})

    agg, baselines = run_aggregated(run.backend, model, aggregated_serving(run.config, cfg, model, assignment), cfg,
                                    workload, assignment, budget)
    outs: list[PathOutcome] = []
    # The points of the aggregated engine and of every way finished so far are kept if a later
    # way's pair is interrupted or dies (checkpointed after each phase).
    ctx.keep_on_failure("comparison", lambda: sort_rows(agg.rows + [r for o in outs for r in o.outcome.rows],
                                                        [o.path.name for o in outs]), POINT_COLUMNS)
    ctx.keep_on_failure("requests", lambda: agg.requests + [r for o in outs for r in o.outcome.requests])
    ctx.keep_on_failure("transfers", lambda: ctx.frame(_handoff_rows(cfg, outs), handoff_columns()))
    ctx.checkpoint()
    ids = itertools.count()  # handoff ids unique across the ways
    for path in paths:
        outs.append(run_path(run, path, cfg, workload, assignment, budget, baselines, several=len(paths) > 1,
                             handoff_ids=ids, ceiling=ceiling))
        ctx.checkpoint()
    summary = write_artifacts(run, agg, outs, assignment, budget, ceiling)
    died = agg.engine_died or next((o.outcome.engine_died for o in outs if o.outcome.engine_died), None)
    if died:  # the rows are written; the points after the death are failed rows with its reason
        raise EngineDiedError(f"{died}. The points measured before that were written; the points after it are "
                              "failed rows with this reason.")

    engines = {**agg.engines, **{k: v for o in outs for k, v in o.outcome.engines.items()}}
    run.engine_info = {"mode": ctx.backend_mode, "device": device, "engines": engines,
                       "startup_s": {k: v.get("startup_s") for k, v in engines.items()}}
    ctx.notes.extend(assignment.notes)
    run.metadata_extra["gpu_assignment"] = assignment.as_dict()
    run.gpu_stats_extra["gpu_assignment"] = assignment.as_dict()
    # How each way moved the KV and what its NIXL engines' UCX was told (also in
    # hash_inputs.experiment_config, so a change reruns E3).
    run.metadata_extra["kv_paths"] = [o.description for o in outs]
    return result_summary(len(workload.points), summary["rows_list"], summary["json"])


def write_artifacts(run: ExperimentRun, agg: Any, outs: list[PathOutcome], assignment: Any, budget: int,
                    ceiling: dict[str, Any]) -> dict[str, Any]:
    """Every declared file: the tables (one row set per way), route logs, ledger, summary, logs."""
    cfg, ctx = run.cfg, run.ctx
    # The engines' raw events, kept beside the tables they were joined into.
    ctx.write_jsonl("kv_ledger", [e for o in outs for e in o.events])
    rows = sort_rows(agg.rows + [r for o in outs for r in o.outcome.rows], [o.path.name for o in outs])
    add_deltas(rows)
    ctx.write_table("comparison", ctx.frame(rows, POINT_COLUMNS))
    ctx.write_table("requests", ctx.frame(agg.requests + [r for o in outs for r in o.outcome.requests]))
    handoff_rows = _handoff_rows(cfg, outs)
    ctx.write_table("transfers", ctx.frame(handoff_rows, handoff_columns()))
    ctx.write_jsonl("routes_aggregated", agg.route_log.rows)
    ctx.write_jsonl("routes_disaggregated", [r for o in outs for r in o.outcome.route_log.rows])
    for pool, key in ENGINE_LOGS.items():
        if pool != "aggregated" and len(outs) > 1:
            ctx.write_text(key, f"# E3 ran {len(outs)} ways of moving the KV, each with its own engine pair; "
                                      f"their {pool} engines' logs:\n" + "".join(
                                          f"# {o.path.name}: {ctx.path('engine_kv_path', pool, o.path.name).name}\n"
                                          for o in outs))
        elif not ctx.path(key).exists() or not ctx.path(key).stat().st_size:  # (empty: linked, never started)
            ctx.write_text(key, "# engine not started\n")
    summary = build_summary(ctx.stamp(), cfg, rows, agg, outs, assignment, handoff_rows, budget, ceiling)
    ctx.write_json("summary", summary)
    return {"rows_list": rows, "json": summary}


def _handoff_rows(cfg: dict[str, Any], outs: list[PathOutcome]) -> list[dict[str, Any]]:
    """transfers.csv: one row per handoff of every way run so far."""
    tolerance = float(cfg.get("bytes_tolerance", DEFAULT_TOLERANCE))
    return [h.as_row(tolerance) for o in outs if o.outcome.broker for h in o.outcome.broker.handoffs]


EXPERIMENT = Experiment(
    name="e3", title="E3 — aggregated vs prefill/decode-disaggregated serving",
    category="E3 aggregated vs disaggregated", engines=SEVERAL_ENGINES, body=run,
    outputs={"comparison": "mode_comparison.csv", "requests": "requests.csv", "transfers": "transfers.csv",
             "routes_aggregated": "routes_aggregated.jsonl", "routes_disaggregated": "routes_disaggregated.jsonl",
             "kv_ledger": "kv_ledger.jsonl",
             "summary": "summary.json", "engine_aggregated": "engine_aggregated.log",
             "engine_prefill": "engine_prefill.log", "engine_decode": "engine_decode.log"},
    # With several ways (experiments.e3.kv_paths), each pair's logs: engine_prefill.<way>.log, ...
    optional_outputs={"engine_kv_path": "engine_{}.{}.log"},
    figures=(Figure("latency", "latency.svg", "e3_latency.rst"),
             Figure("goodput", "goodput.svg", "e3_goodput.rst"),
             Figure("transfer", "transfer.svg", "e3_transfer.rst"),
             Figure("table", "mode_comparison.html", "e3_mode_comparison.rst")),
    report_module="context_research.experiments.e3_report",
    code=("experiments/e3.py", "disagg/", "analysis/findings.py", "analysis/integrity.py", "analysis/hardware.py",
          "analysis/model_math.py", "tables.py"),
    report_code=("experiments/e3_report.py", "experiments/e3_figures.py"),
    tables=(E3_MODE_COMPARISON, E3_REQUESTS, E3_TRANSFERS),
    comparison=Layout("requests.csv", ("point_prompt_tokens", "concurrency", "mode"), CLIENT_METRICS + ENGINE_METRICS,
                      keep=not_warmup("label"), points_table="mode_comparison.csv",
                      points_table_columns=("prompt_tokens", "concurrency", "mode")),
    row_checks=(("comparison", check_point_row),),
    # No analysis keys: the goodput SLOs and the byte tolerance are used only on the served records,
    # but no analysis step recomputes mode_comparison.csv from them yet, so they stay run keys (a
    # new SLO reruns E3's engines, which is what rewrites the table).
)
