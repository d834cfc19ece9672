"""Nothing outlives the process that started it (context_research.watchdog), with stand-in
processes for the rule's shell, the driver and the engine: loopback only, every wait bounded."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from context_research import watchdog

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 30  # upper bound of every wait: a broken watchdog fails the test instead of hanging it


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _wait_for(predicate, what, timeout=BOUND_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"gave up after {timeout} s waiting for {what}")


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group(pgid):
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def test_watchdog_fires_when_its_parent_dies_and_not_before(tmp_path):
    child = _script(tmp_path, "child.py", """
        import sys, pathlib
        from context_research.watchdog import Watchdog
        marker, ready = map(pathlib.Path, sys.argv[1:3])
        dog = Watchdog(lambda: marker.write_text("fired"), interval_s=0.05).start()
        ready.write_text(str(dog.parent.pid))
        dog.fired.wait(120)
        """)
    marker, ready = tmp_path / "fired", tmp_path / "ready"
    # The parent starts the watched child and lives until its stdin closes.
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               f"subprocess.Popen([sys.executable, {child!r}, {str(marker)!r}, {str(ready)!r}]); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, env=_env())
    try:
        _wait_for(ready.exists, "the child's watchdog")
        assert int(ready.read_text()) == parent.pid
        time.sleep(0.5)  # ten polls with the parent alive
        assert not marker.exists()
    finally:
        parent.stdin.close()
        parent.wait(BOUND_S)
    _wait_for(marker.exists, "the watchdog to fire after its parent exited")


def test_driver_stops_as_on_sigterm_when_its_rule_shell_is_killed(tmp_path):
    driver = _script(tmp_path, "driver.py", """
        import os, signal, sys, time, pathlib
        from context_research import watchdog
        out = pathlib.Path(sys.argv[1])
        def on_term(signum, frame):
            (out / "stopped").write_text(signal.Signals(signum).name)
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        watchdog.die_with_parent(interval_s=0.05)
        (out / "driver.pid").write_text(str(os.getpid()))
        time.sleep(120)
        (out / "finished").write_text("the driver carried on")
        """)
    # What Snakemake runs for a rule: bash, with the driver's output sent to the rule's log.
    shell = subprocess.Popen(["bash", "-c", f"set -euo pipefail; {sys.executable} {driver} {tmp_path} "
                              f"> {tmp_path / 'rule.log'} 2>&1"], env=_env())
    pidfile = tmp_path / "driver.pid"
    _wait_for(pidfile.exists, "the driver")
    driver_pid = int(pidfile.read_text())
    assert psutil.Process(driver_pid).ppid() == shell.pid
    shell.kill()
    shell.wait(BOUND_S)
    _wait_for(lambda: _gone(driver_pid), "the driver to stop after its shell was killed")
    assert (tmp_path / "stopped").read_text() == "SIGTERM"
    assert not (tmp_path / "finished").exists()
    assert f"(pid {shell.pid}) is gone: stopping" in (tmp_path / "rule.log").read_text()


def test_driver_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    driver = _script(tmp_path, "driver.py", """
        import os, signal, sys, time, pathlib
        from context_research import watchdog
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        watchdog.die_with_parent(grace_s=0.5, interval_s=0.05)
        pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
        time.sleep(120)
        """)
    pidfile = tmp_path / "driver.pid"
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               f"subprocess.Popen([sys.executable, {driver!r}, {str(pidfile)!r}]); sys.stdin.read()"],
                              stdin=subprocess.PIPE, env=_env())
    _wait_for(pidfile.exists, "the driver")
    driver_pid = int(pidfile.read_text())
    parent.kill()
    parent.wait(BOUND_S)
    _wait_for(lambda: _gone(driver_pid), "the SIGKILL after the driver's grace period")


# A stand-in driver: starts a stand-in engine through VllmServerBackend (so through build_env),
# then waits to be killed.
DRIVER = """
import json, os, sys, time, pathlib
from context_research.backends import vllm_server
from context_research.backends.vllm_server import VllmServerBackend
out, server = pathlib.Path(sys.argv[1]), sys.argv[2]
vllm_server.importlib.util.find_spec = lambda name: object()
port = vllm_server.free_loopback_port()
vllm_server.free_loopback_port = lambda host="127.0.0.1": port
backend = VllmServerBackend({"name": "x", "source": "Qwen/x", "path": "Qwen/x", "max_model_len": 64},
                            {"backend": "vllm", "device": "cpu", "startup_timeout_s": 60}, out / "engine.log")
