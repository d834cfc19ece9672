"""E3: aggregated vs prefill/decode-disaggregated serving, with real KV transfer and its accounting.

Both modes serve the same workload (prompt lengths x concurrency levels, the same token-id
prompts) on the real engine:

1. aggregated: one engine (no connector) prefills and decodes. Per prompt length it first
   serves prefills alone, one at a time (``max_tokens=1``, not streamed, no queueing): the
   baseline the producer's store time is measured against. The engine is stopped before the
   next phase.
2. disaggregated: a prefill engine (``kv_role=kv_producer``) and a decode engine
   (``kv_role=kv_consumer``) joined by a vLLM KV connector (default ``ExampleConnector`` through
   a fresh folder under /dev/shm, removed afterwards), loaded through the measuring connector
   (``disagg.measuring_connector``), which times saves, loads and waits inside the engines per
   request. The broker sends each prompt to the producer, then streams it from the consumer;
   what the connector wrote is measured once the point's requests have completed, outside every
   timed window. A point is ``ok`` only if the KV really moved (``disagg.verdict``).

Refused points are rows with ``status="failed"`` and the reason: prompt + output beyond
max_model_len; for disaggregation, prompts (or concurrent prompts together) longer than
``max_num_batched_tokens`` (vLLM stores only the first chunk of a chunked prefill, then the
consumer dies with "shape mismatch") and lengths ExampleConnector cannot hand over (shorter
than a block plus one token, or ``n - 1`` a multiple of the block size, where producer and
consumer disagree on the folder name).

Artifacts (``EXPERIMENT.outputs``): the mode comparison (one row per point and mode, with the
disaggregated - aggregated deltas), one row per request, one row per handoff, both modes' route
logs, the engines' KV ledger, a summary and the three engines' logs. The pieces live in
``context_research.disagg``: ``plan`` (points, refusals, prompts), ``phases`` (the engines and
the two phases), ``rows`` and ``summary``; the transfer's timing definitions are in
``disagg.ledger``, its status rules in ``disagg.verdict``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..disagg import connectors
from ..disagg.broker import DEFAULT_TOLERANCE
from ..disagg.gpus import assign_gpus, discover_gpus
from ..disagg.ledger import read_events
from ..disagg.transport import ISSUING_ENGINE, kv_transport, measure_link_ceiling
from ..disagg.phases import (ENGINE_LOGS, engine_servings, require_installed_connector, run_aggregated,
                             run_disaggregated, without_private_keys)
from ..disagg.plan import batched_tokens_budget, plan_workload
from ..disagg.rows import POINT_COLUMNS, add_deltas, handoff_columns, sort_rows
from ..disagg.summary import build_summary, result_summary
from ..errors import ConfigError
from ..io import write_json, write_jsonl, write_text
from .declaration import SEVERAL_ENGINES, Experiment, Figure
from .runner import ExperimentRun


def run(run: ExperimentRun) -> dict[str, Any]:
    """Both phases on their own engines (aggregated: one; disaggregated: two), then every artifact."""
    cfg, model, serving, ctx = run.cfg, run.model, run.serving, run.ctx
    if not model.get("hf_config"):
        raise ConfigError("models.<profile>.source: E3 needs the model's config.json for the analytical KV size")
    from ..backends.vllm_server import resolve_device  # imported when run, like make_backend does

    real = ctx.backend_mode == "real"
    device = resolve_device(serving) if real else "cpu"
    # A core binding the user set for every engine wins over the split.
    split_cfg = {**cfg, "cpu_core_split": cfg.get("cpu_core_split", True)
                 and "VLLM_CPU_OMP_THREADS_BIND" not in (serving.get("env") or {})}
    assignment = assign_gpus(device, discover_gpus() if device == "cuda" else [], split_cfg,
                             float(serving.get("gpu_memory_utilization", 0.9)))
    budget = batched_tokens_budget(cfg, int(model["max_model_len"]))
    if real:
        require_installed_connector(cfg)
    workload = plan_workload(model, cfg)
    # What the KV's link can carry, measured before any engine holds GPU memory.
    ceiling = (measure_link_ceiling(assignment.prefill_visible_devices, assignment.decode_visible_devices)
               if device == "cuda" else {"available": False, "reason": "CPU engines: the KV moves through memory"})

    storage = None
    ledger_dir = Path(tempfile.mkdtemp(prefix=f"context-research-e3-ledger-{ctx.run_id}-"))
    try:
        if cfg["connector"] == "ExampleConnector":
            storage = connectors.make_shared_storage(cfg, ctx.run_id)
        servings = engine_servings(run.config, cfg, model, assignment, storage, ledger_dir)
        agg, baselines = run_aggregated(run.backend, model, without_private_keys(servings["aggregated"]), cfg,
                                        workload, assignment, budget)
        dis = run_disaggregated(run.backend, model, servings, cfg, workload, assignment, budget, storage, baselines,
                                ledger_dir)
        # The engines' raw events, kept beside the tables they were joined into.
        write_jsonl(ctx.path("kv_ledger"), read_events(ledger_dir))
    finally:
        connectors.remove_shared_storage(storage)
        shutil.rmtree(ledger_dir, ignore_errors=True)

    tolerance = float(cfg.get("bytes_tolerance", DEFAULT_TOLERANCE))
    rows = sort_rows(agg.rows + dis.rows)
    add_deltas(rows)
    ctx.write_table("comparison", ctx.frame(rows, POINT_COLUMNS))
    ctx.write_table("requests", ctx.frame(agg.requests + dis.requests))
    handoff_rows = [h.as_row(tolerance) for h in (dis.broker.handoffs if dis.broker else [])]
    ctx.write_table("transfers", ctx.frame(handoff_rows, handoff_columns()))
    agg.route_log.write(ctx.path("routes_aggregated"))
    dis.route_log.write(ctx.path("routes_disaggregated"))
    for key in ENGINE_LOGS.values():
        if not ctx.path(key).exists():
            write_text(ctx.path(key), "# engine not started\n")
    summary = build_summary(ctx.stamp(), cfg, rows, agg, dis, assignment, servings, storage, handoff_rows, budget)
    summary["connector"]["link_ceiling"] = ceiling
    direction = connectors.transfer_direction(cfg["connector"], cfg)
    issuing_log = ctx.path(ENGINE_LOGS[ISSUING_ENGINE.get(direction, "decode")])
    summary["connector"]["kv_transport"] = kv_transport(issuing_log.read_text(errors="replace")
                                                        if issuing_log.exists() else "", direction)
    write_json(ctx.path("summary"), summary)

    engines = {**agg.engines, **dis.engines}
    run.engine_info = {"mode": ctx.backend_mode, "device": device, "engines": engines,
                       "startup_s": {k: v.get("startup_s") for k, v in engines.items()}}
    ctx.notes.extend(assignment.notes)
    run.metadata_extra["gpu_assignment"] = assignment.as_dict()
    # What the NIXL engines' UCX was told (also in hash_inputs.experiment_config, so a change reruns E3).
    run.metadata_extra["kv_transfer"] = {"connector": cfg["connector"], "direction": direction,
                                         "ucx_env": connectors.ucx_env(cfg)}
    run.gpu_stats_extra["gpu_assignment"] = assignment.as_dict()
    return result_summary(len(workload.points), rows, summary)


from . import e3_report  # noqa: E402  (bottom import: e3_report may import from this module)

EXPERIMENT = Experiment(
    name="e3", title="E3 — aggregated vs prefill/decode-disaggregated serving",
    category="E3 aggregated vs disaggregated", engines=SEVERAL_ENGINES, body=run,
    outputs={"comparison": "mode_comparison.csv", "requests": "requests.csv", "transfers": "transfers.csv",
             "routes_aggregated": "routes_aggregated.jsonl", "routes_disaggregated": "routes_disaggregated.jsonl",
             "kv_ledger": "kv_ledger.jsonl",
             "summary": "summary.json", "engine_aggregated": "engine_aggregated.log",
             "engine_prefill": "engine_prefill.log", "engine_decode": "engine_decode.log"},
    figures=(Figure("latency", "latency.svg", "e3_latency.rst"),
             Figure("goodput", "goodput.svg", "e3_goodput.rst"),
             Figure("transfer", "transfer.svg", "e3_transfer.rst"),
             Figure("table", "mode_comparison.html", "e3_mode_comparison.rst")),
    report=e3_report,
    # Used only on the served records: the goodput SLOs and the byte-agreement tolerance.
    analysis_keys=("ttft_slo_ms", "tpot_slo_ms", "bytes_tolerance"),
)
