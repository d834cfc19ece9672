"""E3's ``summary.json`` and the run's result summary: workload, the link ceiling, per way of
moving the KV its connector setup and transfer accounting over every handoff (warmups included),
and the rows that could not be measured."""

from __future__ import annotations

from typing import Any

from .broker import DEFAULT_TOLERANCE
from .gpus import GpuAssignment
from .ledger import SHARE_RULE
from .paths import PathOutcome
from .phases import ModeOutcome
from .rows import combine_agreement

DEFINITIONS = {
    "bytes_moved": "sum of the connector's files for the prompt in the shared folder (headers included)",
    "kv_bytes_loaded": ("derived, not a byte count: tokens the consumer's connector loaded x bytes per token of "
                        "the consumer's KV cache tensors"),
    "analytical_bytes": "kv_bytes_per_token(config.json, served KV dtype) x the tokens the connector should store",
    "kv_bytes_check": ("per point: the connector's files (ExampleConnector, per handoff) or NIXL's own "
                       "vllm:nixl_bytes_transferred (summed over the point on the engine that issues the transfers) "
                       "against the analytical count; a disagreement fails the point, no count says 'could not "
                       "check'"),
    "kv_save_ms": ("producer engine: the request's share of the time inside save_kv_layer and wait_for_save of the "
                   "steps that saved it (kv_save_step_ms: those steps' whole time)"),
    "kv_load_ms": ("consumer engine: the request's share of the time inside start_load_kv and wait_for_layer_load of "
                   "the loading step (kv_load_step_ms: the step's whole time); asynchronous loads: its own interval "
                   "from start_load_kv to its receive reported done"),
    "per_request_share": SHARE_RULE,
    "kv_wait_ms": "consumer engine: first KV lookup to the step in which the request was first scheduled",
    "kv_stall_ratio": "consumer engine: (first lookup to KV in place) / (first lookup to request end)",
    "kv_moved": ("consumer succeeded and loaded exactly the expected external tokens, the files' bytes agree "
                 "(ExampleConnector) and the point's byte count does not disagree (disagg.verdict)"),
}


