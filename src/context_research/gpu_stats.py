"""NVML: GPU memory used and utilization (average and peak) over an engine's life, and the
total-energy counter read around a measured point."""

from __future__ import annotations

import threading
import time
from typing import Any


class NvmlSampler:
    """Poll NVML in a background thread; ``summary()`` is the artifact block.

    On hosts without NVML the summary is ``{"available": False, "reason": ...}``.
    """

    def __init__(self, interval_s: float = 0.1, device_indices: list[int] | None = None):
        self.interval_s = interval_s
        self.device_indices = device_indices
        self._samples: dict[int, list[tuple[float, int, int]]] = {}
        self._info: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reason: str | None = None
        self._nvml = None
        self._started_at: float | None = None
        self._stopped_at: float | None = None

    def start(self) -> "NvmlSampler":
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            count = pynvml.nvmlDeviceGetCount()
            indices = self.device_indices if self.device_indices is not None else list(range(count))
            self._handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
            driver = pynvml.nvmlSystemGetDriverVersion()
            for i, h in self._handles.items():
                name = pynvml.nvmlDeviceGetName(h)
                self._info[i] = {
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                    "driver": driver.decode() if isinstance(driver, bytes) else driver,
                }
                self._samples[i] = []
        except Exception as exc:  # NVML missing (no driver, CPU host) is a normal, recorded state
            self._reason = f"NVML unavailable: {type(exc).__name__}: {exc}"
            return self
        if not self._handles:
            self._reason = "NVML found no GPU"
            return self
        self._started_at = time.time()
        self._sample_once()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample_once(self) -> None:
        now = time.time()
        for i, h in self._handles.items():
            try:
                used = int(self._nvml.nvmlDeviceGetMemoryInfo(h).used)
                util = int(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception:
                continue
            self._samples[i].append((now, used, util))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_once()

    def stop(self) -> dict[str, Any]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._sample_once()
            self._thread = None
            self._stopped_at = time.time()
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        return self.summary()

    def summary(self) -> dict[str, Any]:
        if self._reason is not None:
            return {"available": False, "reason": self._reason}
        devices = []
        for i, samples in self._samples.items():
            used = [s[1] for s in samples]
            util = [s[2] for s in samples]
            devices.append({
                "index": i,
                **self._info[i],
                "samples": len(samples),
                "memory_used_peak_bytes": max(used) if used else None,
                "memory_used_mean_bytes": (sum(used) / len(used)) if used else None,
                "utilization_peak_pct": max(util) if util else None,
                "utilization_mean_pct": (sum(util) / len(util)) if util else None,
            })
        return {
            "available": True,
            "interval_s": self.interval_s,
            "started_at": self._started_at,
            "stopped_at": self._stopped_at,
            "devices": devices,
            "measured_on": "nvml",
        }

    def __enter__(self) -> "NvmlSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def energy_device_indices(visible: str | None) -> list[int] | None:
    """The NVML indices of the GPUs the engine may use: ``CUDA_VISIBLE_DEVICES`` when it lists
    plain indices (NVML numbers GPUs as CUDA does by default), else None (every GPU NVML sees)."""
    if not visible:
        return None
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else None


def read_energy_mj(device_indices: list[int] | None = None) -> dict[str, Any]:
    """NVML's total-energy counter (nvmlDeviceGetTotalEnergyConsumption: millijoules since the
    driver loaded, Volta and later) of each GPU, now.

    ``{"available": True, "energy_mj": {index: mJ}}``, or ``{"available": False, "reason": ...}``
    without NVML or on a GPU without the counter (the same shape as the sampler's block).
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver, a CPU host: a normal, recorded state
        return {"available": False, "reason": f"NVML unavailable: {type(exc).__name__}: {exc}"}
    try:
        indices = device_indices if device_indices is not None else list(range(pynvml.nvmlDeviceGetCount()))
        if not indices:
            return {"available": False, "reason": "NVML found no GPU"}
        return {"available": True, "energy_mj": {
            i: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in indices}}
    except Exception as exc:
        return {"available": False, "reason": f"NVML total-energy counter unavailable: {type(exc).__name__}: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


ENERGY_COLUMNS = ("energy_available", "energy_j", "energy_j_per_output_token", "energy_j_per_request",
                  "energy_avg_power_w", "energy_gpus", "energy_note")


def energy_columns(before: dict[str, Any], after: dict[str, Any], duration_s: float | None, output_tokens: int,
                   requests: int) -> dict[str, Any]:
    """Energy of one point from two ``read_energy_mj`` readings around it, summed over the GPUs
    read: joules, joules per output token and per request (successful ones), average power.
    Empty with ``energy_note`` saying why where a reading is unavailable or makes no sense."""
    out: dict[str, Any] = {k: None for k in ENERGY_COLUMNS}
    out["energy_available"] = False
    reason = None
    if not before.get("available"):
        reason = before.get("reason") or "no energy reading before the point"
    elif not after.get("available"):
        reason = after.get("reason") or "no energy reading after the point"
    elif set(before["energy_mj"]) != set(after["energy_mj"]):
        reason = "the GPUs read before and after the point differ"
    if reason is None:
        delta_mj = sum(after["energy_mj"][i] - before["energy_mj"][i] for i in before["energy_mj"])
        if delta_mj < 0:
            reason = "the energy counter went backwards (driver reload or wrap)"
        else:
            joules = delta_mj / 1000.0
            out.update({
                "energy_available": True, "energy_j": joules, "energy_gpus": len(before["energy_mj"]),
                "energy_j_per_output_token": joules / output_tokens if output_tokens else None,
                "energy_j_per_request": joules / requests if requests else None,
                "energy_avg_power_w": joules / duration_s if duration_s else None,
            })
    out["energy_note"] = reason
    return out
