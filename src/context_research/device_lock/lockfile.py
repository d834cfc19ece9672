"""One engine-starting run per device on a host, and a record of what else ran beside it.

Snakemake's ``resources: engine=1`` only orders the jobs of one Snakemake process; two
invocations (or two SLURM jobs on a shared node) would start two engines on the same device and
measure each other. Every run that starts a real engine therefore holds a **host-wide lock per
device** for as long as its engines live:

* a device is ``cpu`` (every CPU engine), or one GPU (keyed by its NVML UUID, which names the
  same physical GPU in every process and SLURM job; ``gpu<index>`` when NVML cannot tell);
* the lock is ``fcntl.flock`` on ``<lock dir>/<device>.lock``, lock dir
  ``$CONTEXT_RESEARCH_LOCK_DIR`` or ``/tmp/context-research-locks`` (created world-writable and
  sticky, files 0666, so every user of the host shares it). The kernel releases a flock when its
  holder exits, even on SIGKILL: a lock is never left stale;
* the lock belongs to the process (the run), not to an engine: a run that starts several engines
  on one device (E0's restarts, E3's two engines on one GPU) takes it once, re-entrantly;
* the holder writes who it is (pid, experiment, run id, since, command) into the file, so a run
  that finds the device taken can say by whom;
* ``serving.device_lock.mode``: ``wait`` (default) polls and prints a line every
  ``WAIT_REPORT_S`` until the lock is free or ``serving.device_lock.timeout_s`` has passed;
  ``fail`` refuses at once, naming the holder.

``ContentionMonitor`` records, from just before the first engine starts to the end of the run,
the other vLLM engines on the host, the GPU processes on the run's GPUs (NVML), the load average
and how much CPU time other processes used (sampled by a child process at nice 19, so the driver's
client never waits for it); ``RunDeviceGuard`` puts both together for
``experiments.runner.ExperimentRun`` (``device_lock`` and ``contention`` blocks of
``run_metadata.json``, a note when the run was contended).
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Mapping

from ..errors import ConfigError, ContextResearchError

LOCK_DIR_ENV = "CONTEXT_RESEARCH_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/context-research-locks"
MODES = ("wait", "fail")
# Defaults of serving.device_lock (workflow/schemas/config.schema.yaml says the same).
DEFAULT_MODE = "wait"
DEFAULT_TIMEOUT_S = 7200.0
POLL_S = 0.5            # how often a waiting run tries the lock again
WAIT_REPORT_S = 30.0    # how often a waiting run says so
SAMPLE_S = 5.0          # contention sampling interval over a run
WINDOW_S = 30.0         # other processes' CPU use is judged over stretches this long


class DeviceBusyError(ContextResearchError):
    """The device's engine lock is held by another run (mode ``fail``, or ``wait`` timed out)."""


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- configuration --------------------------------------------------------------------------------
def lock_settings(serving: Mapping[str, Any]) -> tuple[str, float]:
    """``(mode, timeout_s)`` from ``serving.device_lock`` (the schema has checked it; this repeats
    the check for configs that did not go through it)."""
    block = serving.get("device_lock") or {}
    mode = block.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise ConfigError(f"config key 'serving.device_lock.mode': {mode!r} is not one of {list(MODES)}")
    timeout = block.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"config key 'serving.device_lock.timeout_s': {timeout!r} is not a number of seconds > 0")
    return mode, float(timeout)


# -- devices --------------------------------------------------------------------------------------
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


# -- lock files -----------------------------------------------------------------------------------
def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def lock_path(device: Device, directory: Path | None = None) -> Path:
    return (directory or lock_dir()) / (re.sub(r"[^A-Za-z0-9._-]", "_", device.key) + ".lock")


def _ensure_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o1777)  # every user of the host shares it; sticky: nobody deletes others' files
    except PermissionError:
        pass  # another user made it meanwhile (or we may not chmod it): opening a file says if it is usable
    except OSError as exc:
        raise ContextResearchError(f"cannot create the device lock folder {directory} ({exc}); "
                                   f"set {LOCK_DIR_ENV} to a folder every run on this host can write") from None


