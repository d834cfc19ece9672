"""The devices an engine occupies: the CPU, or the GPUs ``CUDA_VISIBLE_DEVICES`` and its parallel
sizes name, each GPU keyed by its NVML UUID (the same physical GPU in every process and SLURM job)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Device:
    key: str                  # lock file stem: "cpu", a GPU UUID, or "gpu<index>"
    label: str                # for people: "cpu", "gpu0 (NVIDIA H200, GPU-5f3e...)"
    gpu_uuid: str | None = None


CPU = Device("cpu", "cpu")
_PARALLEL_FLAGS = {"--tensor-parallel-size": 1, "-tp": 1, "--pipeline-parallel-size": 1, "-pp": 1,
                   "--data-parallel-size": 1, "-dp": 1}


def gpus_per_engine(extra_args: Iterable[Any]) -> int:
    """GPUs one ``vllm serve`` uses: tensor x pipeline x data parallel size from its flags."""
    args = [str(a) for a in extra_args]
    sizes = dict(_PARALLEL_FLAGS)
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag in sizes:
            value = value or (args[i + 1] if i + 1 < len(args) else "")
            if value.isdigit() and int(value) > 0:
                sizes[flag] = int(value)
    n = 1
    for long, short in (("--tensor-parallel-size", "-tp"), ("--pipeline-parallel-size", "-pp"),
                        ("--data-parallel-size", "-dp")):
        n *= max(sizes[long], sizes[short])
    return n


def _nvml_gpu(index: int) -> tuple[str, str] | None:
    """(uuid, name) of NVML device ``index``, or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid, name = pynvml.nvmlDeviceGetUUID(h), pynvml.nvmlDeviceGetName(h)
            return (uuid.decode() if isinstance(uuid, bytes) else uuid,
                    name.decode() if isinstance(name, bytes) else name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def gpu_device(spec: str) -> Device:
    """The GPU that a ``CUDA_VISIBLE_DEVICES`` entry names (an index, or a GPU-/MIG- UUID)."""
    spec = spec.strip()
    if spec.startswith(("GPU-", "MIG-")):
        return Device(spec, spec, gpu_uuid=spec)
    if spec.isdigit():
        found = _nvml_gpu(int(spec))
        if found is not None:
            uuid, name = found
            return Device(uuid, f"gpu{spec} ({name}, {uuid})", gpu_uuid=uuid)
    return Device(f"gpu{spec}", f"gpu{spec}")


def engine_devices(device: str, serving: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> list[Device]:
    """The devices an engine with these settings occupies (``device``: "cpu" or "cuda", as
    ``backends.vllm_server.resolve_device`` says). A CUDA engine uses the first
    tensor x pipeline x data parallel GPUs it sees: ``serving.env.CUDA_VISIBLE_DEVICES`` (E3 sets
    it per engine), else this process's, else NVML's GPU 0, 1, ..."""
    if device != "cuda":
        return [CPU]
    environ = os.environ if environ is None else environ
    spec = (serving.get("env") or {}).get("CUDA_VISIBLE_DEVICES", environ.get("CUDA_VISIBLE_DEVICES"))
    n = gpus_per_engine(serving.get("extra_args") or [])
    ids = [s.strip() for s in str(spec).split(",") if s.strip()] if spec is not None else [str(i) for i in range(n)]
    return [gpu_device(i) for i in ids[:n]]
