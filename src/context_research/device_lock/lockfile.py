"""The lock files (``fcntl.flock`` on ``<lock dir>/<device>.lock``, naming their holder) and the
process-wide registry that takes each device's lock once per process, re-entrantly."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError, ContextResearchError
from .devices import Device
from .processes import short_command, utc_now

LOCK_DIR_ENV = "CONTEXT_RESEARCH_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/context-research-locks"
MODES = ("wait", "fail")
# Defaults of serving.device_lock (workflow/schemas/config.schema.yaml says the same).
DEFAULT_MODE = "wait"
DEFAULT_TIMEOUT_S = 7200.0
POLL_S = 0.5            # how often a waiting run tries the lock again
WAIT_REPORT_S = 30.0    # how often a waiting run says so


class DeviceBusyError(ContextResearchError):
    """The device's engine lock is held by another run (mode ``fail``, or ``wait`` timed out)."""


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
                "label": device.label, "since": utc_now(), "command": short_command(sys.argv), "cwd": os.getcwd(),
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