def _open_lock_file(path: Path) -> int:
    """An fd on ``path``, created 0666 if missing. Opening an existing file without O_CREAT: in a
    sticky world-writable folder, Linux (fs.protected_regular) refuses O_CREAT on another user's file."""
    _ensure_dir(path.parent)
    for _ in range(10):
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            pass
        except PermissionError as exc:
            raise ContextResearchError(f"cannot open the device lock {path} ({exc}); "
                                       f"set {LOCK_DIR_ENV} to a folder every run on this host can write") from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ContextResearchError(f"cannot create the device lock {path} ({exc}); "
                                       f"set {LOCK_DIR_ENV} to a folder every run on this host can write") from None
        try:
            os.fchmod(fd, 0o666)  # whatever the umask: other users' runs must open it too
        except OSError:
            pass
        return fd
    raise ContextResearchError(f"cannot open the device lock {path}: it keeps appearing and disappearing")


def read_holder(path: Path) -> dict[str, Any]:
    """What the lock file says about its holder ({} if nothing readable: free, or just taken)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def describe_holder(info: Mapping[str, Any]) -> str:
    if not info.get("pid"):
        return "another process (it has not written its name into the lock file yet)"
    who = [x for x in (info.get("experiment"), f"run {info['run_id']}" if info.get("run_id") else None,
                       f"user {info['user']}" if info.get("user") else None) if x]
    text = f"pid {info['pid']}" + (f" ({', '.join(who)})" if who else "")
    if info.get("host") and info.get("host") != socket.gethostname():
        text += f" on {info['host']}"
    if info.get("since"):
        text += f" since {info['since']}"
    if info.get("command"):
        text += f": {info['command']}"
    if info.get("cwd"):
        text += f" (in {info['cwd']})"
    return text


def _short_command(argv: Iterable[str]) -> str:
    """The command line for people: the program's base name, long arguments (the --config-json
    blob) elided."""
    args = [str(a).strip() for a in argv]
    if args:
        args[0] = os.path.basename(args[0])
    return " ".join(a if len(a) <= 80 else (a[0] + "…" + a[-1] if a[0] in "{[" else a[:24] + "…")
                    for a in args)[:400]


def _user() -> str | None:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER")


# -- the process-wide registry: one flock per device, re-entrant within the process ---------------
@dataclass
class _Held:
    fd: int
    path: Path
    count: int
    info: dict[str, Any]


_HELD: dict[str, _Held] = {}
_REGISTRY = threading.RLock()


def _write_info(held: _Held) -> None:
    data = (json.dumps(held.info, sort_keys=True) + "\n").encode()
    try:
        os.ftruncate(held.fd, 0)
        os.pwrite(held.fd, data, 0)
    except OSError:
        pass  # the lock holds without its label


def held_devices() -> list[str]:
    with _REGISTRY:
        return sorted(_HELD)


def _say(line: str) -> None:
    """A waiting run's message: on stderr (the rule's log) and, when stderr is not the terminal,
    on the terminal Snakemake was started from, if any (a rule's log is not where one looks)."""
    print(line, file=sys.stderr, flush=True)
    try:
        if sys.stderr.isatty():
            return
    except (AttributeError, ValueError):
        pass
    try:
        fd = os.open("/dev/tty", os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        return
    previous = None
    try:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background job may write too
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTTOU, previous)
        os.close(fd)


def acquire(device: Device, *, mode: str = DEFAULT_MODE, timeout_s: float = DEFAULT_TIMEOUT_S,
            holder: Mapping[str, Any] | None = None, say: Callable[[str], None] = _say,
            poll_s: float = POLL_S, report_s: float = WAIT_REPORT_S) -> dict[str, Any]:
    """Take ``device``'s lock for this process (again, if it already holds it); returns
    ``{"device", "label", "path", "waited_s", "waited_for": holder info or None, "reentrant"}``.

    ``mode="fail"`` raises ``DeviceBusyError`` naming the holder at once; ``mode="wait"`` tries
    every ``poll_s``, says who it waits for every ``report_s``, and raises after ``timeout_s``.
    ``holder`` (experiment, run_id, ...) is written into the file for others to read.
    """
    if mode not in MODES:
        raise ConfigError(f"config key 'serving.device_lock.mode': {mode!r} is not one of {list(MODES)}")
    with _REGISTRY:
        held = _HELD.get(device.key)
        if held is not None:
            held.count += 1
            return {"device": device.key, "label": device.label, "path": str(held.path), "waited_s": 0.0,
                    "waited_for": None, "reentrant": True}
        path = lock_path(device)
        fd = _open_lock_file(path)
        try:
            waited_for, t0 = None, time.monotonic()
            next_report = 0.0
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise ContextResearchError(f"cannot lock {path}: {exc}") from None
                info = read_holder(path)
                waited_for = info or waited_for
                waited = time.monotonic() - t0
                if mode == "fail":
                    raise DeviceBusyError(
                        f"device {device.label} is in use: {describe_holder(info)} holds its engine lock ({path}). "
                        "serving.device_lock.mode is 'fail', so this run starts no engine beside it: wait for "
                        "that run to end, or set serving.device_lock.mode: wait to queue behind it")
                _refuse_deadlock(device, info, path)
                if waited >= timeout_s:
                    raise DeviceBusyError(
                        f"gave up after waiting {waited:.0f} s (serving.device_lock.timeout_s: {timeout_s:g}) "
                        f"for device {device.label}: {describe_holder(info)} still holds its engine lock ({path})")
                if waited >= next_report:
                    what = (holder or {}).get("experiment") or "this run"
                    say(f"context-research: {what} waiting for device {device.label}: held by "
                        f"{describe_holder(info)} (waited {waited:.0f} s of serving.device_lock.timeout_s "
                        f"{timeout_s:g}; serving.device_lock.mode: fail refuses instead)")
                    next_report = waited + report_s
                    _publish_waiting(device.key)
                time.sleep(poll_s)
        except BaseException:
            _publish_waiting(None)
            os.close(fd)
            raise
        _publish_waiting(None)
        info = {"pid": os.getpid(), "user": _user(), "host": socket.gethostname(), "device": device.key,
                "label": device.label, "since": _utc_now(), "command": _short_command(sys.argv), "cwd": os.getcwd(),
                "waiting_for": None, **(holder or {})}
        _HELD[device.key] = _Held(fd=fd, path=path, count=1, info=info)
        _write_info(_HELD[device.key])
        return {"device": device.key, "label": device.label, "path": str(path),
                "waited_s": round(time.monotonic() - t0, 3), "waited_for": waited_for, "reentrant": False}


def _publish_waiting(key: str | None) -> None:
    """Say in the files this process holds which device it waits for (``None``: none), so that a
    run waiting for one of them can see that the two would wait for each other."""
    for held in _HELD.values():
        if held.info.get("waiting_for") != key:
            held.info["waiting_for"] = key
            _write_info(held)


def _refuse_deadlock(device: Device, info: Mapping[str, Any], path: Path) -> None:
    """Two runs that each hold a device the other waits for would wait until the timeout: the one
    with the higher pid gives way."""
    theirs = info.get("waiting_for")
    if theirs and theirs in _HELD and int(info.get("pid") or 0) < os.getpid():
        raise DeviceBusyError(
            f"device {device.label} is held by {describe_holder(info)} ({path}), which waits for device "
            f"{theirs}, which this run holds: the two runs would wait for each other, so this one gives way; "
            "run them one after the other")


def release(device_key: str) -> None:
    """Give back one hold on ``device_key``; the last one unlocks the file."""
    with _REGISTRY:
        held = _HELD.get(device_key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[device_key]
        try:
            os.ftruncate(held.fd, 0)  # no stale name in a free lock
        except OSError:
            pass
        try:
            fcntl.flock(held.fd, fcntl.LOCK_UN)
        finally:
            os.close(held.fd)


# -- contention -----------------------------------------------------------------------------------
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
                          "command": _short_command(info["cmdline"])})
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


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _window_max(intervals: list[tuple[float, float]], window_s: float = WINDOW_S) -> float:
    """The highest CPU use (cores) over any ``window_s`` stretch of consecutive intervals (the
    whole span if shorter)."""
    best = 0.0
    for i in range(len(intervals)):
        span = used = 0.0
        for dt, u in intervals[i:]:
            span, used = span + dt, used + u
            if span >= window_s:
                break
        if span > 0 and (span >= window_s or i == 0):
            best = max(best, used / span)
    return best