def path_block(po: PathOutcome, rows: list[dict[str, Any]], handoff_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One way of moving the KV: its connector setup and its transfer accounting over every handoff
    (warm-ups included)."""
    dis, storage = po.outcome, po.storage
    setup = dis.transfer_setup
    ok_handoffs = [h for h in handoff_rows if h["ok"]]
    measured_points = [r for r in rows if r["mode"] == "disaggregated" and r.get("handoffs_ok")]
    # Files are checked per handoff (warm-ups included), NIXL's counter per point.
    byte_flags = ([h["bytes_agree"] for h in ok_handoffs if h["bytes_source"] == "files"]
                  + [r["bytes_agree"] for r in measured_points if r.get("bytes_source") != "files"])
    all_moved = sum(h["bytes_moved"] or 0 for h in handoff_rows)
    return {
        "name": po.path.name,
        "start_error": dis.start_error,
        "engines": list(dis.engines),
        "connector": {
            **po.description,
            "kv_transfer_config": {pool: po.servings.get(pool, {}).get("_kv_transfer_config")
                                   for pool in ("prefill", "decode")},
            "shared_storage": str(storage) if storage else None,
            "shared_storage_removed": bool(storage) and not storage.exists(),
            **{k: setup.get(k) for k in ("block_size", "block_size_source", "kv_dtype", "kv_dtype_source",
                                         "kv_bytes_per_token", "cache_config_info")},
            "kv_transport": po.transport,
        },
        "transfer": {
            "handoffs": len(handoff_rows),
            "handoffs_ok": len(ok_handoffs),
            **_bytes_moved(ok_handoffs, measured_points),
            "storage_total_bytes": setup.get("storage_total_bytes"),
            # Every file in the shared folder belongs to a handoff (warmups included).
            "storage_matches_handoffs": (setup.get("storage_total_bytes") == all_moved
                                         if setup.get("storage_total_bytes") is not None else None),
            "bytes_agree_all": combine_agreement(byte_flags),
            "bytes_disagreements": [{"handoff_id": h["handoff_id"], "relative_error": h["bytes_relative_error"]}
                                    for h in ok_handoffs if h["bytes_agree"] is False],
            "bytes_checks": [{"prompt_tokens": r["prompt_tokens"], "concurrency": r["concurrency"],
                              "bytes_agree": r.get("bytes_agree"), "kv_bytes_check": r.get("kv_bytes_check")}
                             for r in measured_points],
            "handoffs_kv_moved": sum(bool(h["kv_moved"]) for h in handoff_rows),
            "kv_not_moved": [{"handoff_id": h["handoff_id"], "reason": h["kv_check"]}
                             for h in handoff_rows if not h["kv_moved"]],
            "kv_timing_sources": sorted({h["kv_timing_source"] for h in handoff_rows}),
            "consumer_kv_layout": setup.get("consumer_kv_layout"),
        },
    }


def _bytes_moved(ok_handoffs: list[dict[str, Any]], measured_points: list[dict[str, Any]]) -> dict[str, Any]:
    """The KV bytes a way moved and what counted them: the connector's files (every handoff,
    warm-ups included) or NIXL's own counter (summed over the measured points; warm-ups not
    counted); None where neither counted anything (never a 0 that reads as nothing moved)."""
    files = [h["bytes_moved"] for h in ok_handoffs if h.get("bytes_moved") is not None]
    if files:
        return {"bytes_moved_total": sum(files), "bytes_moved_source": "files, every handoff (warm-ups included)"}
    nixl = [r["nixl_bytes_transferred"] for r in measured_points if r.get("nixl_bytes_transferred") is not None]
    if nixl:
        return {"bytes_moved_total": sum(nixl),
                "bytes_moved_source": "NIXL's counter, measured points (warm-ups not counted)"}
    return {"bytes_moved_total": None, "bytes_moved_source": "not counted"}


def build_summary(stamp: dict[str, Any], cfg: dict[str, Any], rows: list[dict[str, Any]], agg: ModeOutcome,
                  paths: list[PathOutcome], assignment: GpuAssignment, handoff_rows: list[dict[str, Any]],
                  budget: int, ceiling: dict[str, Any]) -> dict[str, Any]:
    blocks = [path_block(po, [r for r in rows if r.get("kv_path") == po.path.name],
                         [h for h in handoff_rows if h.get("kv_path") == po.path.name]) for po in paths]
    return {
        **stamp,
        "workload": {k: cfg[k] for k in ("seed", "prompt_tokens", "concurrency_levels", "requests_per_point",
                                         "max_tokens", "warmup_requests")},
        "slo": {"ttft_slo_ms": cfg["ttft_slo_ms"], "tpot_slo_ms": cfg["tpot_slo_ms"], "measured_on": "client"},
        "max_num_batched_tokens": budget,
        "gpu_assignment": assignment.as_dict(),
        "link_ceiling": ceiling,
        "bytes_tolerance": float(cfg.get("bytes_tolerance", DEFAULT_TOLERANCE)),
        "definitions": dict(DEFINITIONS),
        "engine_starts": 1 + 2 * len(paths),
        "aggregated": {"start_error": agg.start_error, "engines": list(agg.engines)},
        "kv_paths": blocks,
        "handoffs": sum(b["transfer"]["handoffs"] for b in blocks),
        "handoffs_kv_moved": sum(b["transfer"]["handoffs_kv_moved"] for b in blocks),
        "bytes_agree_all": combine_agreement([b["transfer"]["bytes_agree_all"] for b in blocks]),
        "failed_rows": [{"mode": r["mode"], "kv_path": r.get("kv_path"), "prompt_tokens": r["prompt_tokens"],
                         "concurrency": r["concurrency"], "reason": r["reason"]} for r in rows if r["status"] != "ok"],
        "rows": len(rows),
        "rows_ok": sum(r["status"] == "ok" for r in rows),
    }


def result_summary(points: int, rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """What ``run_metadata.json`` and the CLI report of the run: points, rows, byte agreement."""
    return {"points": points, "rows_ok": sum(r["status"] == "ok" for r in rows),
            "rows_failed": sum(r["status"] != "ok" for r in rows),
            "bytes_agree": summary["bytes_agree_all"], "handoffs": summary["handoffs"],
            "handoffs_kv_moved": summary["handoffs_kv_moved"], "kv_paths": [b["name"] for b in summary["kv_paths"]]}
