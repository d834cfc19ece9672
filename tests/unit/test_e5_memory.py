"""E5: row assembly from parsed engine logs, the KV check with block rounding, the memory probe's helpers."""

import math

import pytest

from context_research.analysis.memory import GIB, parse_vllm_memory_log
from context_research.engine_metrics import MetricsSnapshot, cache_config_info
from context_research.experiments.e5 import kv_check, memory_row, unsupported_rows
from context_research.memory_probe import (allocated_kv_bytes, engine_dtypes, kv_tokens_held, nvml_peak,
                                           process_tree_rss_bytes)

# The embedded model's shapes: 2 layers x 2 KV heads x head_dim 32; vLLM-CPU serves it in bf16.
TINY = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 3072,
        "tie_word_embeddings": False, "torch_dtype": "float32"}
QWEN3_8B = {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16"}

# Lines as vLLM-CPU 0.32 printed them in this project's runs (prefixes kept).
CPU_LOG = (
    "(EngineCore pid=14156) INFO 11-23 16:34:43 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
    "model='/m', speculative_config=None, tokenizer='/m', skip_tokenizer_init=False, dtype=torch.bfloat16, "
    "max_seq_len=2048, download_dir=None, load_format=auto, kv_cache_dtype=auto, device_config=cpu\n"
    "(Worker pid=14284) INFO 11-23 16:39:53 [cpu_worker.py:260] Explicitly set (1.0/16.09) GiB for KV cache on node 0.\n"
    "(EngineCore pid=14156) INFO 11-23 16:39:53 [kv_cache_utils.py:2327] CPU KV cache size: 2,097,152 tokens, "
    "Maximum concurrency for 2,048 tokens per request: 1024.00x\n"
)
GPU_LOG = (
    "(EngineCore_DP0 pid=1) INFO [core.py:77] Initializing a V1 LLM engine (v0.26.0) with config: model='Qwen/Qwen3-8B', "
    "dtype=torch.bfloat16, max_seq_len=32768, kv_cache_dtype=auto, device_config=cuda\n"
    "(EngineCore_DP0 pid=1) INFO [gpu_worker.py:391] Free memory on device (139.21/139.81 GiB) on startup. Desired GPU "
    "memory utilization is (0.9, 125.83 GiB). Actual usage is 15.27 GiB for weight, 1.59 GiB for peak activation, "
    "0.22 GiB for non-torch memory, and 1.01 GiB for CUDAGraph memory. Current kv cache memory in use is 108.74 GiB.\n"
    "(EngineCore_DP0 pid=1) INFO [kv_cache_utils.py:1087] GPU KV cache size: 791,792 tokens\n"
)
STAMP = {"experiment": "e5", "run_id": "r1", "config_hash": "h", "backend_mode": "real",
         "weights": "random-embedded", "model_id": "embedded"}


def record(prompt=1920, output=128, error=None):
    return {"request_id": "x", "prompt_tokens": None if error else prompt, "output_tokens": None if error else output,
            "ttft_s": None if error else 0.2, "e2e_s": None if error else 0.9, "error": error}


def cpu_engine():
    return {**engine_dtypes(CPU_LOG), "block_size": 128, "num_blocks": 16384, "kv_cache_memory_bytes": 1 << 30,
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}}


def test_engine_dtypes_follow_the_engine_not_the_checkpoint():
    d = engine_dtypes(CPU_LOG)
    assert d == {"model_dtype": "bfloat16", "kv_cache_dtype": "auto", "kv_effective_dtype": "bfloat16"}
    fp8 = engine_dtypes(CPU_LOG.replace("kv_cache_dtype=auto", "kv_cache_dtype=fp8"))
    assert fp8["kv_effective_dtype"] == "fp8"
    assert engine_dtypes("no config line")["kv_effective_dtype"] is None


def test_kv_tokens_held_excludes_the_last_sampled_token():
    assert kv_tokens_held(1920, 128) == 2047
    assert kv_tokens_held(100, 1) == 100


def test_kv_check_agrees_on_block_rounded_bytes():
    # 1920 + 127 tokens -> 16 blocks of 128 at 512 B/token; vLLM's gauge = 16 / (16384 - 1).
    usage = 16 / 16383
    c = kv_check(TINY, 1920, 128, kv_dtype="bfloat16", block_size=128, kv_usage_peak=usage,
                 allocated_kv_bytes=float(1 << 30))
    assert c["kv_bytes_per_token_analytical"] == 512
    assert c["kv_used_analytical_bytes"] == 2047 * 512
    assert c["kv_used_block_rounded_bytes"] == 16 * 128 * 512
    assert c["kv_blocks_analytical"] == 16
    assert c["kv_check_verdict"] == "agree" and c["kv_check_agree"] is True
    assert c["kv_blocks_gauge"] == pytest.approx(16, rel=1e-3)
    # Unrounded tokens would be 0.05% off: block rounding is what the gauge counts.
    assert c["kv_used_gauge_bytes"] != pytest.approx(c["kv_used_analytical_bytes"], rel=1e-4)