class ContentionState:
    """What else ran beside a run (driver ``root``) on its ``devices``, from the samples taken.

    ``snapshot()``: now (load average, other engines, NVML processes on the run's GPUs), also
    added to the record; ``sample_cpu()``: the CPU time other processes used since the last call;
    ``summary()``: the highest 1-min load, the other engines and GPU processes ever seen, and the
    other processes' CPU use (mean, and the busiest ``WINDOW_S``).
    """

    def __init__(self, devices: list[Device], root: int | None = None, interval_s: float = SAMPLE_S):
        self.devices = list(devices)
        self.root = os.getpid() if root is None else root
        self.interval_s = interval_s
        self.cpus = os.cpu_count() or 1
        self._sessions: set[int] = set()
        self._engines: dict[tuple[int, str | None], dict[str, Any]] = {}
        self._gpu_others: dict[str, dict[int, dict[str, Any]]] = {}
        self._gpu_pids_comparable = True
        self._gpu_state: dict[str, Any] | None = None
        self._load_max: float | None = None
        self._samples = 0
        # other processes' CPU: per-process user+system deltas between samples
        self._cpu_prev: dict[tuple[int, float], float] | None = None
        self._cpu_prev_wall = 0.0
        self._cpu_t = 0.0
        self._other_cpu_s = 0.0
        self._cpu_span_s = 0.0
        self._intervals: list[tuple[float, float]] = []   # (seconds, other processes' CPU seconds)

    def add_devices(self, devices: Iterable[Device]) -> None:
        self.devices += [d for d in devices if d not in self.devices]

    def ours(self) -> OurProcesses:
        return OurProcesses(self._sessions, self.root)

    def snapshot(self, engines_running: bool = False, ours: OurProcesses | None = None) -> dict[str, Any]:
        """What runs now. ``engines_running``: our engines are up (then an NVML pid we cannot
        match to our processes may be ours, seen from another pid namespace)."""
        ours = ours or self.ours()
        snap = {"at": _utc_now(), "load_avg": _load(), "cpus": self.cpus, "other_engines": other_engines(ours),
                "gpu_processes": gpu_processes(self.devices, ours)}
        self._record(snap, engines_running)
        return snap

    def _record(self, snap: dict[str, Any], engines_running: bool) -> None:
        self._samples += 1
        if snap["load_avg"]:
            self._load_max = max(self._load_max or 0.0, snap["load_avg"][0])
        for e in snap["other_engines"]:
            entry = self._engines.setdefault((e["pid"], e["started"]), {**e, "first_seen": snap["at"]})
            entry["last_seen"] = snap["at"]
        gpus = snap["gpu_processes"]
        self._gpu_state = {k: v for k, v in gpus.items() if k != "devices"}
        for key, dev in (gpus.get("devices") or {}).items():
            procs = dev.get("processes") or []
            if engines_running and procs and not any(p["ours"] for p in procs):
                # our engines run but none of NVML's pids is ours: another pid namespace
                # (a container); its pids cannot be told apart from ours
                self._gpu_pids_comparable = False
                continue
            for p in procs:
                if not p["ours"]:
                    self._gpu_others.setdefault(key, {}).setdefault(p["pid"], {**p, "first_seen": snap["at"]})

    def sample_cpu(self, ours: OurProcesses) -> None:
        """Add up the user+system CPU time other processes used since the last sample. A process
        that ends between two samples loses its last interval, one that lives less than an
        interval is missed: the figure errs low, never high."""
        import psutil

        wall, now = time.time(), time.monotonic()
        current: dict[tuple[int, float], float] = {}
        used = 0.0
        for p in psutil.process_iter(["pid", "create_time", "cpu_times"]):
            info = p.info
            if info.get("cpu_times") is None or info["pid"] in ours:
                continue
            key = (info["pid"], info.get("create_time") or 0.0)
            current[key] = total = info["cpu_times"].user + info["cpu_times"].system
            if self._cpu_prev is not None:
                before = self._cpu_prev.get(key)
                if before is not None:
                    used += max(0.0, total - before)
                elif key[1] >= self._cpu_prev_wall:   # born since the last sample
                    used += total
        if self._cpu_prev is not None and now > self._cpu_t:
            self._other_cpu_s += used
            self._cpu_span_s += now - self._cpu_t
            self._intervals.append((now - self._cpu_t, used))
        self._cpu_prev, self._cpu_prev_wall, self._cpu_t = current, wall, now

    def summary(self) -> dict[str, Any]:
        other_cpu = None
        if self._cpu_span_s > 0:
            other_cpu = {"mean_cores": round(min(float(self.cpus), self._other_cpu_s / self._cpu_span_s), 3),
                         f"max_{WINDOW_S:g}s_cores": round(min(float(self.cpus), _window_max(self._intervals)), 3),
                         "over_s": round(self._cpu_span_s, 1), "interval_s": self.interval_s,
                         "how": "user+system CPU time of every process on the host but this run's (psutil), "
                                "per second; processes shorter than an interval are missed, so it errs low"}
        gpu = dict(self._gpu_state or {"available": False, "reason": "not sampled"})
        if gpu.get("available"):
            gpu["other_processes"] = {k: list(v.values()) for k, v in self._gpu_others.items()}
            gpu["pids_comparable"] = self._gpu_pids_comparable
        return {"samples": self._samples, "cpus": self.cpus, "load_avg_1m_max": self._load_max,
                "other_engines": list(self._engines.values()), "other_cpu": other_cpu, "gpu_processes": gpu}


