"""The host-wide device lock (the ``device_lock`` package) with real processes contending for it in a temp
lock folder: the second waits and proceeds (mode wait) or fails naming the holder (mode fail);
re-entrant within a process; released by the kernel when its holder is SIGKILLed. Then how
``ExperimentRun`` takes it and what run_metadata.json records. No engine starts here."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from context_research.backends.vllm_server import VllmServerBackend
from context_research.config import validate_config
from context_research.device_lock import devices as device_ids
from context_research.device_lock.contention import _window_max, contention_flags
from context_research.device_lock.devices import CPU, Device, engine_devices, gpus_per_engine
from context_research.device_lock.lockfile import (DEFAULT_MODE, DEFAULT_TIMEOUT_S, LOCK_DIR_ENV, DeviceBusyError,
                                                   acquire, held_devices, lock_path, lock_settings, read_holder,
                                                   release)
from context_research.device_lock.processes import is_engine_cmdline, other_engines, own_tree
from context_research.device_lock.sampler import ContentionMonitor
from context_research.errors import ConfigError, ContextResearchError
from context_research.experiments import e0, runner
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.runner import ExperimentRun

SRC = Path(__file__).resolve().parents[2] / "src"
WAIT = 60  # bound on every wait for a child process (never reached when things work)

# A child that takes devices, says HELD with what acquire() returned, and releases them and exits
# when a line arrives on stdin (or is killed).
HOLDER = r"""
import json, sys
from context_research.device_lock.devices import Device
from context_research.device_lock.lockfile import DeviceBusyError, acquire, release
mode, experiment, *keys = sys.argv[1:]
out = []
try:
    for key in keys:
        out.append(acquire(Device(key, key), mode=mode, timeout_s=30, poll_s=0.05, report_s=0.2,
                           holder={"experiment": experiment, "run_id": "run-" + experiment}))
except DeviceBusyError as exc:
    print("BUSY " + str(exc), flush=True)
    sys.exit(3)
print("HELD " + json.dumps(out), flush=True)
sys.stdin.readline()
for key in keys:
    release(key)
