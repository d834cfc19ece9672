"""Lifecycle of the vLLM server backend, with stand-in processes instead of the engine."""

import os
import sys
import time

import pytest

from context_research.backends import vllm_server
from context_research.backends.vllm_server import VllmServerBackend
from context_research.errors import EngineStartError

MODEL = {"name": "embedded", "source": "Qwen/x", "path": "Qwen/x", "max_model_len": 2048,
         "load_format": "dummy", "dtype": "auto"}
SERVING = {"backend": "vllm", "device": "cpu", "host": "127.0.0.1", "startup_timeout_s": 20,
           "enable_prefix_caching": False, "extra_args": ["--max-num-seqs", "8"], "env": {"FOO_X": "1"},
           "cpu_kvcache_space_gib": 1}


def test_command_carries_the_config(tmp_path):
    b = VllmServerBackend(MODEL, SERVING, tmp_path / "engine.log")
    cmd = b.build_command(1234)
    assert cmd[1:5] == ["-m", "context_research.backends.vllm_cli", "serve", "Qwen/x"]
    joined = " ".join(cmd)
    assert "--port 1234" in joined and "--host 127.0.0.1" in joined
    assert "--load-format dummy" in joined and "--max-model-len 2048" in joined
    assert "--no-enable-prefix-caching" in cmd and cmd[-2:] == ["--max-num-seqs", "8"]
    assert "--gpu-memory-utilization" not in cmd  # CPU engine
    assert "--api-key" not in cmd and b.api_key is None  # loopback: no key (see test_bad_input for remote)
    env = b.build_env()
    assert "VLLM_API_KEY" not in env
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["FOO_X"] == "1"
    assert env["VLLM_CACHE_ROOT"].endswith(os.path.join(".cache", "vllm"))
    b.stop()


def test_missing_vllm_fails_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_server.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineStartError, match="scripts/bootstrap.sh"):
        VllmServerBackend(MODEL, SERVING, tmp_path / "engine.log").start()


