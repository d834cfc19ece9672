"""Shape-only model folders for ``load_format: dummy`` runs where no weights can be fetched.

vLLM's dummy loader needs only ``config.json``; the server still needs a tokenizer. A synthetic
word-level tokenizer (token *i* is the word ``t<i>``) round-trips ids exactly, so text prompts
have exact token lengths and ``vllm bench serve`` runs unchanged. Nothing here is a real
tokenizer or real weights, and artifacts say ``weights: dummy``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .hashing import sha256_file
from .io import write_json, write_text


def synthetic_tokenizer(vocab_size: int, eos_token_id: int | None):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return tok


def build_dummy_model(out_dir: str | Path, config_json: str | Path) -> dict:
    """Write config.json, a synthetic tokenizer and manifest.json (last) into ``out_dir``."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = json.loads(Path(config_json).read_text())
    write_text(tmp / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    eos = cfg.get("eos_token_id")
    synthetic_tokenizer(int(cfg["vocab_size"]), eos).save(str(tmp / "tokenizer.json"))
    write_json(tmp / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": f"t{eos}" if isinstance(eos, int) else None,
        "model_max_length": int(cfg.get("max_position_embeddings", 32768)),
        "clean_up_tokenization_spaces": False,
    })
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {"kind": "dummy-shapes", "config_source": str(config_json),
                "files": [{"name": n, "sha256": sha256_file(tmp / n), "size": (tmp / n).stat().st_size}
                          for n in files],
                "note": "config.json only + synthetic word-level tokenizer; weights are vLLM dummy weights"}
    write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest
