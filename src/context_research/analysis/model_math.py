"""Analytical sizes, FLOPs and bytes of a dense decoder-only transformer, from its HF ``config.json``.

Supports Qwen2/Qwen3/Llama/Mistral-style configs: ``hidden_size``, ``intermediate_size``,
``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads`` (default: heads),
``head_dim`` (default: hidden / heads), ``vocab_size``, ``tie_word_embeddings``,
``torch_dtype`` (or transformers-5 ``dtype``). A multimodal config's ``text_config`` is used
when the top level lacks ``hidden_size``. MoE configs are refused (ConfigError).

Model of the network (SwiGLU MLP, GQA attention, RMSNorm):
- per layer: q/k/v/o projections, gate/up/down MLP, two RMSNorms, plus Qwen3's per-head
  q_norm/k_norm and Qwen2's q/k/v biases (``attention_bias`` or model_type "qwen2");
- input embedding table, final norm, and an lm_head (shared with the embedding when tied).

These are *floors*: FLOPs count only matmuls and attention scores/values (no softmax, norms,
RoPE, activation functions); bytes count only weights and KV cache (no activations).
"""

from __future__ import annotations

from typing import Any, Iterable

from context_research.analysis.hardware import GpuSpec
from context_research.errors import ConfigError

_DTYPE_BYTES = {
    "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
    "float32": 4, "fp32": 4, "float": 4,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1,
}


def dtype_bytes(dtype: str | int | None, default: int = 2) -> int:
    """Bytes per element for a torch dtype name (``"bfloat16"``, ``"torch.float16"``, ``"fp8"``)."""
    if dtype is None:
        return default
    if isinstance(dtype, int):
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name == "auto":
        return default
    if name not in _DTYPE_BYTES:
        raise ConfigError(f"torch_dtype: unknown dtype {dtype!r}")
    return _DTYPE_BYTES[name]


def _text_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        return cfg["text_config"]
    return cfg


