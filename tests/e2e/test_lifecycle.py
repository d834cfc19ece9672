"""Nothing outlives its parent, on the real engine through Snakemake: one engine start.

1. The rule's shell dies (SIGKILL) while the e0 driver is starting its engine. The driver is
   frozen first and resumed only after Snakemake has recorded the failure, so it "carries on"
   exactly as it did when this was found: it must stop by itself, stop its engine and leave
   nothing that makes Snakemake take the job as done.
2. The plain command redoes the job; once its engine is healthy, the driver is SIGKILLed: no
   process of that engine may remain (the engine's own watchdog, context_research.watchdog).

And a closed terminal (SIGHUP to the whole session) after E1's first point: the point is kept,
nothing is left behind, and the plain command resumes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

from .conftest import REPO, VENV_BIN, copy_checkout, run_snakemake, snakemake_cmd

pytestmark = pytest.mark.e2e

MODEL = "resources/models/embedded-qwen3"
TARGET = "results/e0/summary.json"
ENGINE_GONE_S = 60      # after the driver is SIGKILLed
DRIVER_GONE_S = 120     # after the orphaned driver resumes (its engine stop waits up to 40 s)
STARTUP_S = 900         # serving.startup_timeout_s


def _start_snakemake(workdir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("CONTEXT_RESEARCH_CACHE", str(REPO / ".cache"))  # reuse compile caches
    # Its own session: whatever the test leaves behind is found and stopped in `finally`.
    return subprocess.Popen([*snakemake_cmd(), "--cores", "1", TARGET], cwd=workdir, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(predicate, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"snakemake exited ({proc.returncode}) while waiting for {what}:\n"
                        f"{log.read_text(errors='replace')[-4000:] if log else ''}")
        time.sleep(0.2)
    pytest.fail(f"gave up after {timeout:g} s waiting for {what}")


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group(pgid: int) -> list[psutil.Process]:
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _descendant(root: psutil.Process, *needles: str) -> psutil.Process | None:
    try:
        for p in root.children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if all(n in cmd for n in needles) and p.status() != psutil.STATUS_ZOMBIE:
                return p
    except psutil.Error:
        pass
    return None


def _driver(snakemake: subprocess.Popen) -> psutil.Process | None:
    """``context-research run e0`` itself (a Python process), not the bash running it."""
    try:
        for p in psutil.Process(snakemake.pid).children(recursive=True):
            try:
                cmd = p.cmdline()
                if (len(cmd) > 3 and os.path.basename(cmd[1]) == "context-research" and cmd[2:4] == ["run", "e0"]
                        and p.status() != psutil.STATUS_ZOMBIE):
                    return p
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return None


def _server(driver: psutil.Process) -> psutil.Process | None:
    return _descendant(driver, "context_research.backends.vllm_cli", "serve")


def _healthy(server: psutil.Process) -> bool:
    cmd = server.cmdline()
    port = cmd[cmd.index("--port") + 1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _would_rerun_e0(workdir: Path) -> bool:
    proc = run_snakemake(workdir, "-n", TARGET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return "\ne0 " in proc.stdout.split("Job stats")[-1]


def test_nothing_outlives_its_parent(workflow_dir, tmp_path):
    workdir = copy_checkout(tmp_path / "wf")
    shutil.copytree(workflow_dir / MODEL, workdir / MODEL)   # the shared run's model: no second build
    assert _would_rerun_e0(workdir)
    sessions: list[int] = []
    groups: list[int] = []
    try:
        # -- 1. the rule's shell is SIGKILLed ------------------------------------------------
        log_a = tmp_path / "snakemake-1.log"
        sm = _start_snakemake(workdir, log_a)
        sessions.append(sm.pid)
        driver = _wait_for(lambda: _driver(sm), "the e0 driver", STARTUP_S, sm, log_a)
        server = _wait_for(lambda: _server(driver), "the driver to start its engine", STARTUP_S, sm, log_a)
        groups.append(server.pid)
        shell = driver.parent()
        assert shell.name() == "bash", shell.cmdline()
        driver.suspend()
        shell.kill()
        assert sm.wait(120) != 0
        assert "Error in rule e0" in log_a.read_text(errors="replace")
        t0 = time.monotonic()
        driver.resume()  # it carries on after Snakemake has recorded the failure
        _wait_for(lambda: _gone(driver), "the orphaned driver to stop", DRIVER_GONE_S)
        driver_s = time.monotonic() - t0
        _wait_for(lambda: _gone(server) and not _group(server.pid), "its engine to stop", ENGINE_GONE_S)
        assert "is gone: stopping" in (workdir / "logs/e0.log").read_text(errors="replace")
        assert not (workdir / "results/e0/run_metadata.json").exists()
        assert _would_rerun_e0(workdir), "a failed e0 was taken as done"

        # -- 2. the plain command redoes it; its driver is SIGKILLed ----------------------------
        log_b = tmp_path / "snakemake-2.log"
        sm = _start_snakemake(workdir, log_b)
        sessions.append(sm.pid)
        driver = _wait_for(lambda: _driver(sm), "the rerun's e0 driver", STARTUP_S, sm, log_b)
        server = _wait_for(lambda: _server(driver), "the rerun's engine", STARTUP_S, sm, log_b)
        groups.append(server.pid)
        _wait_for(lambda: _healthy(server), "the engine to become healthy", STARTUP_S, sm, log_b)
        engine = {server, *server.children(recursive=True)}
        # vLLM's processes stay in the server's process group, the unit that is stopped
        assert len(engine) >= 2 and {p.pid for p in engine} <= {p.pid for p in _group(server.pid)}
        t0 = time.monotonic()
        driver.kill()
        _wait_for(lambda: all(_gone(p) for p in engine) and not _group(server.pid),
                  f"every engine process ({sorted(p.pid for p in engine)}) to stop", ENGINE_GONE_S)
        engine_s = time.monotonic() - t0
        assert sm.wait(120) != 0
        assert _would_rerun_e0(workdir)
        print(f"\nlifecycle: orphaned driver stopped {driver_s:.1f} s after resuming; "
              f"engine gone {engine_s:.1f} s after its driver was SIGKILLed")
    finally:
        for pgid in [*sessions, *groups]:
            for p in _group(pgid):
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass


FAULT_CONFIG = "experiments:\n  e1: {prompt_tokens: [128, 256, 512], trials: 5, warmup_requests: 1}\n"
E1_ARGS = ["results/e1/latency.csv", "--configfile", "config/config.yaml", "config/fault.yaml"]


def _terminal_defaults():
    """In the child: SIGINT and SIGHUP at their defaults, as a terminal's foreground job has them."""
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _temp_files(snakemake: subprocess.Popen) -> list[Path]:
    """The run's files in /tmp: its engine's temp folder and the contention sampler's record."""
    root = psutil.Process(snakemake.pid)
    server = _descendant(root, "context_research.backends.vllm_cli", "serve")
    sampler = _descendant(root, "context_research.device_lock", "sample")
    assert server is not None and sampler is not None
    cmd = sampler.cmdline()
    return [Path(server.environ()["CONTEXT_RESEARCH_ENGINE_TMPDIR"]), Path(cmd[cmd.index("--out") + 1])]


