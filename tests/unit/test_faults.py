"""Faults during a run keep every measured record (issue 26), on the simulated backend:

* a results folder that turns read-only after the engine measured: every table, the per-request
  records and the summary go to ``results/<eN>.partial/<run>/``, and the error lists them;
* Ctrl-C (or SIGTERM/SIGHUP) after a point: the finished point is kept; a second signal during
  the cleanup does not abort it, and the driver watchdog sends no SIGTERM of its own then; a
  driver killed by SIGKILL keeps its finished points too (written after each point);
* Snakemake's own process stops on a closed terminal as on Ctrl-C, so it releases its lock;
* an error whose message names a file of the results folder names the kept copy instead;
* the engine dies: E0 fails instead of blaming reproducibility, the point in flight says
  "engine died" with the engine's own reason.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from context_research import io, watchdog
from context_research.config import validate_config
from context_research.engine_log import exit_description
from context_research.errors import ContextResearchError, EngineDiedError, EngineStartError
from context_research.experiments import e0, e1
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.runner import Terminated, run_declared
from context_research.workload.checks import died_in_flight
from context_research.workload.progress import PointProgress

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def simulated(monkeypatch):
    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")


def _e1_config(tiny_model, **e1_cfg):
    return validate_config({
        "model_profile": "m", "models": {"m": {"source": str(tiny_model), "max_model_len": 512}},
        "serving": {"backend": "simulated", "device": "cpu"},
        "experiments": {"e1": {"prompt_tokens": [16, 32, 64], "max_tokens": 4, "trials": 3, "warmup_requests": 1, "warmup_max_requests": 1,
                               **e1_cfg}}}, experiments=EXPERIMENTS)


def _kept(out: Path) -> Path:
    runs = list(out.with_name(f"{out.name}.partial").iterdir())
    assert len(runs) == 1
    return runs[0]


# -- a results folder that refuses writes after the engine measured ------------------------------
def test_a_read_only_results_folder_keeps_every_record_and_lists_them(tiny_model, tmp_path, simulated, monkeypatch):
    from context_research.backends.simulated import SimulatedBackend

    out = tmp_path / "results" / "e1"
    real_temp, real_start = io._new_temp_file, SimulatedBackend.start
    read_only = []

    def new_temp_file(target: Path) -> Path:   # what a read-only mount answers to a new file there
        if read_only and target.parent == out:
            raise OSError(errno.EROFS, "Read-only file system", str(target))
        return real_temp(target)

    def start(self):   # the folder turns read-only once the engine is up
        real_start(self)
        read_only.append(True)

    monkeypatch.setattr(io, "_new_temp_file", new_temp_file)
    monkeypatch.setattr(SimulatedBackend, "start", start)
    with pytest.raises(ContextResearchError) as err:
        run_declared(e1.EXPERIMENT, _e1_config(tiny_model), out)
    kept = _kept(out)
    assert sorted(p.name for p in kept.iterdir()) == ["FAILED.txt", "engine.log", "latency.csv", "requests.csv",
                                                     "summary.json"]
    assert len(pd.read_csv(kept / "latency.csv")) == 3
    assert len(pd.read_csv(kept / "requests.csv")) == 3 * (1 + 3)   # warmup + trials per length
    assert json.loads((kept / "summary.json").read_text())["points"] == 3
    message = str(err.value)
    assert f"could not write {out / 'latency.csv'} (Read-only file system)" in message
    for name, what in (("latency.csv", " (3 rows)"), ("requests.csv", " (12 rows)"), ("summary.json", "")):
        assert f"{kept / name}{what}" in message
    assert not (out / "run_metadata.json").exists()


# -- signals -----------------------------------------------------------------------------------
def _signal_after_first_point(monkeypatch, signum: int, again: int | None = None):
    """Send ``signum`` to this process once E1's first point is done; ``again`` (if given) while
    the run stops its engine, as a second Ctrl-C or the watchdog's SIGTERM would."""
    real_point = PointProgress.point
    sent = []

    def point(self, label, outcome):
        real_point(self, label, outcome)
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(PointProgress, "point", point)
    if again is not None:
        from context_research.backends.simulated import SimulatedBackend

        def stop(self):
            os.kill(os.getpid(), again)   # ignored: the cleanup goes on
            stop.stopped = True

        stop.stopped = False
        monkeypatch.setattr(SimulatedBackend, "stop", stop)
        return stop
    return None


