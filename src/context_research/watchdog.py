"""Nothing we start outlives the process that started it.

A SIGKILLed driver or a killed rule shell runs no ``finally`` and no signal handler, so the
processes below it cannot count on being stopped: each watches its own parent instead. A daemon
thread polls (every ``POLL_S``) whether the watched process is still there and, once it is gone,
runs an action:

* the driver (``context-research ...`` in a rule's shell, see ``cli.main``) calls
  ``die_with_parent()``: when the rule's shell dies, the driver stops as on SIGTERM (the run stops
  its engines and writes no metadata), and is SIGKILLed if it is still alive ``DRIVER_GRACE_S``
  later; from that point on ``orphaned()`` is true and ``io.atomic_path`` keeps no artifact;
* the vLLM server (``backends/vllm_cli.py``, started in its own session by ``vllm_server``) calls
  ``stop_group_with_driver()`` with the driver's pid from ``CONTEXT_RESEARCH_DRIVER_PID``: when
  the driver dies, the server SIGTERMs its process group (the server and vLLM's engine workers)
  and a small reaper in its own session SIGKILLs whatever is left ``ENGINE_GRACE_S`` later.

Polling the parent pid works for any thread of the parent, unlike ``PR_SET_PDEATHSIG``, which
fires when the *thread* that forked exits (E3 starts engines from worker threads).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

POLL_S = 0.5
DRIVER_PID_ENV = "CONTEXT_RESEARCH_DRIVER_PID"
ENGINE_TMPDIR_ENV = "CONTEXT_RESEARCH_ENGINE_TMPDIR"
ENGINE_TMPDIR_PREFIX = "cr-engine-"
# After SIGTERM: how long the engine's processes get to exit before SIGKILL.
ENGINE_GRACE_S = 10.0
# After SIGTERM: how long an orphaned driver gets to stop its engines (vllm_server.stop waits up to
# 30 s + 10 s) before it is SIGKILLed; its engines then stop themselves (above).
DRIVER_GRACE_S = 60.0


class ParentWatch:
    """Is the process that started us (``pid``; default: our parent) still there?

    For our own parent the answer is exact: the kernel reparents us the moment it exits, so
    ``os.getppid()`` changes. For another pid, the process must still exist, not be a zombie, and
    be the same process (same start time) as when we started watching.
    """

    def __init__(self, pid: int | None = None):
        self.pid = os.getppid() if pid is None else int(pid)
        self.direct = os.getppid() == self.pid
        self._create_time: float | None = None
        if not self.direct:
            self._create_time = self._start_time_if_older_than_us(self.pid)

    @staticmethod
    def _start_time_if_older_than_us(pid: int) -> float | None:
        import psutil

        try:
            created = psutil.Process(pid).create_time()
            # The process that started us is older than we are; a younger one reuses its pid.
            return created if created <= psutil.Process().create_time() else None
        except psutil.Error:
            return None

    def gone(self) -> bool:
        if self.direct:
            return os.getppid() != self.pid
        if self._create_time is None:
            return True
        import psutil

        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() != self._create_time or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True


class Watchdog:
    """A daemon thread that runs ``action()`` once, as soon as the watched process is gone."""

    def __init__(self, action: Callable[[], None], pid: int | None = None, *, interval_s: float = POLL_S,
                 name: str = "parent-watchdog"):
        self.parent = ParentWatch(pid)
        self.action = action
        self.interval_s = interval_s
        self.fired = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            if self.parent.gone():
                self.fired.set()
                self.action()
                return
            self._stopped.wait(self.interval_s)


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"context-research: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


# -- the driver ------------------------------------------------------------------------------
_driver: Watchdog | None = None
# Set once this process has begun to stop (a signal reached the run, experiments.runner): the
# watchdog then sends no SIGTERM of its own, which would only interrupt that cleanup.
stopping = threading.Event()


def die_with_parent(grace_s: float = DRIVER_GRACE_S, interval_s: float = POLL_S) -> Watchdog:
    """This process stops as on SIGTERM when its parent dies (unless it is stopping already), and
    is SIGKILLed ``grace_s`` later if it is still alive. Idempotent."""
    global _driver
    if _driver is None:
        def terminate_self() -> None:
            if stopping.is_set():
                _say(f"the process that started this one (pid {_driver.parent.pid}) is gone; "
                     "this one is already stopping")
            else:
                _say(f"the process that started this one (pid {_driver.parent.pid}) is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(grace_s)
            _say(f"still running {grace_s:g} s after SIGTERM: killing this process")
            os.kill(os.getpid(), signal.SIGKILL)

        _driver = Watchdog(terminate_self, interval_s=interval_s, name="driver-watchdog")
        _driver.start()
    return _driver


def hangup_stops_like_ctrl_c() -> bool:
    """In Snakemake's own process (``common.smk``): a closed terminal (SIGHUP) stops it the way
    Ctrl-C does, through its own cleanup, which releases its lock on the working directory (by
    default SIGHUP kills it on the spot and leaves the lock, so the plain command would not rerun).
    Only the first SIGHUP counts; a later one is ignored so it cannot abort that cleanup. A
    SIGHUP the process was started to ignore (``nohup``) stays ignored. Returns whether it is on."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL:
        return False

    def on_hangup(signum, frame):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _say("the terminal was closed (SIGHUP): stopping as on Ctrl-C")
        raise KeyboardInterrupt

    signal.signal(signal.SIGHUP, on_hangup)
    return True


