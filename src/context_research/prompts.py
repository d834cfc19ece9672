"""Prompts of exact token length, as token ids (exact by construction) or as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def regular_token_range(model: dict[str, Any]) -> tuple[int, int]:
    """[low, high) of ordinary (non-special) token ids of the served model.

    Special tokens sit either before the regular vocabulary (the embedded tokenizer) or after it
    (Qwen); the block on the other side is used. Byte-level pieces at the start of a BPE vocab
    are skipped so prompts look like ordinary text to the model.
    """
    cfg = model.get("hf_config") or {}
    vocab = int(cfg.get("vocab_size") or 32000)
    specials: list[int] = []
    regular = vocab
    tok_json = Path(str(model.get("tokenizer") or model.get("path", ""))) / "tokenizer.json"
    if tok_json.exists():
        data = json.loads(tok_json.read_text())
        specials = [t["id"] for t in data.get("added_tokens", []) if t.get("special", True)]
        regular = min(vocab, len(data.get("model", {}).get("vocab", {})) or vocab)
    specials += [cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if isinstance(cfg.get(k), int)]
    low, high = 0, regular
    below = [s for s in specials if s < regular // 2]
    above = [s for s in specials if s >= regular // 2]
    if below:
        low = max(below) + 1
    if above:
        high = min(above)
    if high - low > 4 * 256:
        low += 256
    if high <= low:
        raise ValueError(f"no regular token ids in the model's vocabulary (vocab_size={vocab})")
    return low, high


def token_id_prompt(n_tokens: int, seed: int, model: dict[str, Any], unique_prefix: int | None = None) -> list[int]:
    """``n_tokens`` random regular token ids from a seeded generator.

    ``unique_prefix`` (e.g. the request index) fixes the first tokens to a distinct pattern so no
    two requests share a prefix-cache block.
    """
    low, high = regular_token_range(model)
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, high, size=n_tokens).tolist()
    if unique_prefix is not None and n_tokens >= 2:
        span = high - low
        ids[0] = low + (unique_prefix % span)
        ids[1] = low + ((unique_prefix // span) % span)
    return ids
