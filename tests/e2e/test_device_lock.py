"""Two invocations at once: a run whose device is taken waits or fails with the lock message.

This test process plays the first invocation: it holds the engine lock of every device an e0
engine would use (in a temp lock folder), the way a running ``context-research run`` does. Then,
in a fresh copy of the checkout (the shared run's model copied in, so nothing is rebuilt):

1. ``snakemake -f results/e0/summary.json`` with ``serving.device_lock.mode: fail`` fails at once,
   its log naming this process as the holder, and starts no engine;
2. the same with the default mode ``wait`` waits, saying for whom, until it is stopped; it
   starts no engine either, and nothing of it remains.

No engine starts in this file.
"""

from __future__ import annotations

import os
import signal
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from context_research.experiments.catalog import EXPERIMENTS

from .conftest import REPO, VENV_BIN, copy_checkout, run_snakemake, snakemake_cmd

pytestmark = pytest.mark.e2e

MODEL = "resources/models/embedded-qwen3"
TARGET = "results/e0/summary.json"
HOLDER = {"experiment": "e2e-test", "run_id": "held-by-test_device_lock"}
FAIL_MODE = ["--config", 'serving={"device_lock": {"mode": "fail"}}']
# Bounds, not measurements: e0 starts its engine three times (about 85 s each on 2 CPU cores),
# so a run that got past the lock could not end within this.
FAIL_WITHIN_S = 240
SEEN_WAITING_S = 240
GONE_S = 120


def hold_e0_devices(workdir: Path) -> list[str]:
    """Take, in this process, the locks of every device an e0 engine of ``workdir``'s config uses."""
    from context_research.backends.vllm_server import resolve_device
    from context_research.config import load_config
    from context_research.device_lock.devices import engine_devices
    from context_research.device_lock.lockfile import acquire

    serving = load_config(workdir / "config" / "config.yaml", experiments=EXPERIMENTS)["serving"]
    keys = []
    for device in engine_devices(resolve_device(serving), serving):
        acquire(device, mode="fail", holder=HOLDER)
        keys.append(device.key)
    return keys


def release(keys: list[str]) -> None:
    from context_research.device_lock.lockfile import release as release_lock

    for key in keys:
        release_lock(key)


def _no_engine_was_started(workdir: Path) -> None:
    results = workdir / "results"
    assert not list(results.glob("e0/engine*.log")), "an engine log was written"
    assert not (results / "e0.partial").exists(), "the run wrote files (kept in e0.partial)"
    assert not (results / "e0" / "run_metadata.json").exists()


def check_fail_mode(workdir: Path) -> str:
    """Mode fail: the rule fails at once with the lock message naming this process. Returns the log."""
    keys = hold_e0_devices(workdir)
    try:
        t0 = time.monotonic()
        proc = run_snakemake(workdir, "-f", TARGET, *FAIL_MODE, timeout=FAIL_WITHIN_S)
        elapsed = time.monotonic() - t0
    finally:
        release(keys)
    log = (workdir / "logs" / "e0.log").read_text(errors="replace")
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "Error in rule e0" in proc.stdout + proc.stderr
    assert "context-research: error: device " in log and " is in use: pid " f"{os.getpid()} (e2e-test, run " \
        f"{HOLDER['run_id']}" in log, log
    assert "serving.device_lock.mode is 'fail'" in log, log
    _no_engine_was_started(workdir)
    print(f"\nfail mode: snakemake ended after {elapsed:.1f} s; logs/e0.log:\n{log}")
    return log


def _start_snakemake(workdir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("CONTEXT_RESEARCH_CACHE", str(REPO / ".cache"))
    return subprocess.Popen([*snakemake_cmd(), "--cores", "1", "-f", TARGET], cwd=workdir, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _drivers(workdir: Path) -> list[psutil.Process]:
    """``context-research run e0`` processes working in ``workdir``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if (len(cmd) > 3 and os.path.basename(cmd[1]) == "context-research" and cmd[2:4] == ["run", "e0"]
                    and p.cwd() == str(workdir) and p.status() != psutil.STATUS_ZOMBIE):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _wait_for(predicate, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"gave up after {timeout:g} s waiting for {what}")


def check_wait_mode(workdir: Path, tmp: Path) -> str:
    """Mode wait (the default): the rule waits, saying for whom, and starts nothing; stopped, it
    leaves no process. Returns the waiting lines."""
    keys = hold_e0_devices(workdir)
    sm_log = tmp / "snakemake-wait.log"
    sm = _start_snakemake(workdir, sm_log)
    log = workdir / "logs" / "e0.log"
    try:
        waiting = "context-research: e0 waiting for device "
        holder = f": held by pid {os.getpid()} (e2e-test, run {HOLDER['run_id']}"

        def seen():
            if sm.poll() is not None:
                pytest.fail(f"snakemake ended ({sm.returncode}) instead of waiting:\n"
                            f"{sm_log.read_text(errors='replace')[-3000:]}\n"
                            f"{log.read_text(errors='replace') if log.exists() else ''}")
            text = log.read_text(errors="replace") if log.exists() else ""
            return [line for line in text.splitlines() if line.startswith(waiting) and holder in line]

        lines = _wait_for(seen, "the waiting line in logs/e0.log", SEEN_WAITING_S)
        drivers = _drivers(workdir)
        assert len(drivers) == 1, drivers
        _no_engine_was_started(workdir)
        assert not any("vllm_cli" in " ".join(c.cmdline()) for c in drivers[0].children(recursive=True))
        os.killpg(sm.pid, signal.SIGTERM)   # stop the waiting invocation
        sm.wait(GONE_S)
        _wait_for(lambda: not _drivers(workdir), "the waiting driver to stop", GONE_S)
        _no_engine_was_started(workdir)
    finally:
        release(keys)
        if sm.poll() is None:
            os.killpg(sm.pid, signal.SIGKILL)
            sm.wait(GONE_S)
    print("\nwait mode: " + "\n".join(lines))
    return "\n".join(lines)


def fresh_copy(dest: Path, model_from: Path) -> Path:
    workdir = copy_checkout(dest)
    shutil.copytree(model_from / MODEL, workdir / MODEL)   # the shared run's model: no second build
    return workdir


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    # The run under test inherits it (run_snakemake passes this environment on).
    monkeypatch.setenv("CONTEXT_RESEARCH_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_a_second_invocation_fails_with_the_lock_message_in_mode_fail(workflow_dir, tmp_path, lock_dir):
    check_fail_mode(fresh_copy(tmp_path / "wf", workflow_dir))


def test_a_second_invocation_waits_with_the_lock_message_by_default(workflow_dir, tmp_path, lock_dir):
    check_wait_mode(fresh_copy(tmp_path / "wf", workflow_dir), tmp_path)
