"""What runs on the host: vLLM engines, the compute processes NVML lists on a GPU, and which
processes are this run's own."""

from __future__ import annotations

import datetime as _dt
import os
import re
from typing import Any, Container, Iterable

from .devices import Device


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def short_command(argv: Iterable[str]) -> str:
    """The command line for people: the program's base name, long arguments (the --config-json
    blob) elided."""
    args = [str(a).strip() for a in argv]
    if args:
        args[0] = os.path.basename(args[0])
    return " ".join(a if len(a) <= 80 else (a[0] + "…" + a[-1] if a[0] in "{[" else a[:24] + "…")
                    for a in args)[:400]


_ENGINE_TITLE = re.compile(r"VLLM::|EngineCore")


def is_engine_cmdline(cmdline: list[str]) -> bool:
    """A vLLM server (``vllm serve``, ``-m vllm.entrypoints...``, our ``vllm_cli serve``) or one
    of its engine processes (``VLLM::EngineCore``, ``VLLM::Worker``)."""
    joined = " ".join(cmdline)
    if _ENGINE_TITLE.search(joined):
        return True
    return "vllm" in joined.lower() and ("serve" in cmdline or "vllm.entrypoints.openai.api_server" in joined)


def own_tree(root: int | None = None) -> list[Any]:
    """This process (or ``root``) and every descendant (our engines, their workers), as psutil
    processes."""
    import psutil

    try:
        me = psutil.Process(root)
    except psutil.Error:  # ``root`` has exited: it has no tree left
        return []
    try:
        return [me, *me.children(recursive=True)]
    except psutil.Error:
        return [me]


def other_engines(exclude: Container[int]) -> list[dict[str, Any]]:
    """vLLM engine processes on this host outside ``exclude`` (our processes)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "username", "create_time"]):
        info = p.info
        if info["pid"] in exclude or not info.get("cmdline"):
            continue
        if is_engine_cmdline(info["cmdline"]):
            found.append({"pid": info["pid"], "ppid": info["ppid"], "user": info.get("username"),
                          "started": _dt.datetime.fromtimestamp(info["create_time"], _dt.timezone.utc)
                          .isoformat(timespec="seconds") if info.get("create_time") else None,
                          "command": short_command(info["cmdline"])})
    return found


def gpu_processes(devices: list[Device], exclude: Container[int]) -> dict[str, Any]:
    """Per GPU of ``devices``: the compute processes NVML lists on it, those outside ``exclude``
    marked ``ours: false``; ``{"available": False, "reason"}`` without NVML."""
    gpus = [d for d in devices if d.gpu_uuid]
    if not gpus:
        return {"available": False, "reason": "no GPU among the run's devices" if all(d.key == "cpu" for d in devices)
                else "the run's GPUs have no NVML UUID (NVML unavailable)"}
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return {"available": False, "reason": f"NVML unavailable: {type(exc).__name__}: {exc}"}
    try:
        out: dict[str, Any] = {"available": True, "devices": {}}
        for d in gpus:
            try:
                h = pynvml.nvmlDeviceGetHandleByUUID(d.gpu_uuid)
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            except Exception as exc:
                out["devices"][d.key] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
                continue
            out["devices"][d.key] = {"available": True, "processes": [
                {"pid": int(p.pid), "used_memory_bytes": getattr(p, "usedGpuMemory", None),
                 "ours": int(p.pid) in exclude} for p in procs]}
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


class OurProcesses:
    """``pid in ours``: the run's driver (``root``), its descendants, and whatever runs in a
    session one of them started (our engines run in their own session; an engine process whose
    parent died before it is still ours, though no longer our descendant)."""

    def __init__(self, sessions: set[int], root: int | None = None):
        self.pids = {p.pid for p in own_tree(root)}
        self.sessions = sessions
        for pid in self.pids:
            try:
                sid = os.getsid(pid)
            except OSError:
                continue
            if sid in self.pids:
                sessions.add(sid)

    def __contains__(self, pid: object) -> bool:
        if pid in self.pids:
            return True
        try:
            return os.getsid(int(pid)) in self.sessions  # type: ignore[arg-type]
        except (OSError, TypeError, ValueError):
            return False
