import pytest

from context_research.analysis.memory import (check_kv_usage, kv_used_bytes, memory_components_row,
                                              parse_vllm_memory_log)

QWEN3_8B = {
    "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}

# FACTS' line (vLLM 0.26.0 gpu_worker.py), with a colour-coded prefix as vLLM prints it.
GPU_LOG = (
    "\x1b[1;36m(EngineCore_DP0 pid=4242)\x1b[0;0m INFO 11-23 10:00:00 [gpu_model_runner.py:2900] "
    "Model loading took 15.27 GiB memory and 4.512345 seconds\n"
    "(EngineCore_DP0 pid=4242) INFO 11-23 10:00:00 [default_loader.py:267] Loading weights took 2.10 seconds\n"
    "(EngineCore_DP0 pid=4242) INFO 11-23 10:01:00 [gpu_worker.py:391] Free memory on device "
    "(139.21/139.81 GiB) on startup. Desired GPU memory utilization is (0.9, 125.83 GiB). Actual usage is "
    "15.27 GiB for weight, 1.59 GiB for peak activation, 0.22 GiB for non-torch memory, and 1.01 GiB for "
    "CUDAGraph memory. Replace gpu_memory_utilization config with `--kv-cache-memory=116762476748` "
    "(108.74 GiB) to fit into requested memory, or `--kv-cache-memory=130000000000` (121.07 GiB) to fully "
    "utilize gpu memory. Current kv cache memory in use is 108.74 GiB.\n"
    "(EngineCore_DP0 pid=4242) INFO 11-23 10:01:00 [kv_cache_utils.py:1087] GPU KV cache size: 791,792 tokens\n"
    "(EngineCore_DP0 pid=4242) INFO 11-23 10:01:00 [kv_cache_utils.py:1091] Maximum concurrency for "
    "32,768 tokens per request: 24.16x\n"
    "(APIServer pid=1) INFO 11-23 10:01:05 [api_server.py:1000] Starting vLLM API server 0 on http://0.0.0.0:8000\n"
)

# vLLM-CPU 0.32 (cpu_worker.py + kv_cache_utils.py), older-style wrapped "Available" line.
CPU_LOG = """INFO 11-23 10:00:00 [cpu_worker.py:260] Auto set (0.98/10.7) GiB for KV cache on node 0, with 9.63 GiB requested memory for the worker. 2.10 GiB memory was consumed by non-kv usages.
INFO 11-23 10:00:00 [kv_cache_utils.py:2328] CPU KV cache size: 16,080 tokens, Maximum concurrency for 4,096 tokens per request: 3.93x
"""


def test_parse_facts_gpu_line():
    p = parse_vllm_memory_log(GPU_LOG)
    assert p["weights_gib"] == 15.27
    assert p["peak_activation_gib"] == 1.59
    assert p["non_torch_gib"] == 0.22
    assert p["cuda_graph_gib"] == 1.01
    assert p["kv_cache_gib"] == 108.74 and p["kv_cache_source"] == "current_kv_cache_memory"
    assert p["kv_cache_tokens"] == 791_792 and p["kv_cache_device"] == "GPU"
    assert p["max_concurrency"] == 24.16 and p["max_concurrency_tokens_per_request"] == 32_768
    assert (p["free_memory_gib"], p["total_memory_gib"]) == (139.21, 139.81)
    assert (p["gpu_memory_utilization"], p["requested_memory_gib"]) == (0.9, 125.83)
    assert p["model_loading_gib"] == 15.27 and p["model_loading_s"] == pytest.approx(4.512345)
    assert p["loading_weights_s"] == 2.10
    assert p["cpu_kv_cache_gib"] is None and p["num_gpu_blocks"] is None
    assert len(p["matched_lines"]) == 5
    assert not any("\x1b" in line for line in p["matched_lines"])
    assert not any("API server" in line for line in p["matched_lines"])
    # FACTS: 108.74 GiB / 791,792 tokens = 147,456 B/token (to vLLM's 2-decimal rounding)
    assert p["kv_cache_gib"] * 2**30 / p["kv_cache_tokens"] == pytest.approx(147_456, rel=1e-4)


def test_parse_other_formats():
    old = ("INFO [gpu_worker.py:298] Available KV cache memory: 17.33 GiB\n"
           "INFO Actual usage is 74.28 GiB for weight, 5.58 GiB for peak activation,\n"
           "  -3.58 GiB for non-torch memory, and 2.37 GiB for CUDAGraph memory. "
           "Current kv cache memory in use is 47878721024 bytes.\n")
    p = parse_vllm_memory_log(old)
    assert p["non_torch_gib"] == -3.58  # wrapped and negative
    assert p["available_kv_cache_gib"] == 17.33
    assert p["kv_cache_in_use_gib"] == pytest.approx(47878721024 / 2**30)
    assert p["kv_cache_source"] == "current_kv_cache_memory"
    new = ("INFO Actual usage is 16.5 GiB for consumed memory (weights + non-torch), 1.59 GiB for peak "
           "activation, and 1.01 GiB for CUDAGraph memory.")
    p = parse_vllm_memory_log(new)
    assert p["weights_plus_non_torch_gib"] == 16.5 and p["weights_gib"] is None
    assert p["kv_cache_gib"] is None and p["kv_cache_source"] is None


def test_parse_cpu_log():
    p = parse_vllm_memory_log(CPU_LOG + "VLLM_CPU_KVCACHE_SPACE=1\n")
    assert p["kv_cache_device"] == "CPU" and p["kv_cache_tokens"] == 16_080
    assert p["cpu_kv_cache_gib"] == 0.98 and p["cpu_node_memory_gib"] == 10.7
    assert p["cpu_kv_cache_mode"] == "Auto" and p["cpu_non_kv_gib"] == 2.10
    assert p["kv_cache_gib"] == 0.98 and p["kv_cache_source"] == "cpu_worker_kv_cache"
    assert p["max_concurrency"] == 3.93
    assert p["cpu_kvcache_space_env_gib"] == 1.0
    assert p["num_cpu_blocks"] is None
    assert parse_vllm_memory_log("INFO # CPU blocks: 4,681")["num_cpu_blocks"] == 4681


def test_parse_empty():
    p = parse_vllm_memory_log("")
    assert p["matched_lines"] == [] and p["weights_gib"] is None


def test_kv_used_bytes():
    assert kv_used_bytes(QWEN3_8B, 1000) == 1000 * 147_456
    assert kv_used_bytes(QWEN3_8B, [10, 17], block_size=16) == (16 + 32) * 147_456
    assert kv_used_bytes(QWEN3_8B, [10, 17]) == 27 * 147_456


def test_check_kv_usage():
    allocated = 1000 * 147_456
    r = check_kv_usage(100 * 147_456, 0.1, allocated)
    assert r["agree"] and r["relative_error"] == pytest.approx(0.0)
    r = check_kv_usage(100 * 147_456, 0.103, allocated, tolerance=0.02)
    assert not r["agree"] and r["relative_error"] == pytest.approx(0.03)
    assert check_kv_usage(0, 0.0, allocated)["agree"]
    assert check_kv_usage(0, 0.0, allocated)["relative_error"] is None
    with pytest.raises(ValueError):
        check_kv_usage(1, 10.0, allocated)  # a percentage, not a fraction


def test_memory_components_row():
    p = parse_vllm_memory_log(GPU_LOG)
    row = memory_components_row(p, {"peak_used_bytes": 130 * 2**30, "total_bytes": 141 * 2**30},
                                kv_used_analytical_bytes=2**30, process_rss_bytes=3 * 2**30, batch=4)
    assert row["batch"] == 4
    assert row["weights_gib"] == 15.27 and row["weights_source"] == "profile"
    assert row["kv_cache_allocated_gib"] == 108.74
    assert row["kv_used_analytical_gib"] == 1.0
    assert (row["nvml_peak_used_gib"], row["nvml_total_gib"], row["process_rss_gib"]) == (130.0, 141.0, 3.0)
    new = parse_vllm_memory_log(
        "Model loading took 15.27 GiB memory and 4.0 seconds\n"
        "Actual usage is 15.49 GiB for consumed memory (weights + non-torch), 1.59 GiB for peak activation, "
        "and 1.01 GiB for CUDAGraph memory.")
    row = memory_components_row(new, None)
    assert row["weights_source"] == "model_loading"
    assert row["non_torch_gib"] == pytest.approx(0.22)
    assert row["nvml_total_gib"] is None and row["kv_used_analytical_gib"] is None
    cpu = memory_components_row(parse_vllm_memory_log(CPU_LOG), None)
    assert cpu["kv_cache_allocated_gib"] == 0.98 and cpu["weights_gib"] is None and cpu["cpu_non_kv_gib"] == 2.10