@pytest.fixture
def restore_signals():
    """The signals as a terminal gives them, put back afterwards. A run leaves a signal its
    process was started with ignored as it is (``nohup``), and a shell without job control starts
    its background jobs (``cmd &``) with SIGINT ignored: without this, such a test session would
    see no Ctrl-C at all."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    watchdog.stopping.clear()


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGHUP, Terminated),
                                            (signal.SIGTERM, Terminated)])
def test_a_signal_after_a_point_keeps_that_point(tiny_model, tmp_path, simulated, monkeypatch, restore_signals,
                                                 capsys, signum, raised):
    out = tmp_path / "results" / "e1"
    _signal_after_first_point(monkeypatch, signum)
    with pytest.raises(raised):
        run_declared(e1.EXPERIMENT, _e1_config(tiny_model), out)
    kept = _kept(out)
    latency = pd.read_csv(kept / "latency.csv")
    assert list(latency["prompt_tokens"]) == [16] and list(latency["status"]) == ["ok"]
    assert len(pd.read_csv(kept / "requests.csv")) == 1 + 3
    assert (kept / "engine.log").exists()
    assert watchdog.stopping.is_set()   # the driver watchdog will not SIGTERM this cleanup
    assert "Traceback" not in capsys.readouterr().err


def test_a_second_signal_does_not_abort_the_cleanup(tiny_model, tmp_path, simulated, monkeypatch, restore_signals,
                                                    capsys):
    out = tmp_path / "results" / "e1"
    stop = _signal_after_first_point(monkeypatch, signal.SIGHUP, again=signal.SIGTERM)
    with pytest.raises(Terminated) as err:
        run_declared(e1.EXPERIMENT, _e1_config(tiny_model), out)
    assert err.value.signum == signal.SIGHUP          # the signal that started it is the one named
    assert stop.stopped                               # the engine stop ran to its end
    assert (_kept(out) / "latency.csv").exists()
    assert "SIGTERM while stopping" in capsys.readouterr().err


DRIVER = textwrap.dedent(r"""
    import os, signal, sys, time
    from context_research import watchdog
    got = []
    signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    if sys.argv[2] == "stopping":
        watchdog.stopping.set()
    watchdog.die_with_parent(grace_s=30, interval_s=0.05)
    print("ready", flush=True)
    deadline = time.monotonic() + 10
    while not watchdog._driver.fired.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    open(sys.argv[1], "w").write(f"{watchdog._driver.fired.is_set()} {len(got)}")