def _fake(tmp_path, monkeypatch, script):
    backend = VllmServerBackend(MODEL, SERVING, tmp_path / "engine.log")
    monkeypatch.setattr(vllm_server.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(backend, "build_command", lambda port: [sys.executable, "-c", script])
    return backend


def test_engine_that_dies_reports_its_log(tmp_path, monkeypatch):
    b = _fake(tmp_path, monkeypatch, "print('ValueError: bad model config', flush=True); raise SystemExit(3)")
    with pytest.raises(EngineStartError) as err:
        b.start()
    assert "exited with code 3" in str(err.value) and "bad model config" in str(err.value)
    assert b.proc is None


def test_stop_leaves_no_orphans(tmp_path, monkeypatch):
    pidfile = tmp_path / "child.pid"
    # The "server" spawns a worker (as vLLM's engine core does), then serves /health.
    script = f"""
import http.server, subprocess, sys, os
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
open({str(pidfile)!r}, 'w').write(str(child.pid))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
port = int(os.environ['FAKE_PORT'])
http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()
"""
    b = _fake(tmp_path, monkeypatch, script)
    real_env = b.build_env

    def env_with_port():
        env = real_env()
        env["FAKE_PORT"] = str(b.port)
        return env

    port = vllm_server.free_loopback_port()
    monkeypatch.setattr(vllm_server, "free_loopback_port", lambda host="127.0.0.1": port)
    b.port = port
    monkeypatch.setattr(b, "build_env", env_with_port)
    b.start()
    server_pid, child_pid = b.proc.pid, int(pidfile.read_text())
    b.stop()
    time.sleep(0.2)
    for pid in (server_pid, child_pid):
        assert not _alive(pid), f"process {pid} outlived stop()"
    b.stop()  # idempotent


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_client_drops_idle_connections_long_before_the_server_does(tmp_path):
    """A reused keep-alive connection that the server closes under a request loses that request
    ("Server disconnected"): the client's idle keep-alive must be far shorter than the server's."""
    import asyncio

    from context_research.backends.client import CLIENT_KEEPALIVE_S, http_session

    env = VllmServerBackend(MODEL, {**SERVING, "device": "cuda", "env": {}}, tmp_path / "e.log").build_env()
    server_keep_alive = float(env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"])
    # aiohttp sweeps idle connections once per keepalive period: one may live up to twice as long.
    assert server_keep_alive > 2 * CLIENT_KEEPALIVE_S

    async def keepalive_of_session():
        async with http_session(5.0) as http:
            return http.connector._keepalive_timeout, http.connector.limit

    keepalive, limit = asyncio.run(keepalive_of_session())
    assert keepalive == CLIENT_KEEPALIVE_S and limit == 0


def test_a_cpu_engine_leaves_a_core_to_the_api_server_and_the_client():
    from context_research.backends.vllm_server import cpu_binding_leaving_a_core

    assert cpu_binding_leaving_a_core([0, 1]) == {"VLLM_CPU_OMP_THREADS_BIND": "0"}
    assert cpu_binding_leaving_a_core([4, 2, 3, 5]) == {"VLLM_CPU_OMP_THREADS_BIND": "2,3,4"}
    assert cpu_binding_leaving_a_core([0]) == {}


def test_a_cpu_engines_enginecore_threads_yield_to_the_api_server_and_the_client(tmp_path, monkeypatch):
    """vLLM's EngineCore spins on the core left to the API server and the client (see
    lower_engine_core_priority): after start(), every EngineCore thread runs at nice 19, threads it
    starts later too, and nothing else in the tree (the server, the Worker) is lowered."""
    core_pids, worker_pids, go = tmp_path / "core.pid", tmp_path / "worker.pid", tmp_path / "go"
    child = f"""
import os, sys, threading, time
open('/proc/self/comm', 'w').write(sys.argv[1])
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
time.sleep(0.1)
open(sys.argv[2], 'w').write(str(os.getpid()))
while not os.path.exists({str(go)!r}):  # the test says when start() has returned
    time.sleep(0.02)
later = threading.Thread(target=time.sleep, args=(600,), daemon=True); later.start()
time.sleep(600)
"""
    script = f"""
import http.server, subprocess, sys, os, time
for name, f in (("VLLM::EngineCore", {str(core_pids)!r}), ("VLLM::Worker", {str(worker_pids)!r})):
    subprocess.Popen([sys.executable, '-c', {child!r}, name, f])
while not (os.path.exists({str(core_pids)!r}) and os.path.exists({str(worker_pids)!r})):
    time.sleep(0.05)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(os.environ['FAKE_PORT'])), H).serve_forever()
"""
    b = _fake(tmp_path, monkeypatch, script)
    real_env = b.build_env
    port = vllm_server.free_loopback_port()
    monkeypatch.setattr(vllm_server, "free_loopback_port", lambda host="127.0.0.1": port)
    monkeypatch.setattr(b, "build_env", lambda: {**real_env(), "FAKE_PORT": str(port)})
    try:
        b.start()
        core, worker = int(core_pids.read_text()), int(worker_pids.read_text())
        assert b.info()["engine_core_nice"] == {"nice": vllm_server.ENGINE_CORE_NICE, "threads": 2}
        go.write_text("")

        def nice_of_threads(pid):
            return [os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")]

        deadline = time.monotonic() + 20
        while len(nice_of_threads(core)) < 3 and time.monotonic() < deadline:  # its third thread
            time.sleep(0.05)
        assert nice_of_threads(core) == [vllm_server.ENGINE_CORE_NICE] * 3
        assert set(nice_of_threads(worker)) == set(nice_of_threads(b.proc.pid)) == {os.getpriority(os.PRIO_PROCESS, 0)}
    finally:
        b.stop()


def test_no_enginecore_under_the_server_changes_nothing(tmp_path):
    assert vllm_server.lower_engine_core_priority(os.getpid()) == []
    assert vllm_server.lower_engine_core_priority(2**22 + 12345) == []  # no such process


def test_long_context_engine_arguments_become_flags_and_stay_out_when_absent(tmp_path):
    serving = {**SERVING, "kv_cache_dtype": "fp8", "enable_chunked_prefill": False, "block_size": 32,
               "max_num_batched_tokens": 512}
    cmd = VllmServerBackend(MODEL, serving, tmp_path / "engine.log").build_command(1234)
    joined = " ".join(cmd)
    assert "--kv-cache-dtype fp8" in joined and "--block-size 32" in joined
    assert "--max-num-batched-tokens 512" in joined and "--no-enable-chunked-prefill" in cmd
    on = VllmServerBackend(MODEL, {**SERVING, "enable_chunked_prefill": True}, tmp_path / "e.log").build_command(1)
    assert "--enable-chunked-prefill" in on
    plain = VllmServerBackend(MODEL, SERVING, tmp_path / "p.log").build_command(1)
    assert not [a for a in plain if a.startswith(("--kv-cache-dtype", "--block-size", "--enable-chunked",
                                                  "--no-enable-chunked"))]
