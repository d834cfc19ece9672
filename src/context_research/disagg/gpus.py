"""Which GPUs the prefill and decode engines see.

- CPU engines: no GPU to assign (GPU overrides are a config error there). With
  ``cpu_core_split`` (default) and at least two usable cores, the prefill engine's OpenMP threads
  are bound to the first half of the cores and the decode engine's to the second half
  (``VLLM_CPU_OMP_THREADS_BIND``), as two GPUs would separate them; vLLM's automatic binding
  would put both on the same core. The aggregated engine gets the prefill half.
- One GPU: both engines share it, each with ``shared_gpu_memory_utilization`` of its memory
  (vLLM checks that fraction of the total is free when an engine starts, so the two must sum
  to less than 1).
- Two or more GPUs: prefill on GPU 0, decode on GPU 1 (``CUDA_VISIBLE_DEVICES`` per engine),
  each with ``serving.gpu_memory_utilization``.
- ``prefill_visible_devices`` / ``decode_visible_devices`` override either side; overlapping sets
  count as a shared GPU and get the split memory.
The aggregated engine runs on the prefill engine's devices with the full utilization.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..metadata import usable_cpus


@dataclass
class GpuAssignment:
    device: str                              # "cpu" | "cuda"
    gpus_found: int
    prefill_visible_devices: str | None = None
    decode_visible_devices: str | None = None
    aggregated_visible_devices: str | None = None
    shared_gpu: bool = False
    prefill_gpu_memory_utilization: float | None = None
    decode_gpu_memory_utilization: float | None = None
    aggregated_gpu_memory_utilization: float | None = None
    source: str = "auto"                     # "auto" | "config" (an override was used)
    # CPU engines: VLLM_CPU_OMP_THREADS_BIND per engine (None = vLLM's automatic binding).
    prefill_cpu_bind: str | None = None
    decode_cpu_bind: str | None = None
    aggregated_cpu_bind: str | None = None
    gpu_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def engine_settings(self, pool: str) -> dict[str, Any]:
        """``serving`` overrides for the ``pool`` ("aggregated" | "prefill" | "decode") engine."""
        if self.device != "cuda":
            bind = getattr(self, f"{pool}_cpu_bind")
            return {"env": {"VLLM_CPU_OMP_THREADS_BIND": bind}} if bind else {}
        devices = getattr(self, f"{pool}_visible_devices")
        return {"env": {"CUDA_VISIBLE_DEVICES": devices},
                "gpu_memory_utilization": getattr(self, f"{pool}_gpu_memory_utilization")}

    def gpus_used(self, mode: str) -> int:
        """GPUs a mode occupies (0 on CPU): per-GPU normalization of goodput."""
        if self.device != "cuda":
            return 0
        if mode == "aggregated":
            return len(_ids(self.aggregated_visible_devices))
        return len(set(_ids(self.prefill_visible_devices)) | set(_ids(self.decode_visible_devices)))


def _ids(spec: str | None) -> list[str]:
    return [s.strip() for s in str(spec or "").split(",") if s.strip()]


def _check_devices(key: str, spec: Any, gpus_found: int) -> str:
    ids = _ids(spec)
    if not ids:
        raise ConfigError(f"config key 'experiments.e3.{key}': {spec!r} names no GPU (e.g. \"0\" or \"0,1\")")
    for i in ids:
        if not i.isdigit():
            raise ConfigError(f"config key 'experiments.e3.{key}': {i!r} is not a GPU index")
        if int(i) >= gpus_found:
            raise ConfigError(f"config key 'experiments.e3.{key}': GPU {i} does not exist "
                              f"(NVML found {gpus_found} GPU(s))")
    return ",".join(ids)


def discover_gpus() -> list[str]:
    """GPU names NVML reports (empty on hosts without NVML/GPUs)."""
    from ..metadata import gpu_inventory

    inv = gpu_inventory()
    return [g["name"] for g in inv.get("gpus", [])] if inv.get("available") else []


def _id_list(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


def assign_gpus(device: str, gpu_names: list[str], cfg: dict[str, Any], full_utilization: float,
                cpus: list[int] | None = None) -> GpuAssignment:
    """The assignment for ``device`` ("cpu" | "cuda") with the GPUs NVML found (``cpus``: the
    usable CPU ids, for splitting CPU engines; default: this process's affinity)."""
    prefill_override = cfg.get("prefill_visible_devices")
    decode_override = cfg.get("decode_visible_devices")
    n = len(gpu_names)
    if device != "cuda":
        for key, value in (("prefill_visible_devices", prefill_override), ("decode_visible_devices", decode_override)):
            if value is not None:
                raise ConfigError(f"config key 'experiments.e3.{key}' is set but the engines run on "
                                  f"{device} (serving.device): there is no GPU to assign")
        cpus = usable_cpus() if cpus is None else sorted(cpus)
        if cfg.get("cpu_core_split", True) and len(cpus) >= 2:
            half = len(cpus) // 2
            prefill, decode = _id_list(cpus[:half]), _id_list(cpus[half:])
            return GpuAssignment(device=device, gpus_found=n, gpu_names=list(gpu_names), prefill_cpu_bind=prefill,
                                 decode_cpu_bind=decode, aggregated_cpu_bind=prefill,
                                 notes=[f"CPU engines, no GPU: prefill on cores {prefill}, decode on cores {decode}, "
                                        f"aggregated on cores {prefill}"])
        return GpuAssignment(device=device, gpus_found=n, gpu_names=list(gpu_names),
                             notes=["CPU engines, no GPU: vLLM's automatic core binding for every engine"])
    if n == 0:
        raise ConfigError("config key 'serving.device' is 'cuda' but NVML found no GPU")
    prefill = _check_devices("prefill_visible_devices", prefill_override, n) if prefill_override is not None else "0"
    if decode_override is not None:
        decode = _check_devices("decode_visible_devices", decode_override, n)
    else:
        # A different GPU when there is one that the prefill side does not use.
        free = [str(i) for i in range(n) if str(i) not in _ids(prefill)]
        decode = free[0] if free else _ids(prefill)[0]
    shared = bool(set(_ids(prefill)) & set(_ids(decode)))
    split = float(cfg.get("shared_gpu_memory_utilization", 0.40))
    util = split if shared else float(full_utilization)
    if shared and 2 * split >= 1.0:
        raise ConfigError("config key 'experiments.e3.shared_gpu_memory_utilization': two engines share a GPU, "
                          f"so it must be < 0.5 (got {split})")
    notes = []
    if shared:
        notes.append(f"prefill and decode share GPU(s) {decode}: each engine gets {split:.2f} of its memory")
    else:
        notes.append(f"prefill on GPU(s) {prefill}, decode on GPU(s) {decode}")
    return GpuAssignment(
        device="cuda", gpus_found=n, prefill_visible_devices=prefill, decode_visible_devices=decode,
        aggregated_visible_devices=prefill, shared_gpu=shared,
        prefill_gpu_memory_utilization=util, decode_gpu_memory_utilization=util,
        aggregated_gpu_memory_utilization=float(full_utilization),
        source="config" if (prefill_override is not None or decode_override is not None) else "auto",
        gpu_names=list(gpu_names), notes=notes)