"""


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    d = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(d))
    yield d
    for key in held_devices():   # a failed test must not leave this process holding one
        while key in held_devices():
            release(key)


def spawn(mode: str, experiment: str, *keys: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    # A new session: no controlling terminal, so waiting lines go to stderr only.
    return subprocess.Popen([sys.executable, "-c", HOLDER, mode, experiment, *keys], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def held(proc: subprocess.Popen) -> list[dict]:
    line = proc.stdout.readline()
    assert line.startswith("HELD "), (line, proc.poll())
    return json.loads(line[5:])


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    if proc.poll() is None and not proc.stdin.closed:
        proc.stdin.write("\n")
        proc.stdin.flush()
    out, err = proc.communicate(timeout=WAIT)
    return out, err


@pytest.fixture
def children():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=WAIT)


def test_second_process_waits_with_a_message_and_proceeds_once_the_first_releases(children):
    first = spawn("wait", "e0", "cpu")
    children.append(first)
    assert held(first)[0]["waited_for"] is None
    second = spawn("wait", "e1", "cpu")
    children.append(second)
    # The second says whom it waits for, and does not hold the device while the first does.
    line = second.stderr.readline()
    assert line.startswith("context-research: e1 waiting for device cpu: held by "
                           f"pid {first.pid} (e0, run run-e0, user "), line
    assert "serving.device_lock.timeout_s 30" in line and "mode: fail refuses instead" in line
    assert second.poll() is None
    finish(first)
    got = held(second)[0]
    assert got["waited_for"]["pid"] == first.pid and got["waited_for"]["experiment"] == "e0"
    assert got["waited_s"] > 0
    # The file now names the second holder.
    holder = read_holder(Path(got["path"]))
    assert holder["pid"] == second.pid and holder["run_id"] == "run-e1" and holder["device"] == "cpu"
    finish(second)
    assert read_holder(Path(got["path"])) == {}   # released: no stale name


def test_fail_mode_refuses_at_once_naming_the_holder_and_the_config_key(children):
    first = spawn("wait", "e0", "cpu")
    children.append(first)
    held(first)
    second = spawn("fail", "e1", "cpu")
    children.append(second)
    out, _ = second.communicate(timeout=WAIT)
    assert second.returncode == 3
    assert out.startswith(f"BUSY device cpu is in use: pid {first.pid} (e0, run run-e0, user ")
    assert "serving.device_lock.mode is 'fail'" in out and "serving.device_lock.mode: wait" in out
    assert str(lock_path(CPU)) in out
    # The same refusal in this process, with the holder's command line and start time.
    with pytest.raises(DeviceBusyError, match=rf"pid {first.pid} \(e0, run run-e0.*\) since .*: .*-c"):
        acquire(CPU, mode="fail")
    finish(first)
    assert acquire(CPU, mode="fail")["waited_for"] is None
    release("cpu")


def test_wait_mode_gives_up_after_its_timeout_naming_the_holder(children):
    first = spawn("wait", "e0", "cpu")
    children.append(first)
    held(first)
    lines: list[str] = []
    with pytest.raises(DeviceBusyError, match=r"serving.device_lock.timeout_s: 0.3\) for device cpu: "
                                                 rf"pid {first.pid} \(e0"):
        acquire(CPU, mode="wait", timeout_s=0.3, poll_s=0.05, report_s=0.1, say=lines.append)
    assert lines and all(f"held by pid {first.pid}" in line for line in lines)
    assert held_devices() == []


def test_the_lock_is_reentrant_within_a_process_and_freed_by_the_last_release(children):
    a = acquire(CPU, mode="fail", holder={"experiment": "e3"})
    b = acquire(CPU, mode="fail")               # a second engine of the same run: no deadlock
    assert not a["reentrant"] and b["reentrant"]
    release("cpu")
    other = spawn("fail", "e1", "cpu")
    children.append(other)
    out, _ = other.communicate(timeout=WAIT)
    assert out.startswith(f"BUSY device cpu is in use: pid {os.getpid()} (e3")   # still held once
    release("cpu")
    assert held_devices() == []
    other = spawn("fail", "e1", "cpu")
    children.append(other)
    held(other)
    finish(other)


def test_a_sigkilled_holder_leaves_no_stale_lock(children):
    first = spawn("wait", "e0", "cpu", "gpu0")
    children.append(first)
    held(first)
    with pytest.raises(DeviceBusyError):
        acquire(CPU, mode="fail")
    first.send_signal(signal.SIGKILL)                  # no cleanup runs in the holder
    first.wait(timeout=WAIT)
    assert read_holder(lock_path(CPU))["pid"] == first.pid   # its name is still in the file...
    for key in ("cpu", "gpu0"):                        # ...but the kernel released the flock
        got = acquire(Device(key, key), mode="fail")
        assert got["waited_for"] is None
        release(key)


def test_two_runs_waiting_for_each_other_do_not_deadlock(children):
    mine = acquire(Device("gpu1", "gpu1"), mode="fail")
    assert mine["waited_for"] is None
    other = spawn("wait", "e3", "gpu0", "gpu1")        # holds gpu0, then waits for our gpu1
    children.append(other)
    assert other.stderr.readline().startswith("context-research: e3 waiting for device gpu1")
    gave_way = None
    try:
        acquire(Device("gpu0", "gpu0"), mode="wait", timeout_s=WAIT, poll_s=0.05, say=lambda s: None)
    except DeviceBusyError as exc:
        gave_way = str(exc)
    out, _ = other.communicate(timeout=WAIT)
    if gave_way is None:   # the younger (higher pid) run gives way: normally the child
        assert other.returncode == 3 and "the two runs would wait for each other" in out, out
        assert held_devices() == ["gpu0", "gpu1"]
    else:
        assert os.getpid() > other.pid and "the two runs would wait for each other" in gave_way
    for key in held_devices():
        release(key)


def test_lock_folder_and_files_are_shared_by_every_user(lock_dir):
    acquire(CPU, mode="fail")
    release("cpu")
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o1777
    assert stat.S_IMODE(lock_path(CPU).stat().st_mode) == 0o666


def test_an_unusable_lock_folder_is_an_error_naming_the_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(LOCK_DIR_ENV, str(blocker / "locks"))
    with pytest.raises(ContextResearchError, match=LOCK_DIR_ENV):
        acquire(CPU)


# -- devices ----------------------------------------------------------------------------------------
def test_engine_devices_cpu_and_gpus(monkeypatch):
    monkeypatch.setattr(device_ids, "_nvml_gpu", lambda i: None)   # as on a host without NVML
    assert engine_devices("cpu", {}) == [CPU]
    assert [d.key for d in engine_devices("cuda", {}, environ={})] == ["gpu0"]
    assert [d.key for d in engine_devices("cuda", {}, environ={"CUDA_VISIBLE_DEVICES": "3,2"})] == ["gpu3"]
    # E3 pins an engine with serving.env; tensor parallel uses the first N visible
    serving = {"env": {"CUDA_VISIBLE_DEVICES": "1,2,3"}, "extra_args": ["--tensor-parallel-size", "2"]}
    assert [d.key for d in engine_devices("cuda", serving, environ={"CUDA_VISIBLE_DEVICES": "0"})] == ["gpu1", "gpu2"]
    assert engine_devices("cuda", {"env": {"CUDA_VISIBLE_DEVICES": "GPU-abc"}})[0].gpu_uuid == "GPU-abc"


def test_a_gpu_is_keyed_by_its_nvml_uuid(monkeypatch):
    monkeypatch.setattr(device_ids, "_nvml_gpu", lambda i: (f"GPU-uuid-{i}", "NVIDIA H200"))
    d = engine_devices("cuda", {}, environ={"CUDA_VISIBLE_DEVICES": "0"})[0]
    assert d == Device("GPU-uuid-0", "gpu0 (NVIDIA H200, GPU-uuid-0)", gpu_uuid="GPU-uuid-0")
    assert lock_path(d).name == "GPU-uuid-0.lock"


@pytest.mark.parametrize("args, n", [([], 1), (["-tp", "2"], 2), (["--tensor-parallel-size=4", "-pp", "2"], 8),
                                     (["--data-parallel-size", "2", "--enforce-eager"], 2)])
def test_gpus_per_engine(args, n):
    assert gpus_per_engine(args) == n


def test_lock_settings_defaults_agree_with_the_schema():
    serving = validate_config({"model_profile": "m", "models": {"m": {"source": "embedded"}},
                               "serving": {"device_lock": {}}}, experiments=EXPERIMENTS)["serving"]
    assert serving["device_lock"] == {"mode": DEFAULT_MODE, "timeout_s": DEFAULT_TIMEOUT_S}
    assert lock_settings({}) == (DEFAULT_MODE, DEFAULT_TIMEOUT_S)
    with pytest.raises(ConfigError, match="serving.device_lock.mode"):
        lock_settings({"device_lock": {"mode": "queue"}})


# -- contention -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmdline, engine", [
    (["/venv/bin/python", "-m", "context_research.backends.vllm_cli", "serve", "/m", "--port", "1"], True),
    (["vllm", "serve", "Qwen/Qwen3-8B"], True),
    (["VLLM::EngineCore"], True),
    (["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "x"], True),
    (["python", "-m", "pytest", "tests/unit/test_vllm_backend.py"], False),
    (["snakemake", "--cores", "1"], False),
])
def test_is_engine_cmdline(cmdline, engine):
    assert is_engine_cmdline(cmdline) is engine


def test_other_engines_sees_an_engine_outside_the_excluded_tree(children):
    fake = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()", "vllm", "serve", "/m"],
                            stdin=subprocess.PIPE, text=True)
    children.append(fake)
    assert fake.pid in [e["pid"] for e in other_engines(exclude=set())]
    assert fake.pid not in [e["pid"] for e in other_engines(exclude={fake.pid})]
    assert fake.pid not in [e["pid"] for e in other_engines(exclude={p.pid for p in own_tree()})]
    fake.communicate("\n", timeout=WAIT)


def test_contention_flags():
    cpu, gpu = [CPU], [Device("GPU-a", "gpu0", gpu_uuid="GPU-a")]
    quiet = {"cpus": 2, "other_engines": [], "load_avg_1m_max": 1.5,
             "other_cpu": {"mean_cores": 0.1, "max_30s_cores": 0.2, "over_s": 60}, "gpu_processes": {"available": False}}
    assert contention_flags(quiet, cpu) == []
    engine = {"pid": 7, "command": "vllm serve x"}
    assert contention_flags({**quiet, "other_engines": [engine]}, cpu) == [
        "1 other vLLM engine process(es) ran on this host during the run: pid 7 (vllm serve x)"]
    assert contention_flags({**quiet, "other_engines": [engine]}, gpu) == []   # another GPU's engine
    on_gpu = {"available": True, "other_processes": {"GPU-a": [{"pid": 9}]}}
    assert contention_flags({**quiet, "gpu_processes": on_gpu}, gpu) == [
        "1 other process(es) computed on GPU GPU-a during the run: pid 9"]
    # The load average alone is not judged: it counts our own engine and lags behind.
    assert contention_flags({**quiet, "load_avg_1m_max": 2.5}, cpu) == []
    busy = {"mean_cores": 0.3, "max_30s_cores": 0.8, "over_s": 200}
    assert contention_flags({**quiet, "other_cpu": busy}, cpu) == [
        "other processes used 0.8 of the host's 2 cores over 30 s (0.3 on average over the run's 200 s)"]
    assert contention_flags({**quiet, "cpus": 16, "other_cpu": busy}, cpu) == []   # 0.8 of 16 cores


def test_window_max_is_the_busiest_stretch():
    assert _window_max([]) == 0.0
    assert _window_max([(5.0, 1.0)]) == 0.2                      # shorter than a window: the whole span
    quiet, busy = (5.0, 0.0), (5.0, 5.0)
    assert _window_max([quiet] * 10 + [busy] * 6 + [quiet] * 10) == 1.0
    assert _window_max([quiet] * 10 + [busy] * 3 + [quiet] * 10) == 0.5


def test_monitor_samples_in_its_own_process_and_hears_of_new_devices():
    mon = ContentionMonitor([CPU], interval_s=0.05)
    snap = mon.snapshot()
    assert set(snap) == {"at", "load_avg", "cpus", "other_engines", "gpu_processes"}
    assert snap["gpu_processes"] == {"available": False, "reason": "no GPU among the run's devices"}
    mon.start()
    sampler = mon._proc
    assert sampler is not None and sampler.pid in {p.pid for p in own_tree()}   # ours, not a thread
    mon.add_devices([Device("gpu7", "gpu7")])   # E3's decode engine on a second GPU
    mon.stop()
    assert sampler.returncode == 0
    summary = mon.summary()
    assert "sampler_error" not in summary and summary["samples"] >= 2 and summary["cpus"] == os.cpu_count()
    assert summary["other_cpu"]["mean_cores"] >= 0 and summary["other_cpu"]["max_30s_cores"] >= 0
    assert "psutil" in summary["other_cpu"]["how"]
    # its last sample looked at the device list it was sent
    assert summary["gpu_processes"]["reason"] == "the run's GPUs have no NVML UUID (NVML unavailable)"


DRIVER = r"""
import sys
from context_research.device_lock.devices import CPU
from context_research.device_lock.sampler import ContentionMonitor
mon = ContentionMonitor([CPU], interval_s=0.05).start()
print(mon._proc.pid, mon._out, flush=True)
sys.stdin.readline()
"""


def test_the_sampler_ends_with_its_driver_and_leaves_no_record_file(children):
    """A SIGKILLed driver closes the sampler's stdin without asking for the last sample: the
    sampler ends and removes its /tmp/cr-contention-*.json (nobody will read it)."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env={**os.environ, "PYTHONPATH": str(SRC)}, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    children.append(driver)
    pid, out = driver.stdout.readline().split()
    sampler = psutil.Process(int(pid))
    assert sampler.ppid() == driver.pid
    _wait_until(lambda: Path(out).stat().st_size > 0)   # it has sampled at least once
    assert "sample" in sampler.cmdline()  # read once it runs: a process still in exec shows none
    driver.kill()                        # no cleanup runs in the driver
    driver.wait(timeout=WAIT)
    sampler.wait(timeout=WAIT)           # raises if it outlives the bound
    assert not Path(out).exists() and not Path(out + ".tmp").exists()


