"""Prompts of exact token length, as token ids (exact by construction) or as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def regular_token_range(model: dict[str, Any]) -> tuple[int, int]:
    """[low, high) of ordinary (non-special) token ids of the served model.

    Reads the tokenizer's added tokens when the model is a local directory; otherwise stays
    below ``bos``/``eos`` ids, which Qwen-style vocabularies put after the regular ones.
    """
    cfg = model.get("hf_config") or {}
    vocab = int(cfg.get("vocab_size") or 32000)
    high = vocab
    tok_json = Path(str(model.get("tokenizer") or model.get("path", ""))) / "tokenizer.json"
    if tok_json.exists():
        data = json.loads(tok_json.read_text())
        added = [t["id"] for t in data.get("added_tokens", [])]
        regular = len(data.get("model", {}).get("vocab", {})) or vocab
        high = min([regular, vocab, *added]) if added else min(regular, vocab)
    else:
        specials = [cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")]
        specials = [s for s in specials if isinstance(s, int)]
        if specials:
            high = min(high, *specials)
    # Skip the lowest ids (byte/control pieces) so prompts look like ordinary text to the model.
    low = min(256, high // 4)
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
