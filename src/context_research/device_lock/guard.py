"""One run's device locks and contention record, for ``experiments.runner.ExperimentRun``."""

from __future__ import annotations

from typing import Any, Mapping

from .contention import contention_flags
from .devices import Device, engine_devices
from .lockfile import acquire, describe_holder, lock_dir, lock_settings, release
from .sampler import ContentionMonitor

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
