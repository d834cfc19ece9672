"""The contention sampler: a child process at nice 19 that samples every few seconds what runs
beside the driver, and ``ContentionMonitor``, the driver's side of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from .contention import SAMPLE_S, ContentionState, combine
from .devices import Device

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
        out = combine(self.state.summary(), self._sampler)
        if self._sampler_error:
            out["sampler_error"] = self._sampler_error
        return out


def _devices_json(devices: Iterable[Device]) -> list[list[str | None]]:
    return [[d.key, d.label, d.gpu_uuid] for d in devices]


def main(argv: list[str]) -> int:
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