backend.build_command = lambda p: [sys.executable, server, str(port), str(out)]
backend.start()
(out / "driver.json").write_text(json.dumps({"server": backend.proc.pid, "tmpdir": backend._tmpdir}))
time.sleep(300)
"""

# A stand-in engine: the watchdog as vllm_cli starts it (short grace), an engine worker in its
# process group that ignores SIGTERM (only the SIGKILL after the grace period stops it), /health.
SERVER = """
import http.server, os, subprocess, sys, time
from context_research import watchdog
port, out = int(sys.argv[1]), sys.argv[2]
watchdog.stop_group_with_driver(int(os.environ[watchdog.DRIVER_PID_ENV]), grace_s=1.0,
                                tmpdir=os.environ[watchdog.ENGINE_TMPDIR_ENV], interval_s=0.05)
ready = os.path.join(out, "worker.ready")
subprocess.Popen([sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "open(sys.argv[1], 'w').write('ok'); time.sleep(600)", ready])
while not os.path.exists(ready):
    time.sleep(0.02)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_engine_group_stops_when_its_driver_is_sigkilled(tmp_path):
    driver_py, server_py = _script(tmp_path, "driver.py", DRIVER), _script(tmp_path, "server.py", SERVER)
    driver = subprocess.Popen([sys.executable, driver_py, str(tmp_path), server_py], env=_env(),
                              start_new_session=True)
    try:
        _wait_for((tmp_path / "driver.json").exists, "the stand-in engine to become healthy")
        info = json.loads((tmp_path / "driver.json").read_text())
        server, tmpdir = info["server"], Path(info["tmpdir"])
        # start_new_session: the engine's process group is the server's pid
        assert os.getpgid(server) == server and len(_group(server)) == 2 and tmpdir.is_dir()
    finally:
        driver.kill()
        driver.wait(BOUND_S)
    _wait_for(lambda: not _group(server), "every process of the engine's group to stop")
    assert _gone(server)
    _wait_for(lambda: not tmpdir.exists(), "the engine's temp folder to be removed")
    assert "the driver (pid %d) is gone" % driver.pid in (tmp_path / "engine.log").read_text()


def test_a_group_it_does_not_lead_is_left_alone(tmp_path):
    """Run by hand (not as a session leader), the engine stops itself and its children only."""
    script = _script(tmp_path, "engine.py", """
        import os, subprocess, sys, time, pathlib
        from context_research import watchdog
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
        watchdog.stop_group_with_driver(os.getppid(), grace_s=1.0, interval_s=0.05)
        time.sleep(120)
        """)
    pids = tmp_path / "pids"
    # The parent leads a group of its own with a bystander in it; the engine runs in that group.
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                               f"subprocess.Popen([sys.executable, {script!r}, {str(pids)!r}]); sys.stdin.read()"],
                              stdin=subprocess.PIPE, env=_env(), start_new_session=True)
    try:
        _wait_for(pids.exists, "the engine")
        engine, child = map(int, pids.read_text().split())
        bystanders = set(_group(parent.pid)) - {parent.pid, engine, child}
        assert len(bystanders) == 1
        parent.kill()
        parent.wait(BOUND_S)
        _wait_for(lambda: _gone(engine) and _gone(child), "the engine and its child to stop")
        assert all(not _gone(pid) for pid in bystanders)
    finally:
        for pid in _group(parent.pid):
            os.kill(pid, signal.SIGKILL)


