"""RoPE-scaling (YaRN) config normalization for E6.

An HF ``config.json`` can carry the RoPE block as ``rope_scaling`` (transformers 4.x; the type
under ``rope_type`` or the legacy ``type``) or as ``rope_parameters`` (transformers 5, which
also moves ``rope_theta`` inside it). transformers 5 reads ``rope_scaling`` first when both are
present, so we write the normalized block under every key the config already uses
(``rope_scaling`` when it uses neither) and keep each block's other fields (``rope_theta``,
``beta_fast``, ...). ``max_position_embeddings`` is set to original x factor, as transformers
warns otherwise (FACTS: 32768 x 4 = 131072).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from context_research.errors import ConfigError

ROPE_KEYS = ("rope_scaling", "rope_parameters")
SCALED_ROPE_TYPES = {"yarn", "linear", "dynamic", "longrope", "llama3"}
KNOWN_ROPE_TYPES = SCALED_ROPE_TYPES | {"default", "mrope", "su"}


def _block_type(block: dict[str, Any], key: str) -> str | None:
    new, legacy = block.get("rope_type"), block.get("type")
    if new is not None and legacy is not None and new != legacy:
        raise ConfigError(f"{key}: 'rope_type'={new!r} conflicts with legacy 'type'={legacy!r}")
    rope_type = new if new is not None else legacy
    if rope_type is not None and rope_type not in KNOWN_ROPE_TYPES:
        raise ConfigError(f"{key}.rope_type: unknown RoPE type {rope_type!r}")
    return rope_type


def normalize_rope_scaling(hf_cfg: dict[str, Any], factor: float, original_max: int,
                           target_max_model_len: int, rope_type: str = "yarn"
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(new_cfg, effective)``: a copy of ``hf_cfg`` with ``rope_type`` scaling applied.

    The RoPE block gets ``rope_type`` and ``type`` (both = ``rope_type``, for old and new
    loaders), ``factor`` and ``original_max_position_embeddings``; the top level gets
    ``max_position_embeddings = int(original_max x factor)``. ``effective`` records what was set,
    the keys written, the block that was there before, and the extension ratio.

    Raises ConfigError, naming the key, when: factor <= 1; original_max <= 0; the target
    ``max_model_len`` exceeds original x factor; rope_type / existing type is unknown, or the
    existing block uses a different scaling type, or 'rope_type' and 'type' disagree; an existing
    ``original_max_position_embeddings`` differs from ``original_max``; ``rope_parameters`` is
    nested per layer type (not supported).
    """
    if rope_type not in SCALED_ROPE_TYPES:
        raise ConfigError(f"rope_scaling.rope_type: unknown or unscaled RoPE type {rope_type!r}")
    if factor is None or not isinstance(factor, (int, float)) or math.isnan(factor) or factor <= 1:
        raise ConfigError(f"rope_scaling.factor must be > 1, got {factor!r}")
    if not isinstance(original_max, int) or original_max <= 0:
        raise ConfigError(f"rope_scaling.original_max_position_embeddings must be a positive int, got {original_max!r}")
    scaled_max = int(original_max * factor)
    if not isinstance(target_max_model_len, int) or target_max_model_len <= 0:
        raise ConfigError(f"max_model_len must be a positive int, got {target_max_model_len!r}")
    if target_max_model_len > scaled_max:
        raise ConfigError(
            f"max_model_len={target_max_model_len} exceeds original_max_position_embeddings x factor "
            f"= {original_max} x {factor} = {scaled_max}")

    cfg = copy.deepcopy(hf_cfg)
    present = [k for k in ROPE_KEYS if isinstance(cfg.get(k), dict) and cfg[k]]
    previous = {k: copy.deepcopy(cfg[k]) for k in present}
    targets = present or ["rope_scaling"]
    for key in present:
        block = cfg[key]
        if key == "rope_parameters" and block and all(isinstance(v, dict) for v in block.values()):
            raise ConfigError("rope_parameters: nested per-layer-type RoPE parameters are not supported")
        old_type = _block_type(block, key)
        if old_type not in (None, "default", rope_type):
            raise ConfigError(f"{key}.rope_type: config already uses {old_type!r} scaling; refusing to "
                              f"replace it with {rope_type!r}")
        old_orig = block.get("original_max_position_embeddings")
        if old_type == rope_type and old_orig is not None and int(old_orig) != original_max:
            raise ConfigError(f"{key}.original_max_position_embeddings={old_orig} differs from the requested "
                              f"{original_max}")
    for key in targets:
        block = dict(cfg.get(key) or {})
        block.update({
            "rope_type": rope_type,
            "type": rope_type,
            "factor": float(factor),
            "original_max_position_embeddings": original_max,
        })
        cfg[key] = block
    previous_max = cfg.get("max_position_embeddings")
    cfg["max_position_embeddings"] = scaled_max
    effective = {
        "rope_type": rope_type,
        "factor": float(factor),
        "original_max_position_embeddings": original_max,
        "max_position_embeddings": scaled_max,
        "previous_max_position_embeddings": previous_max,
        "max_model_len": target_max_model_len,
        "extension_ratio": target_max_model_len / original_max,
        "rope_keys_written": targets,
        "previous_rope_blocks": previous,
        "rope_theta": cfg[targets[0]].get("rope_theta", cfg.get("rope_theta")),
    }
    return cfg, effective
