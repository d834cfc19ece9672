"""Prompts of exact token length, as token ids (exact by construction) or as text."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=16)
def _tokenizer_vocab(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, ...], int]:
    """(special added-token ids, regular vocab size) of one tokenizer.json, parsed once per
    version of the file (path, mtime, size are the cache key: Qwen3's takes ~0.2 s to parse)."""
    data = json.loads(Path(path).read_text())
    specials = tuple(t["id"] for t in data.get("added_tokens", []) if t.get("special", True))
    return specials, len(data.get("model", {}).get("vocab", {}))


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
    if tok_json.is_file():
        st = tok_json.stat()
        added, n_vocab = _tokenizer_vocab(str(tok_json.resolve()), st.st_mtime_ns, st.st_size)
        specials = list(added)
        regular = min(vocab, n_vocab or vocab)
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