""")


@pytest.mark.parametrize("stopping, sigterms", [("stopping", 0), ("running", 1)])
def test_the_driver_watchdog_does_not_sigterm_a_run_that_is_stopping(tmp_path, stopping, sigterms):
    """The rule's shell dies (a closed terminal) while the driver already stops on its own SIGHUP:
    the watchdog only waits; a driver still running is stopped by its SIGTERM as before."""
    result = tmp_path / "result"
    shell = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:], "
                              "stdout=subprocess.PIPE, text=True); print(p.stdout.readline(), end='', flush=True)",
                              sys.executable, "-c", DRIVER, str(result), stopping],
                             env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE, text=True)
    assert shell.stdout.readline().strip() == "ready"
    shell.wait(timeout=60)                                  # the driver's parent is gone
    deadline = 60
    import time

    t0 = time.monotonic()
    while not result.exists() or not result.read_text():
        assert time.monotonic() - t0 < deadline, "the driver never reported"
        time.sleep(0.05)
    assert result.read_text() == f"True {sigterms}"


# -- error messages name files that exist ------------------------------------------------------
def test_an_engine_start_error_names_the_kept_log(tiny_model, tmp_path, simulated, monkeypatch):
    from context_research.backends.simulated import SimulatedBackend

    def start(self):
        io.write_text(self.log_path, "ValueError: the tokenizer could not be loaded\n")
        raise EngineStartError(f"the vLLM server exited with code 1 before it became healthy.\n"
                               f"Last lines of {self.log_path}:\n    ValueError: ...")

    monkeypatch.setattr(SimulatedBackend, "start", start)
    out = tmp_path / "results" / "e1"
    with pytest.raises(EngineStartError) as err:
        run_declared(e1.EXPERIMENT, _e1_config(tiny_model), out)
    kept = _kept(out) / "engine.log"
    assert f"Last lines of {kept}:" in str(err.value) and kept.exists()
    assert str(out / "engine.log") not in str(err.value)


# -- a dead engine -----------------------------------------------------------------------------
def test_e0_fails_when_its_engine_dies_instead_of_blaming_reproducibility(tiny_model, tmp_path, simulated,
                                                                          monkeypatch):
    from context_research.backends.simulated import SimulatedBackend

    monkeypatch.setattr(SimulatedBackend, "exit_reason",
                        lambda self: "engine died: its server was killed by SIGKILL", raising=False)
    config = validate_config({"model_profile": "m", "models": {"m": {"source": str(tiny_model), "max_model_len": 512}},
                              "serving": {"backend": "simulated", "device": "cpu"},
                              "experiments": {"e0": {"engine_starts": 2, "repeats": 2, "requests_per_repeat": 1,
                                                         "warmup_max_requests": 2}}}, experiments=EXPERIMENTS)
    out = tmp_path / "results" / "e0"
    with pytest.raises(EngineDiedError, match="killed by SIGKILL"):
        run_declared(e0.EXPERIMENT, config, out)
    assert not (out / "measured.json").exists()
    assert len(pd.read_csv(_kept(out) / "requests.csv")) == 2 + 8 + 2   # the first start's requests, kept


def test_the_point_in_flight_says_engine_died():
    from context_research.records import RequestRecord

    broken = [RequestRecord("a", 8, error="ClientPayloadError: Response payload is not completed"),
              RequestRecord("b", 8, text="x", output_tokens=1, prompt_tokens=8)]
    why = "engine died: its server was killed by SIGKILL"
    row = died_in_flight({"status": "failed", "reason": "1 of 2 requests failed (first: ClientPayloadError"}, broken, why)
    assert row == {"status": "failed", "reason": why}
    # every request served before the death: the point stands
    whole = [broken[1]]
    assert died_in_flight({"status": "ok", "reason": ""}, whole, why) == {"status": "ok", "reason": ""}
    assert died_in_flight({"status": "failed", "reason": "x"}, broken, None)["reason"] == "x"


LOG = """INFO 11-30 12:00:01 [api_server.py:1] Started server process
ERROR 11-30 12:00:02 [serving.py:9] ValueError: This model's maximum context length is 2048 tokens
INFO 11-30 12:05:00 [loggers.py:1] Engine 000: Avg prompt throughput: 10.0 tokens/s
(EngineCore_DP0 pid=12) ERROR 11-30 12:05:03 [core.py:7] RuntimeError: CPU out of memory while allocating
INFO 11-30 12:05:04 [launcher.py:2] Shutting down FastAPI HTTP server.
"""


def test_a_dead_engines_reason_is_its_signal_or_its_last_error_not_its_last_line():
    killed = exit_description(-9, LOG)
    assert "killed by SIGKILL" in killed and "maximum context length" not in killed and "Shutting down" not in killed
    crashed = exit_description(1, LOG)
    assert crashed.startswith("engine died (exit code 1)") and "RuntimeError: CPU out of memory" in crashed
    assert "Shutting down" not in crashed
    assert "without an error line" in exit_description(1, "INFO 11-30 12:00:01 [x.py:1] bye\n")


HANGUP = textwrap.dedent(r"""
    import os, signal, sys
    from context_research.watchdog import hangup_stops_like_ctrl_c
    if sys.argv[1] == "nohup":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    print(hangup_stops_like_ctrl_c(), flush=True)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        signal.pause() if sys.argv[1] != "nohup" else None
        print("went on", flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        os.kill(os.getpid(), signal.SIGHUP)   # a second one: ignored, the cleanup goes on
        print("cleanup done", flush=True)
""")


@pytest.mark.parametrize("how, expected", [("terminal", ["True", "KeyboardInterrupt", "cleanup done"]),
                                           ("nohup", ["False", "went on"])])
def test_snakemake_stops_on_a_closed_terminal_as_on_ctrl_c(how, expected):
    """common.smk makes Snakemake's SIGHUP a KeyboardInterrupt (its Ctrl-C cleanup releases its
    lock); a second SIGHUP cannot abort that cleanup; under nohup SIGHUP stays ignored."""
    done = subprocess.run([sys.executable, "-c", HANGUP, how], env={**os.environ, "PYTHONPATH": str(SRC)},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:-1] == expected, done.stderr
    assert done.returncode == 0


KILLED = textwrap.dedent(r"""
    import json, os, signal, sys
    from context_research.config import validate_config
    from context_research.experiments import e1
    from context_research.experiments.catalog import EXPERIMENTS
    from context_research.experiments.runner import run_declared
    from context_research.workload.progress import PointProgress

    real_point, calls = PointProgress.point, []

    def point(self, label, outcome):
        calls.append(label)
        if len(calls) == 2:    # during the second point: no cleanup runs after a SIGKILL
            os.kill(os.getpid(), signal.SIGKILL)
        real_point(self, label, outcome)

    PointProgress.point = point
    run_declared(e1.EXPERIMENT, validate_config(json.loads(sys.argv[1]), experiments=EXPERIMENTS), sys.argv[2])