def test_ctrl_c_does_not_end_the_sampler_and_it_still_gives_its_record():
    """Ctrl-C reaches the driver's whole process group: the sampler must neither die with a
    KeyboardInterrupt traceback nor lose the record the driver asks for afterwards."""
    mon = ContentionMonitor([CPU], interval_s=0.05)
    mon.start()
    sampler, out = mon._proc, mon._out
    _wait_until(lambda: out.stat().st_size > 0)   # it runs (its first sample is written)
    for sig in (signal.SIGINT, signal.SIGHUP):
        sampler.send_signal(sig)
    out.unlink()
    _wait_until(lambda: out.exists())             # it goes on sampling
    assert sampler.poll() is None
    mon.stop()
    assert sampler.returncode == 0 and "sampler_error" not in mon.summary() and not out.exists()


def _wait_until(predicate, timeout=WAIT):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


# -- through ExperimentRun --------------------------------------------------------------------------
class NeverStarted(VllmServerBackend):
    """A real-engine backend object (so the run takes its device's lock) that is never started."""

    def stop(self):
        pass


def _config(tiny_model, **serving):
    return validate_config({"model_profile": "m", "models": {"m": {"source": str(tiny_model), "max_model_len": 2048}},
                            "serving": {"backend": "vllm", "device": "cpu", **serving}}, experiments=EXPERIMENTS)