def test_a_closed_terminal_keeps_the_finished_point_and_the_plain_command_resumes(workflow_dir, tmp_path):
    """SIGHUP to the whole session after E1's first point (a closed terminal): Snakemake releases
    its lock, the driver stops its engine without a traceback and keeps that point in .partial, no
    process or /tmp/cr-* file of the run is left, and the plain command then runs E1 to its end."""
    workdir = copy_checkout(tmp_path / "wf")
    shutil.copytree(workflow_dir / MODEL, workdir / MODEL)
    (workdir / "config" / "fault.yaml").write_text(FAULT_CONFIG)
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("CONTEXT_RESEARCH_CACHE", str(REPO / ".cache"))
    log = tmp_path / "snakemake-hup.log"
    sm = subprocess.Popen([*snakemake_cmd(), "--cores", "1", *E1_ARGS], cwd=workdir, env=env, stdout=log.open("w"),
                          stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_terminal_defaults)
    try:
        e1_log = workdir / "logs" / "e1.log"
        _wait_for(lambda: e1_log.exists() and "[e1 1/" in e1_log.read_text(errors="replace"),
                  "E1's first point", STARTUP_S, sm, log)
        temp_files = _temp_files(sm)
        assert all(p.exists() for p in temp_files)
        os.killpg(sm.pid, signal.SIGHUP)
        assert sm.wait(120) != 0
        _wait_for(lambda: not _group(sm.pid), "every process of the session to end", DRIVER_GONE_S)
    finally:
        for p in _group(sm.pid):
            p.kill()
    text = e1_log.read_text(errors="replace")
    assert "received SIGHUP; the engine was stopped" in text and "Traceback" not in text, text[-3000:]
    assert not list((workdir / ".snakemake" / "locks").glob("*")), "Snakemake's lock was left behind"
    kept = next((workdir / "results" / "e1.partial").iterdir())
    assert list(pd.read_csv(kept / "latency.csv")["prompt_tokens"]) == [128] and (kept / "engine.log").exists()
    assert not [p for p in temp_files if p.exists()], "a /tmp/cr-* file of the run was left"

    rerun = run_snakemake(workdir, *E1_ARGS)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert list(pd.read_csv(workdir / "results" / "e1" / "latency.csv")["prompt_tokens"]) == [128, 256, 512]