def test_the_shim_watches_the_driver_named_in_its_environment(monkeypatch):
    from context_research.backends import vllm_cli

    calls = []
    monkeypatch.setattr(watchdog, "stop_group_with_driver", lambda pid, **kw: calls.append((pid, kw)))
    monkeypatch.delenv(watchdog.DRIVER_PID_ENV, raising=False)
    vllm_cli.watch_driver()
    assert calls == []  # vllm bench serve, or vllm serve by hand: nothing to watch
    monkeypatch.setenv(watchdog.DRIVER_PID_ENV, "4242")
    monkeypatch.setenv(watchdog.ENGINE_TMPDIR_ENV, "/tmp/cr-engine-x")
    vllm_cli.watch_driver()
    assert calls == [(4242, {"tmpdir": "/tmp/cr-engine-x"})]
    assert watchdog.DRIVER_PID_ENV not in os.environ  # vLLM's own processes do not inherit it


def test_the_engine_environment_names_its_driver(tmp_path):
    from context_research.backends.vllm_server import VllmServerBackend

    backend = VllmServerBackend({"name": "x", "source": "Qwen/x", "path": "Qwen/x", "max_model_len": 64},
                                {"backend": "vllm", "device": "cpu"}, tmp_path / "engine.log")
    env = backend.build_env()
    try:
        assert env[watchdog.DRIVER_PID_ENV] == str(os.getpid())
        assert env[watchdog.ENGINE_TMPDIR_ENV] == backend._tmpdir
        assert Path(backend._tmpdir).name.startswith(watchdog.ENGINE_TMPDIR_PREFIX)
    finally:
        backend.stop()


def test_the_last_output_is_taken_back_when_the_driver_is_orphaned(tmp_path, monkeypatch):
    from context_research.experiments import runner

    target = tmp_path / "run_metadata.json"
    monkeypatch.setattr(watchdog, "orphaned", lambda: True)
    with pytest.raises(watchdog.Orphaned):
        runner._commit_last_output(target, {"run_id": "x"})
    assert not target.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(watchdog, "orphaned", lambda: False)
    runner._commit_last_output(target, {"run_id": "x"})
    assert json.loads(target.read_text()) == {"run_id": "x"}


def test_a_signal_during_the_last_write_takes_it_back(tmp_path, monkeypatch):
    from context_research.experiments import runner

    target = tmp_path / "run_metadata.json"

    def write_then_signal(path, obj):
        path.write_text("{}")
        os.kill(os.getpid(), signal.SIGTERM)  # the watchdog's SIGTERM, right after the rename
        time.sleep(1)

    monkeypatch.setattr(runner, "write_json", write_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(runner.Terminated):
        runner._commit_last_output(target, {"run_id": "x"})
    assert not target.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_no_artifact_is_kept_once_the_rule_has_failed(tmp_path, monkeypatch):
    from context_research import io

    monkeypatch.setattr(watchdog, "orphaned", lambda: True)
    with pytest.raises(watchdog.Orphaned):
        io.write_json(tmp_path / "summary.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_not_orphaned_without_a_driver_watchdog():
    assert watchdog._driver is None and watchdog.orphaned() is False


def test_the_command_dies_with_its_parent_only_as_an_entry_point(monkeypatch):
    from context_research import cli

    calls = []
    monkeypatch.setattr(watchdog, "die_with_parent", lambda *a, **kw: calls.append(1))
    config = str(REPO / "config" / "config.yaml")
    assert cli.main(["validate", "--configfile", config]) == 0
    assert calls == []  # called as a function (tests): no watchdog on the caller's process
    monkeypatch.setattr(sys, "argv", ["context-research", "validate", "--configfile", config])
    assert cli.main() == 0
    assert calls == [1]