def test_a_run_holds_its_device_while_its_engines_live_and_records_contention(tiny_model, tmp_path, monkeypatch,
                                                                              children):
    monkeypatch.setattr(runner, "make_backend", NeverStarted)
    with ExperimentRun(e0.EXPERIMENT, _config(tiny_model), tmp_path / "e0") as run:
        run.backend(run.model, run.serving)
        run.backend(run.model, run.serving, "engine_restart", 1)   # a second engine: same lock
        assert held_devices() == ["cpu"]
        probe = spawn("fail", "e1", "cpu")
        children.append(probe)
        out, _ = probe.communicate(timeout=WAIT)
        assert f"pid {os.getpid()} (e0, run {run.ctx.run_id}" in out
    assert held_devices() == []
    meta = json.loads((tmp_path / "e0" / "run_metadata.json").read_text())
    lock = meta["device_lock"]
    assert lock["taken"] and lock["mode"] == "wait" and lock["timeout_s"] == 7200
    assert [d["key"] for d in lock["devices"]] == ["cpu"] and lock["devices"][0]["waited_for"] is None
    contention = meta["contention"]
    assert contention["recorded"] and contention["devices"] == ["cpu"]
    assert set(contention) >= {"at_engine_start", "during_run", "at_end", "flagged", "reasons"}
    assert contention["at_engine_start"]["load_avg"] is not None
    assert contention["flagged"] == bool(contention["reasons"])
    assert "sampler_error" not in contention["during_run"] and contention["during_run"]["other_cpu"] is not None
    assert all(r in " ".join(meta["notes"]) for r in contention["reasons"])