def _req(cfg: dict[str, Any], key: str) -> int:
    value = cfg.get(key)
    if value is None:
        raise ConfigError(f"config.json: missing required key {key!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"config.json: {key!r} must be a positive number, got {value!r}")
    return int(value)


def model_dims(cfg: dict[str, Any]) -> dict[str, Any]:
    """The shapes this module uses, validated; raises ConfigError naming a missing/bad key."""
    c = _text_cfg(cfg)
    for moe_key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if c.get(moe_key):
            raise ConfigError(f"config.json: {moe_key!r} set: MoE models are not supported by model_math")
    hidden = _req(c, "hidden_size")
    heads = _req(c, "num_attention_heads")
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = c.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError("config.json: 'head_dim' missing and hidden_size is not divisible by num_attention_heads")
        head_dim = hidden // heads
    model_type = str(c.get("model_type") or cfg.get("model_type") or "")
    attn_bias = c.get("attention_bias")
    if attn_bias is None:
        attn_bias = model_type == "qwen2"
    return {
        "hidden": hidden,
        "intermediate": _req(c, "intermediate_size"),
        "layers": _req(c, "num_hidden_layers"),
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": int(head_dim),
        "vocab": _req(c, "vocab_size"),
        "tied": bool(c.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
        "dtype_bytes": dtype_bytes(c.get("torch_dtype") or c.get("dtype") or cfg.get("torch_dtype") or cfg.get("dtype")),
        "attention_bias": bool(attn_bias),
        "qk_norm": model_type.startswith("qwen3"),
        "model_type": model_type,
    }


def kv_bytes_per_token(cfg: dict[str, Any], kv_dtype_bytes: int | str | None = None) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x bytes. KV dtype defaults to the model dtype."""
    d = model_dims(cfg)
    nbytes = d["dtype_bytes"] if kv_dtype_bytes is None else dtype_bytes(kv_dtype_bytes)
    return 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * nbytes


def param_breakdown(cfg: dict[str, Any]) -> dict[str, int]:
    """Parameter counts by component. ``layer_matmul`` = q/k/v/o + MLP weights of ONE layer."""
    d = model_dims(cfg)
    h, hd = d["hidden"], d["head_dim"]
    q_out, kv_out = d["heads"] * hd, d["kv_heads"] * hd
    attn = h * q_out + 2 * h * kv_out + q_out * h
    mlp = 3 * h * d["intermediate"]
    layer_small = 2 * h  # input_layernorm + post_attention_layernorm
    if d["attention_bias"]:
        layer_small += q_out + 2 * kv_out
    if d["qk_norm"]:
        layer_small += 2 * hd
    embedding = d["vocab"] * h
    lm_head = 0 if d["tied"] else d["vocab"] * h
    layers = d["layers"]
    total = layers * (attn + mlp + layer_small) + embedding + lm_head + h  # + final norm
    return {
        "layer_matmul": attn + mlp,
        "layer_other": layer_small,
        "layers_total": layers * (attn + mlp + layer_small),
        "embedding": embedding,
        "lm_head": lm_head,
        "final_norm": h,
        "total": total,
    }


def param_count(cfg: dict[str, Any]) -> int:
    """All parameters, counting a tied embedding/lm_head once."""
    return param_breakdown(cfg)["total"]


def weight_bytes(cfg: dict[str, Any], weight_dtype_bytes: int | str | None = None) -> int:
    nbytes = model_dims(cfg)["dtype_bytes"] if weight_dtype_bytes is None else dtype_bytes(weight_dtype_bytes)
    return param_count(cfg) * nbytes


def prefill_flops(cfg: dict[str, Any], n_tokens: int, lm_head_tokens: int = 1) -> float:
    """FLOPs of one prefill of ``n_tokens`` with an empty cache (batch 1).

    = 2 x (per-layer matmul params x layers) x n_tokens      [dense projections + MLP]
    + 2 x (vocab x hidden) x lm_head_tokens                   [lm_head; default: the LAST token
                                                               only, as vLLM computes logits only
                                                               for the sampled position]
    + 2 x 2 x layers x heads x head_dim x n(n+1)/2            [causal QK^T and PV, ~n^2/2 pairs]
    Qwen3-8B, n=32,000: ~7.46e14 (FACTS: ~7.5e14); n=32,768: ~7.72e14.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    d = model_dims(cfg)
    pb = param_breakdown(cfg)
    dense = 2.0 * pb["layer_matmul"] * d["layers"] * n_tokens
    head = 2.0 * d["vocab"] * d["hidden"] * min(lm_head_tokens, n_tokens)
    pairs = n_tokens * (n_tokens + 1) / 2.0
    attn = 2.0 * 2.0 * d["layers"] * d["heads"] * d["head_dim"] * pairs
    return dense + head + attn


def decode_bytes_per_step(cfg: dict[str, Any], context_tokens: int | Iterable[int], batch: int = 1,
                          kv_dtype_bytes: int | str | None = None) -> int:
    """Bytes one decode step must read from memory: all weights once + every sequence's KV cache.

    The input embedding table is NOT read whole (only ``batch`` rows are gathered) unless it is
    tied to the lm_head. ``context_tokens`` is the KV length per sequence (prompt + generated),
    either one int applied to all ``batch`` sequences or one int per sequence.
    Qwen3-8B: ~15.13e9 B of weights (FACTS: ~15.1 GB).
    """
    d = model_dims(cfg)
    pb = param_breakdown(cfg)
    params_read = pb["total"] - (0 if d["tied"] else pb["embedding"])
    if isinstance(context_tokens, int):
        kv_tokens = context_tokens * batch
        n_seqs = batch
    else:
        lengths = list(context_tokens)
        kv_tokens, n_seqs = sum(lengths), len(lengths)
    embed_rows = 0 if d["tied"] else n_seqs * d["hidden"]
    return (params_read + embed_rows) * d["dtype_bytes"] + kv_tokens * kv_bytes_per_token(cfg, kv_dtype_bytes)


def ttft_floor_s(cfg: dict[str, Any], n_tokens: int, gpu: GpuSpec, flops_per_s: float | None = None) -> float:
    """prefill_flops / peak dense BF16 FLOP/s (datasheet unless ``flops_per_s`` is given, e.g. a
    measured GEMM rate). H200 datasheet, Qwen3-8B, 32,000 tokens: ~0.75 s; at the ~790 TFLOP/s
    measured in FACTS: ~0.95 s."""
    return prefill_flops(cfg, n_tokens) / (flops_per_s or gpu.peak_bf16_flops)


def tpot_floor_s(cfg: dict[str, Any], context: int, gpu: GpuSpec, batch: int = 1,
                 bandwidth_bytes_per_s: float | None = None) -> float:
    """decode_bytes_per_step / memory bandwidth (datasheet unless given, e.g. a measured copy rate).
    H200 datasheet (4.8 TB/s), Qwen3-8B, 1K context: ~3.2 ms; at the ~4.3 TB/s copy rate
    measured in FACTS: ~3.55 ms (FACTS: "TPOT >= ~3.5 ms")."""
    return decode_bytes_per_step(cfg, context, batch) / (bandwidth_bytes_per_s or gpu.mem_bandwidth_bytes_per_s)


def efficiency(floor_s: float | None, measured_s: float | None) -> float | None:
    """floor / measured (1.0 = at the physical floor); None when either is missing or not > 0."""
    if floor_s is None or measured_s is None or measured_s <= 0 or floor_s < 0:
        return None
    return floor_s / measured_s
