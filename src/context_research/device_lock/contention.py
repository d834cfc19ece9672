"""The record of what ran beside a run: ``ContentionState`` adds up the samples (load average,
other engines, GPU processes, other processes' CPU time) and ``contention_flags`` says which of them
may have disturbed the run's numbers."""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Mapping

from .devices import Device
from .processes import OurProcesses, gpu_processes, other_engines, utc_now

SAMPLE_S = 5.0          # contention sampling interval over a run
WINDOW_S = 30.0         # other processes' CPU use is judged over stretches this long


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
        snap = {"at": utc_now(), "load_avg": _load(), "cpus": self.cpus, "other_engines": other_engines(ours),
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


def combine(ours: dict[str, Any], sampler: dict[str, Any] | None) -> dict[str, Any]:
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