def _combine(ours: dict[str, Any], sampler: dict[str, Any] | None) -> dict[str, Any]:
    """The driver's own snapshots (before the first engine, at the end) with the sampler's record."""
    if not sampler:
        return ours
    engines = {(e["pid"], e["started"]): e for e in sampler.get("other_engines") or []}
    for e in ours["other_engines"]:
        engines.setdefault((e["pid"], e["started"]), e)
    gpu = sampler.get("gpu_processes") or ours["gpu_processes"]
    if gpu.get("available") and ours["gpu_processes"].get("available"):
        others = {k: list(v) for k, v in (gpu.get("other_processes") or {}).items()}
        for key, procs in (ours["gpu_processes"].get("other_processes") or {}).items():
            seen = {p["pid"] for p in others.get(key, [])}
            others.setdefault(key, []).extend(p for p in procs if p["pid"] not in seen)
        gpu = {**gpu, "other_processes": others}
    loads = [x for x in (ours["load_avg_1m_max"], sampler.get("load_avg_1m_max")) if x is not None]
    return {**ours, "samples": ours["samples"] + int(sampler.get("samples") or 0),
            "load_avg_1m_max": max(loads) if loads else None, "other_engines": list(engines.values()),
            "other_cpu": sampler.get("other_cpu"), "gpu_processes": gpu}