def test_a_run_in_fail_mode_starts_no_engine_beside_the_holder(tiny_model, tmp_path, monkeypatch, children):
    monkeypatch.setattr(runner, "make_backend", NeverStarted)
    holder = spawn("wait", "e1", "cpu")
    children.append(holder)
    held(holder)
    with pytest.raises(DeviceBusyError, match=rf"device cpu is in use: pid {holder.pid} \(e1"):
        with ExperimentRun(e0.EXPERIMENT, _config(tiny_model, device_lock={"mode": "fail"}), tmp_path / "e0") as run:
            run.backend(run.model, run.serving)
    assert run.backends == [] and not (tmp_path / "e0" / "run_metadata.json").exists()
    assert held_devices() == []
    finish(holder)


def test_a_simulated_run_takes_no_lock(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")
    cfg = validate_config({"model_profile": "m", "models": {"m": {"source": str(tiny_model), "max_model_len": 2048}},
                           "serving": {"backend": "simulated", "device": "cpu"}}, experiments=EXPERIMENTS)
    with ExperimentRun(e0.EXPERIMENT, cfg, tmp_path / "e0") as run:
        run.backend(run.model, run.serving)
        assert held_devices() == []
    meta = json.loads((tmp_path / "e0" / "run_metadata.json").read_text())
    assert meta["device_lock"]["taken"] is False and meta["contention"]["recorded"] is False