""")


def test_a_driver_killed_by_sigkill_keeps_the_points_finished_before(tiny_model, tmp_path, simulated):
    out = tmp_path / "results" / "e1"
    config = _e1_config(tiny_model)
    done = subprocess.run([sys.executable, "-c", KILLED, json.dumps(config), str(out)],
                          env={**os.environ, "PYTHONPATH": str(SRC), "CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    kept = _kept(out)
    assert list(pd.read_csv(kept / "latency.csv")["prompt_tokens"]) == [16]
    assert len(pd.read_csv(kept / "requests.csv")) == 1 + 3
    assert "never finished" in (kept / "INCOMPLETE.txt").read_text()


def test_a_run_that_succeeds_leaves_no_partial_folder(tiny_model, tmp_path, simulated):
    out = tmp_path / "results" / "e1"
    run_declared(e1.EXPERIMENT, _e1_config(tiny_model), out)
    assert (out / "run_metadata.json").exists() and not out.with_name("e1.partial").exists()


def test_the_engine_log_survives_snakemake_deleting_the_outputs_before_the_cleanup(
        tiny_model, tmp_path, simulated, monkeypatch, restore_signals):
    """After SIGTERM Snakemake removes the job's outputs without waiting for the driver: the engine
    log, linked into .partial before the engine started, is kept whole, its last line included."""
    from context_research.backends.simulated import SimulatedBackend

    def start(self):   # as vllm_server: the engine writes into the file opened at its start
        self.handle = open(self.log_path, "w")
        self.handle.write("INFO engine started\n")
        self.handle.flush()

    def stop(self):
        self.handle.write("INFO engine stopped\n")
        self.handle.close()

    monkeypatch.setattr(SimulatedBackend, "start", start)
    monkeypatch.setattr(SimulatedBackend, "stop", stop)
    out = tmp_path / "results" / "e1"
    real_point = PointProgress.point

    def point(self, label, outcome):
        real_point(self, label, outcome)
        for p in out.iterdir():   # Snakemake's "Removing output files of failed job e1"
            p.unlink()
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PointProgress, "point", point)
    with pytest.raises(Terminated):
        run_declared(e1.EXPERIMENT, _e1_config(tiny_model), out)
    kept = _kept(out)
    assert (kept / "engine.log").read_text() == "INFO engine started\nINFO engine stopped\n"
    assert len(pd.read_csv(kept / "latency.csv")) == 1 and not (kept / "INCOMPLETE.txt").exists()


def test_an_output_snakemake_cannot_remove_is_one_line_not_a_traceback(capsys):
    import asyncio

    class Job:   # Snakemake's Job.cleanup in a read-only results folder
        async def cleanup(self, skip_outputs=()):
            raise OSError(errno.EROFS, "Read-only file system", "results/e1/engine.log")

        def __str__(self):
            return "e1"

    assert watchdog.unremovable_outputs_say_so(Job) and not watchdog.unremovable_outputs_say_so(Job)  # once
    asyncio.run(Job().cleanup([]))
    err = capsys.readouterr().err
    assert "could not remove results/e1/engine.log of the failed job e1 (Read-only file system): it stays" in err
    from snakemake.jobs import Job as SnakemakeJob   # the installed Snakemake still has the coroutine

    import inspect
    assert inspect.iscoroutinefunction(SnakemakeJob.cleanup)