def test_kv_check_with_the_checkpoint_dtype_disagrees():
    # fp32 (the checkpoint's torch_dtype) doubles bytes/token: the check must catch it.
    c = kv_check(TINY, 1920, 128, kv_dtype="float32", block_size=128, kv_usage_peak=16 / 16383,
                 allocated_kv_bytes=float(1 << 30))
    assert c["kv_check_verdict"] == "inconclusive" and c["kv_check_agree"] is False
    assert c["kv_gauge_relative_error"] == pytest.approx(-0.5, abs=1e-3)
    # ... and more blocks than the request can ever hold is a plain disagreement.
    c = kv_check(TINY, 1920, 128, kv_dtype="bfloat16", block_size=128, kv_usage_peak=24 / 16383,
                 allocated_kv_bytes=float(1 << 30))
    assert c["kv_check_verdict"] == "disagree"


def test_kv_check_partial_and_not_observed_are_explained():
    # 1024 prompt + 640 output -> final 13 blocks; a sample at 11 blocks came before the last two.
    c = kv_check(TINY, 1024, 640, kv_dtype="bfloat16", block_size=128, kv_usage_peak=11 / 16383,
                 allocated_kv_bytes=float(1 << 30))
    assert c["kv_blocks_analytical"] == 13
    assert c["kv_check_verdict"] == "partial" and "11 whole blocks" in c["kv_check_note"]
    # A fractional block count is no sampling artefact.
    c = kv_check(TINY, 1024, 640, kv_dtype="bfloat16", block_size=128, kv_usage_peak=11.5 / 16383,
                 allocated_kv_bytes=float(1 << 30))
    assert c["kv_check_verdict"] == "disagree"
    c = kv_check(TINY, 1024, 128, kv_dtype="bfloat16", block_size=128, kv_usage_peak=0.0,
                 allocated_kv_bytes=float(1 << 30))
    assert c["kv_check_verdict"] == "not_observed" and c["kv_used_gauge_bytes"] is None


