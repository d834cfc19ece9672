"""E2's view of a point under load: saturation, steady state, energy and the Pareto coordinates.

``point_load_columns`` is what ``e2_points.point_row`` appends to every row (empty for a point
that was not measured); ``energy_reading`` reads NVML's counter only where the engine runs on a
GPU.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..analysis.saturation import STEADY_PERCENTILE_COLUMNS, SaturationMonitor, steady_state_columns
from ..gpu_stats import ENERGY_COLUMNS, energy_columns, energy_device_indices, read_energy_mj
from ..records import RequestRecord

SATURATION_COLUMNS = ("saturated", "stopped_early", "saturation_note", "in_flight_peak", "engine_waiting_peak",
                      "load_samples")
STEADY_COLUMNS = ("steady_window_start_s", "steady_window_s", "steady_requests", "steady_request_throughput_rps",
                  "steady_output_throughput_tok_s", *STEADY_PERCENTILE_COLUMNS, "steady_slo_attainment", "steady_note")
PARETO_COLUMNS = ("gpus", "output_tok_s_per_user", "output_tok_s_per_gpu")
LOAD_COLUMNS = ("probe_phase", *SATURATION_COLUMNS, *STEADY_COLUMNS, *ENERGY_COLUMNS, *PARETO_COLUMNS)

# E2 serves one engine on one device (no tensor parallelism): the per-GPU divisor is 1.
GPUS_PER_ENGINE = 1


def energy_reading(on_gpu: bool) -> dict[str, Any]:
    """NVML's energy counters of the engine's GPUs now, or why there are none."""
    if not on_gpu:
        return {"available": False, "reason": "the engine does not run on a GPU: no NVML energy counter applies"}
    return read_energy_mj(energy_device_indices(os.environ.get("CUDA_VISIBLE_DEVICES")))


def pareto_columns(tpot_ms_mean: float | None, output_throughput_tok_s: float | None) -> dict[str, Any]:
    """Per user: the decode rate one stream sees, 1000 / mean client TPOT; per GPU: the point's
    output throughput over the GPUs the engine uses."""
    return {"gpus": GPUS_PER_ENGINE,
            "output_tok_s_per_user": 1000.0 / tpot_ms_mean if tpot_ms_mean else None,
            "output_tok_s_per_gpu": output_throughput_tok_s / GPUS_PER_ENGINE
            if output_throughput_tok_s is not None else None}


def point_load_columns(records: Sequence[RequestRecord], duration_s: float | None, *, ttft_slo_ms: float,
                       tpot_slo_ms: float, steady_state_trim: float, monitor: SaturationMonitor | None = None,
                       energy_before: dict[str, Any] | None = None, energy_after: dict[str, Any] | None = None,
                       probe_phase: str | None = None, tpot_ms_mean: float | None = None,
                       output_throughput_tok_s: float | None = None) -> dict[str, Any]:
    """Every LOAD_COLUMNS value of one point; a point without records gets them empty."""
    out: dict[str, Any] = {k: None for k in LOAD_COLUMNS}
    out["probe_phase"] = probe_phase
    if not records:
        return out
    if monitor is not None:
        out.update(monitor.columns())
    else:
        out["saturation_note"] = "closed loop: requests in flight are capped, a backlog cannot grow"
    out.update(steady_state_columns(records, steady_state_trim, ttft_slo_ms, tpot_slo_ms))
    ok = [r for r in records if r.ok]
    none = {"available": False, "reason": "energy not read around this point"}
    out.update(energy_columns(energy_before or none, energy_after or none, duration_s,
                              sum(r.output_tokens or 0 for r in ok), len(ok)))
    out.update(pareto_columns(tpot_ms_mean, output_throughput_tok_s))
    return out
