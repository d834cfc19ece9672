import dataclasses

import pytest

from context_research.analysis import model_math as mm
from context_research.analysis.hardware import GPU_SPECS, lookup_gpu
from context_research.errors import ConfigError

QWEN3_8B = {
    "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
TINY = {  # FACTS' tiny CPU model shapes
    "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 3000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H200", "H200-SXM"), ("NVIDIA H200 NVL", "H200-NVL"), ("NVIDIA H100 80GB HBM3", "H100-SXM"),
    ("NVIDIA H100 PCIe", "H100-PCIe"), ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"), ("NVIDIA A100 80GB PCIe", "A100-PCIe-80GB"),
    ("NVIDIA GeForce RTX 4090", "RTX-4090"), ("NVIDIA L40S", "L40S"), ("h100-sxm", "H100-SXM"),
])
def test_lookup_gpu(name, key):
    assert lookup_gpu(name).key == key


def test_lookup_gpu_unknown():
    assert lookup_gpu("NVIDIA L40") is None
    assert lookup_gpu("Tesla T4") is None
    assert lookup_gpu("") is None


def test_gpu_table_has_sources_and_h200_numbers():
    for spec in GPU_SPECS.values():
        assert "NVIDIA" in spec.source and spec.bf16_dense_tflops > 0 and spec.mem_bandwidth_gbs > 0
    h200 = lookup_gpu("NVIDIA H200")
    assert h200.peak_bf16_flops == pytest.approx(989e12)
    assert h200.mem_bandwidth_bytes_per_s == pytest.approx(4.8e12)
    assert h200.memory_gib == 141


def test_kv_bytes_per_token_facts():
    assert mm.kv_bytes_per_token(QWEN3_8B) == 2 * 36 * 8 * 128 * 2 == 147_456
    assert mm.kv_bytes_per_token(QWEN3_8B, kv_dtype_bytes="fp8") == 73_728
    # FACTS: 108.74 GiB / 791,792 tokens
    assert 108.74 * 2**30 / 791_792 == pytest.approx(147_456, rel=1e-4)
    assert mm.kv_bytes_per_token(TINY) == 2 * 2 * 2 * 32 * 2


def test_head_dim_default_and_text_config():
    cfg = {**QWEN3_8B}
    del cfg["head_dim"]
    assert mm.model_dims(cfg)["head_dim"] == 128
    assert mm.kv_bytes_per_token({"text_config": QWEN3_8B}) == 147_456


def test_param_count_tiny_by_hand():
    h, i, L, V, hd = 64, 128, 2, 3000, 32
    attn = h * 4 * hd + 2 * h * 2 * hd + 4 * hd * h
    mlp = 3 * h * i
    other = 2 * h + 2 * hd  # two RMSNorms + Qwen3 q_norm/k_norm
    expected = L * (attn + mlp + other) + V * h + h  # tied lm_head counted once
    assert mm.param_count(TINY) == expected
    assert mm.weight_bytes(TINY) == 2 * expected


def test_param_count_qwen3_8b():
    assert mm.param_count(QWEN3_8B) == 8_190_735_360
    # FACTS: vLLM reported 15.27 GiB for weight
    assert mm.weight_bytes(QWEN3_8B) / 2**30 == pytest.approx(15.27, abs=0.02)


def test_qwen2_bias():
    cfg = {**QWEN3_8B, "model_type": "qwen2"}
    diff = mm.param_count(cfg) - mm.param_count(QWEN3_8B)
    assert diff == 36 * ((32 * 128 + 2 * 8 * 128) - 2 * 128)


def test_prefill_flops_by_hand_and_facts():
    n = 10
    pb = mm.param_breakdown(TINY)
    expected = 2 * pb["layer_matmul"] * 2 * n + 2 * 3000 * 64 * 1 + 4 * 2 * 4 * 32 * (n * (n + 1) / 2)
    assert mm.prefill_flops(TINY, n) == pytest.approx(expected)
    assert mm.prefill_flops(QWEN3_8B, 32_000) == pytest.approx(7.5e14, rel=0.01)
    assert mm.prefill_flops(QWEN3_8B, 32_768) == pytest.approx(7.5e14, rel=0.05)
    assert mm.prefill_flops(QWEN3_8B, 0) == 0


def test_decode_bytes_and_floors():
    weights_read = mm.decode_bytes_per_step(QWEN3_8B, 0)
    assert weights_read / 1e9 == pytest.approx(15.1, abs=0.05)  # FACTS: ~15.1 GB per step
    # a second sequence adds one gathered embedding row (4096 x 2 B); KV: 2 x 1000 tokens
    assert mm.decode_bytes_per_step(QWEN3_8B, 1000, batch=2) == weights_read + 4096 * 2 + 2000 * 147_456
    assert mm.decode_bytes_per_step(QWEN3_8B, [1000, 1000]) == mm.decode_bytes_per_step(QWEN3_8B, 1000, batch=2)
    h200 = lookup_gpu("NVIDIA H200")
    tpot = mm.tpot_floor_s(QWEN3_8B, 1024, h200)
    assert tpot == pytest.approx(mm.decode_bytes_per_step(QWEN3_8B, 1024) / 4.8e12)
    assert 3.0e-3 < tpot < 3.5e-3
    # FACTS' ~3.5 ms uses the measured ~4.3 TB/s copy rate
    assert mm.tpot_floor_s(QWEN3_8B, 1024, h200, bandwidth_bytes_per_s=4.3e12) == pytest.approx(3.5e-3, rel=0.03)
    # FACTS: TTFT >= ~0.95 s at ~790 TFLOP/s measured
    assert mm.ttft_floor_s(QWEN3_8B, 32_000, h200, flops_per_s=790e12) == pytest.approx(0.95, rel=0.02)
    assert mm.ttft_floor_s(QWEN3_8B, 32_000, h200) == pytest.approx(7.465e14 / 989e12, rel=0.01)
    slower = dataclasses.replace(h200, mem_bandwidth_gbs=2400.0)
    assert mm.tpot_floor_s(QWEN3_8B, 1024, slower) == pytest.approx(2 * tpot)


def test_efficiency():
    assert mm.efficiency(1.0, 4.0) == 0.25
    assert mm.efficiency(1.0, None) is None
    assert mm.efficiency(1.0, 0.0) is None


def test_bad_configs():
    bad = {**QWEN3_8B}
    del bad["num_hidden_layers"]
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        mm.param_count(bad)
    with pytest.raises(ConfigError, match="num_experts"):
        mm.param_count({**QWEN3_8B, "num_experts": 128})
    with pytest.raises(ConfigError, match="torch_dtype"):
        mm.kv_bytes_per_token({**QWEN3_8B, "torch_dtype": "complex64"})