def test_kv_check_gpu_shapes_match_facts():
    # FACTS: 147,456 B/token for Qwen3-8B bf16; 791,792 tokens in 108.74 GiB (block 16).
    blocks = math.ceil((32000 + 127) / 16)
    c = kv_check(QWEN3_8B, 32000, 128, kv_dtype="bfloat16", block_size=16,
                 kv_usage_peak=blocks / (791_792 // 16 - 1), allocated_kv_bytes=108.74 * GIB)
    assert c["kv_bytes_per_token_analytical"] == 147_456
    assert c["kv_check_verdict"] == "agree"


def test_memory_row_from_cpu_log_and_fake_rss():
    parsed = parse_vllm_memory_log(CPU_LOG)
    row = memory_row(parsed=parsed, hf_config=TINY, engine=cpu_engine(), mode="aggregated",
                     prompt_tokens_target=1920, record=record(), kv_usage_peak=16 / 16383, nvml=None,
                     rss_peak_bytes=3 * (1 << 30), tolerance=0.02, stamp=STAMP, extra={"attempts": 1})
    assert row["mode"] == "aggregated" and row["status"] == "ok" and row["reason"] is None
    assert row["kv_cache_allocated_gib"] == 1.0 and row["kv_cache_source"] == "cpu_worker_kv_cache"
    assert row["cpu_kv_cache_gib"] == 1.0 and row["cpu_kvcache_space_env_gib"] == 1.0
    assert row["kv_cache_tokens"] == 2_097_152 and row["kv_cache_device"] == "CPU"
    assert row["kv_bytes_per_token_engine"] == 512.0 == row["kv_bytes_per_token_analytical"]
    assert row["weights_gib"] is None and row["weights_source"] is None  # vLLM-CPU logs no weight size
    assert row["weights_analytical_gib"] > 0
    assert row["process_rss_gib"] == 3.0
    assert row["nvml_peak_used_gib"] is None and row["nvml_total_gib"] is None
    assert row["kv_check_verdict"] == "agree" and row["kv_pool_source"].startswith("metrics:")
    assert row["kv_used_block_rounded_gib"] == pytest.approx(16 * 128 * 512 / GIB)
    assert row["attempts"] == 1 and row["run_id"] == "r1" and row["weights"] == "random-embedded"


def test_memory_row_from_gpu_log_and_fake_nvml():
    parsed = parse_vllm_memory_log(GPU_LOG)
    engine = {**engine_dtypes(GPU_LOG), "block_size": 16, "num_blocks": 791_792 // 16, "env": {}}
    nvml = nvml_peak({"available": True, "devices": [
        {"memory_used_peak_bytes": 130 * (1 << 30), "memory_total_bytes": 141 * (1 << 30)}]})
    row = memory_row(parsed=parsed, hf_config=QWEN3_8B, engine=engine, mode="aggregated",
                     prompt_tokens_target=32000, record=record(32000, 128),
                     kv_usage_peak=math.ceil(32127 / 16) / (791_792 // 16 - 1), nvml=nvml, rss_peak_bytes=None,
                     tolerance=0.02, stamp=STAMP)
    assert (row["weights_gib"], row["peak_activation_gib"], row["non_torch_gib"], row["cuda_graph_gib"]) == \
        (15.27, 1.59, 0.22, 1.01)
    assert row["kv_cache_allocated_gib"] == 108.74 and row["kv_pool_source"] == "log:current_kv_cache_memory"
    assert row["nvml_peak_used_gib"] == 130.0 and row["nvml_total_gib"] == 141.0
    assert row["kv_bytes_per_token_engine"] == pytest.approx(147_456, rel=1e-4)
    assert row["kv_check_verdict"] == "agree" and row["process_rss_gib"] is None


def test_failed_request_row_keeps_components_and_reason():
    row = memory_row(parsed=parse_vllm_memory_log(CPU_LOG), hf_config=TINY, engine=cpu_engine(), mode="aggregated",
                     prompt_tokens_target=4000, record=record(error="HTTP 400: maximum context length is 2048"),
                     kv_usage_peak=None, nvml=None, rss_peak_bytes=10, tolerance=0.02, stamp=STAMP)
    assert row["status"] == "failed" and "maximum context length" in row["reason"]
    assert row["kv_check_verdict"] == "request_failed" and row["prompt_tokens"] is None
    assert row["kv_cache_allocated_gib"] == 1.0


def test_unsupported_mode_rows_name_the_reason():
    rows = unsupported_rows("disaggregated", [256, 1024], "needs E3", STAMP)
    assert [r["prompt_tokens_target"] for r in rows] == [256, 1024]
    assert all(r["status"] == "unsupported" and r["mode"] == "disaggregated" and r["reason"] for r in rows)


def test_allocated_kv_prefers_exact_metrics_label():
    parsed = parse_vllm_memory_log(GPU_LOG)
    assert allocated_kv_bytes(parsed, {}) == (108.74 * GIB, "log:current_kv_cache_memory")
    assert allocated_kv_bytes(parsed, {"kv_cache_memory_bytes": 5})[0] == 5.0
    assert allocated_kv_bytes({}, {}) == (None, None)


def test_cache_config_info_labels():
    text = ('# TYPE vllm:cache_config_info gauge\n'
            'vllm:cache_config_info{block_size="128",cache_dtype="auto",engine="0",kv_cache_memory_bytes="1073741824",'
            'num_cpu_blocks="None",num_gpu_blocks="16384"} 1.0\n')
    info = cache_config_info(MetricsSnapshot.parse(text))
    assert info == {"cache_dtype": "auto", "block_size": 128, "num_gpu_blocks": 16384, "num_cpu_blocks": None,
                    "kv_cache_memory_bytes": 1 << 30}
    assert cache_config_info(None) == {} and cache_config_info(MetricsSnapshot()) == {}


def test_nvml_peak_sums_devices_and_handles_cpu_hosts():
    assert nvml_peak({"available": False, "reason": "NVML unavailable"}) is None
    assert nvml_peak(None) is None
    two = nvml_peak({"available": True, "devices": [
        {"memory_used_peak_bytes": 1, "memory_total_bytes": 10}, {"memory_used_peak_bytes": 2, "memory_total_bytes": 10}]})
    assert two == {"peak_used_bytes": 3, "total_bytes": 20, "devices": 2}


def test_process_tree_rss_of_this_process():
    import os

    assert process_tree_rss_bytes(os.getpid()) > 0
    assert process_tree_rss_bytes(None) is None


def test_bar_frame_keeps_calculated_values_out_of_measured_components():
    import pandas as pd

    from context_research.experiments.e5_report import COMPONENTS, bar_frame

    frame = pd.DataFrame({
        "mode": ["aggregated", "aggregated"], "prompt_tokens_target": [1024, 4096], "status": ["ok", "ok"],
        "weights_gib": [None, 1.5], "weights_analytical_gib": [1.4, 1.4],
        "kv_used_gauge_gib": [0.25, None], "kv_used_block_rounded_gib": [0.24, 0.9],
        "kv_used_analytical_gib": [0.23, 0.89], "kv_cache_allocated_gib": [2.0, 2.0]})
    bars = bar_frame(frame).set_index("point")
    measured, calculated = COMPONENTS["kv_used"], COMPONENTS["kv_used_analytical"]
    assert "analytical" not in measured and "analytical" in calculated and "analytical" not in COMPONENTS["weights"]
    # Gauge sampled: drawn as measured. Gauge missed: the block-rounded figure, labelled analytical.
    assert bars.loc["aggregated 1024", measured] == 0.25 and pd.isna(bars.loc["aggregated 1024", calculated])
    assert pd.isna(bars.loc["aggregated 4096", measured]) and bars.loc["aggregated 4096", calculated] == 0.9
    assert bars.loc["aggregated 4096", COMPONENTS["kv_free"]] == pytest.approx(1.1)
    assert pd.isna(bars.loc["aggregated 1024", COMPONENTS["weights"]])
    assert bars.loc["aggregated 1024", COMPONENTS["weights_analytical"]] == 1.4
    assert bars.loc["aggregated 4096", COMPONENTS["weights"]] == 1.5
    assert pd.isna(bars.loc["aggregated 4096", COMPONENTS["weights_analytical"]])