def unremovable_outputs_say_so(job_class=None) -> bool:
    """In Snakemake's own process (``common.smk``): Snakemake deletes a failed job's outputs, and
    one it cannot delete (a results folder that turned read-only) ended its run in a raw
    traceback. Now one line says which file stays and why; the run kept its records in
    ``results/<eN>.partial/`` before. Wraps ``job_class.cleanup`` (default Snakemake's ``Job``);
    returns whether it did (a Snakemake without that coroutine is left as it is)."""
    import inspect

    if job_class is None:
        try:
            from snakemake.jobs import Job as job_class
        except ImportError:
            return False
    original = getattr(job_class, "cleanup", None)
    if not inspect.iscoroutinefunction(original) or getattr(original, "_context_research", False):
        return False

    async def cleanup(self, *args, **kwargs):
        try:
            return await original(self, *args, **kwargs)
        except OSError as exc:
            _say(f"could not remove {exc.filename or 'an output'} of the failed job {self} ({exc.strerror or exc}): "
                 "it stays; what the run measured is kept in results/<eN>.partial/")

    cleanup._context_research = True
    job_class.cleanup = cleanup
    return True


def orphaned() -> bool:
    """True when ``die_with_parent()`` is on and the parent it watches is gone: whatever this
    process writes now, nobody accepts it (the rule has already failed)."""
    return _driver is not None and _driver.parent.gone()


class Orphaned(BaseException):
    """An artifact was written after the process that started this one had gone, and was taken
    back (``io.atomic_path``). A BaseException, so no ``except Exception`` of a sweep keeps going."""

    def __init__(self, path):
        super().__init__(f"the process that started this one is gone; {path} was not kept")
        self.path = path


# -- the engine ------------------------------------------------------------------------------
# Runs in its own session with only the standard library: waits for the group to empty, then
# SIGKILLs what is left, then removes the engine's temp folder.
_REAPER = r"""
import os, shutil, signal, sys, time
pgid, grace, tmpdir = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + grace
while True:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        break
    if time.monotonic() >= deadline:
        sys.stderr.write("context-research: engine processes still alive %g s after SIGTERM: SIGKILL\n" % grace)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    time.sleep(0.2)
if tmpdir and os.path.basename(tmpdir.rstrip("/")).startswith(sys.argv[4]):
    shutil.rmtree(tmpdir, ignore_errors=True)
"""


def spawn_reaper(pgid: int, grace_s: float, tmpdir: str | None = None) -> subprocess.Popen:
    """SIGKILL process group ``pgid`` ``grace_s`` from now unless it is empty by then; from a
    process outside the group, so the escalation survives the group's SIGTERM."""
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", _REAPER, str(pgid), str(grace_s), tmpdir or "",
                             ENGINE_TMPDIR_PREFIX],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)


def stop_own_group(grace_s: float = ENGINE_GRACE_S, tmpdir: str | None = None) -> None:
    """SIGTERM this process's group (SIGKILL after ``grace_s``) when this process leads it; else
    only this process and its descendants (never a group we do not own, such as a shell's)."""
    if os.getpgrp() == os.getpid():
        pgid = os.getpid()
        try:
            spawn_reaper(pgid, grace_s, tmpdir)
        except Exception as exc:  # still stop the group; the thread below escalates if it can
            _say(f"could not start the engine reaper ({exc})")
        os.killpg(pgid, signal.SIGTERM)
        time.sleep(grace_s)
        os.killpg(pgid, signal.SIGKILL)
        return
    import psutil

    procs = psutil.Process().children(recursive=True)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=grace_s)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def stop_group_with_driver(driver_pid: int, grace_s: float = ENGINE_GRACE_S, tmpdir: str | None = None,
                           interval_s: float = POLL_S) -> Watchdog:
    """In the engine server: stop this process group once the driver ``driver_pid`` is gone."""
    def stop() -> None:
        _say(f"the driver (pid {driver_pid}) is gone: stopping the engine (process group {os.getpgrp()})")
        stop_own_group(grace_s, tmpdir)

    return Watchdog(stop, driver_pid, interval_s=interval_s, name="engine-watchdog").start()