# The line the driver sends the sampler to ask for its last sample (``ContentionMonitor.stop``).
SAMPLER_STOP = "stop"


class ContentionMonitor:
    """The driver's side: snapshots before the first engine and at the end, and a sampler
    **process** in between (every ``interval_s``, at nice 19), so that the sampling never holds
    the driver's GIL while its client timestamps tokens."""

    def __init__(self, devices: list[Device], interval_s: float = SAMPLE_S):
        self.state = ContentionState(devices, interval_s=interval_s)
        self.interval_s = interval_s
        self._proc: subprocess.Popen | None = None
        self._out: Path | None = None
        self._sampler: dict[str, Any] | None = None
        self._sampler_error: str | None = None

    @property
    def devices(self) -> list[Device]:
        return self.state.devices

    def snapshot(self) -> dict[str, Any]:
        return self.state.snapshot()

    def add_devices(self, devices: Iterable[Device]) -> None:
        self.state.add_devices(devices)
        self._send_devices()

    def _send_devices(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps(_devices_json(self.state.devices)) + "\n")
                self._proc.stdin.flush()
            except OSError:
                pass

    def start(self) -> "ContentionMonitor":
        fd, out = tempfile.mkstemp(prefix="cr-contention-", suffix=".json")
        os.close(fd)
        self._out = Path(out)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])   # this very code, whatever is installed
        env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "context_research.device_lock", "sample", "--root", str(os.getpid()),
                 "--interval", str(self.interval_s), "--out", out,
                 "--devices", json.dumps(_devices_json(self.state.devices))],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        except OSError as exc:
            self._sampler_error = f"the sampler did not start: {exc}"
        return self

    def stop(self) -> None:
        """Ask the sampler for its last sample and record (``stop``, then closing its stdin), then
        read it. An end of its stdin without ``stop`` means this driver died: the sampler then
        removes its record itself."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        try:
            proc.stdin.write(SAMPLER_STOP + "\n")
            proc.stdin.flush()
        except OSError:
            pass
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            self._sampler = json.loads(self._out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self._sampler_error = f"the sampler left no record (exit {proc.returncode}): {exc}"
        finally:
            self._out.unlink(missing_ok=True)

    def summary(self) -> dict[str, Any]:
        out = _combine(self.state.summary(), self._sampler)
        if self._sampler_error:
            out["sampler_error"] = self._sampler_error
        return out


def _devices_json(devices: Iterable[Device]) -> list[list[str | None]]:
    return [[d.key, d.label, d.gpu_uuid] for d in devices]


def _sampler_main(argv: list[str]) -> int:
    """``python -m context_research.device_lock sample --root PID ...``: sample every
    ``--interval`` s what runs beside the driver ``--root``, writing the record to ``--out``
    after each sample; a JSON line on stdin replaces the device list; end of stdin (or the
    driver gone) ends it, after a last sample."""
    import argparse
    import select

    parser = argparse.ArgumentParser(prog="context_research.device_lock sample")
    parser.add_argument("--root", type=int, required=True)
    parser.add_argument("--interval", type=float, default=SAMPLE_S)
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", default="[]")
    args = parser.parse_args(argv)
    try:
        os.nice(19)   # never ahead of the engine it watches
    except OSError:
        pass
    out = Path(args.out)
    tmp = Path(args.out + ".tmp")

    def discard(*_):   # nobody will read the record
        for p in (out, tmp):
            p.unlink(missing_ok=True)

    # Ctrl-C and a closed terminal reach the driver's whole process group: the driver decides
    # when this sampler ends (``stop`` on stdin), so neither may end it with a traceback.
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: (discard(), os._exit(0)))
    state = ContentionState([Device(*d) for d in json.loads(args.devices)], root=args.root,
                            interval_s=args.interval)

    def sample() -> None:
        ours = state.ours()
        state.sample_cpu(ours)
        state.snapshot(engines_running=True, ours=ours)
        tmp.write_text(json.dumps(state.summary()), encoding="utf-8")
        os.replace(tmp, out)

    state.sample_cpu(state.ours())
    next_at = time.monotonic() + args.interval
    while os.getppid() == args.root:
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, next_at - time.monotonic()))
        if ready:
            line = sys.stdin.readline()
            if not line:   # stdin closed without "stop": the driver died (a SIGKILL)
                break
            if line.strip() == SAMPLER_STOP:
                sample()   # the last sample, for the driver to read
                return 0
            state.devices = [Device(*d) for d in json.loads(line)]
            continue
        sample()
        next_at = time.monotonic() + args.interval
    discard()   # the driver is gone
    return 0


def contention_flags(summary: Mapping[str, Any], devices: list[Device]) -> list[str]:
    """Why a run's numbers may be disturbed (empty: no sign of contention).

    * another vLLM engine on the host while the run's device is the CPU (for a GPU run it counts
      only on the run's GPUs: NVML processes there that are not ours);
    * other processes using at least a quarter of the host's cores (half a core at least) over
      some ``WINDOW_S`` stretch of the run.

    The load average is recorded, not judged: it counts the run's own engine threads and lags a
    minute behind (a run that starts right after another inherits its load), so on a small host
    it exceeds the CPU count with nothing else running.
    """
    reasons = []
    cpus = summary.get("cpus") or os.cpu_count() or 1
    engines = summary.get("other_engines") or []
    if engines and any(d.key == "cpu" for d in devices):
        reasons.append(f"{len(engines)} other vLLM engine process(es) ran on this host during the run: "
                       + ", ".join(f"pid {e['pid']} ({e['command'][:60]})" for e in engines[:4]))
    for key, procs in ((summary.get("gpu_processes") or {}).get("other_processes") or {}).items():
        if procs:
            reasons.append(f"{len(procs)} other process(es) computed on GPU {key} during the run: pid "
                           + ", ".join(str(p["pid"]) for p in procs[:8]))
    other = summary.get("other_cpu") or {}
    peak = other.get(f"max_{WINDOW_S:g}s_cores")
    if peak is not None and peak >= max(0.5, 0.25 * cpus):
        reasons.append(f"other processes used {peak:g} of the host's {cpus} cores over {WINDOW_S:g} s "
                       f"({other['mean_cores']:g} on average over the run's {other['over_s']:g} s)")
    return reasons


# -- one run's locks and record -------------------------------------------------------------------
class RunDeviceGuard:
    """The devices one run's real engines occupy: their locks (held until ``close()``) and the
    contention record. ``engine(device, serving)`` before each engine is started."""

    def __init__(self, serving: Mapping[str, Any], *, experiment: str, run_id: str):
        self.mode, self.timeout_s = lock_settings(serving)
        self.experiment, self.run_id = experiment, run_id
        self.devices: list[Device] = []
        self.acquired: list[dict[str, Any]] = []
        self.monitor: ContentionMonitor | None = None
        self.at_engine_start: dict[str, Any] | None = None
        self.at_end: dict[str, Any] | None = None
        self._closed = False

    def engine(self, device: str, serving: Mapping[str, Any]) -> None:
        """Hold the locks of the devices an engine with ``serving`` on ``device`` ("cpu"/"cuda")
        will use (waiting or failing as configured), then record what already runs there."""
        new = [d for d in engine_devices(device, serving) if d not in self.devices]
        for d in sorted(new, key=lambda d: d.key):
            self.acquired.append(acquire(d, mode=self.mode, timeout_s=self.timeout_s,
                                         holder={"experiment": self.experiment, "run_id": self.run_id}))
            self.devices.append(d)
        if self.monitor is None:
            self.monitor = ContentionMonitor(self.devices)
            self.at_engine_start = self.monitor.snapshot()
            self.monitor.start()
        elif new:
            self.monitor.add_devices(new)

    def close(self) -> None:
        """After every engine stopped: a last look, then the locks go (the next run may start)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.monitor is not None:
                self.monitor.stop()
                self.at_end = self.monitor.snapshot()
        finally:
            for d in reversed(self.devices):
                release(d.key)

    def metadata(self) -> dict[str, Any]:
        """The ``device_lock`` and ``contention`` blocks of run_metadata.json."""
        if not self.devices:
            reason = "no real engine started (the simulated backend uses no device)"
            return {"device_lock": {"taken": False, "reason": reason},
                    "contention": {"recorded": False, "reason": reason, "flagged": False, "reasons": []}}
        lock = {"taken": True, "mode": self.mode, "timeout_s": self.timeout_s, "dir": str(lock_dir()),
                "devices": [{"key": a["device"], "label": a["label"], "path": a["path"], "waited_s": a["waited_s"],
                             "waited_for": a["waited_for"]} for a in self.acquired]}
        summary = self.monitor.summary() if self.monitor else {}
        reasons = contention_flags(summary, self.devices)
        return {"device_lock": lock,
                "contention": {"recorded": True, "devices": [d.label for d in self.devices],
                               "at_engine_start": self.at_engine_start, "during_run": summary, "at_end": self.at_end,
                               "flagged": bool(reasons), "reasons": reasons}}

    def notes(self) -> list[str]:
        """Lines for the run's notes: a wait for the lock, and contention."""
        out = []
        for a in self.acquired:
            if a["waited_for"]:
                out.append(f"waited {a['waited_s']:.0f} s for device {a['label']}, held by "
                           f"{describe_holder(a['waited_for'])}")
        meta = self.metadata()["contention"]
        if meta["flagged"]:
            out.append("contention: " + "; ".join(meta["reasons"])
                       + " (run_metadata.json contention block); the timings may be disturbed")
        return out

