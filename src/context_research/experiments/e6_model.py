"""E6's served model: a derived folder whose config.json carries the YaRN-scaled RoPE block.

``derive_rope_config`` checks the ``experiments.e6`` block against the model's own config.json
(factor, original and maximum positions, max_model_len; a ConfigError names the key) and
returns the rewritten config; ``write_derived_model`` builds the folder: relative symlinks to
the model's files, the new config.json, a tokenizer_config.json covering the new length and
derived_from.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..analysis.rope import ROPE_KEYS, normalize_rope_scaling
from ..errors import ConfigError
from ..hashing import sha256_file
from ..io import write_json, write_text

KEY = "experiments.e6"
YARN_EXTRA_KEYS = ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim")


# -- the YaRN config ---------------------------------------------------------------------------

def requested_rope_type(block: dict[str, Any]) -> tuple[str, list[str]]:
    """The scaling type asked for under ``rope_type`` and/or the legacy ``type`` (default yarn),
    and which of the two keys were given. Both given and different -> ConfigError naming both."""
    given = [k for k in ("rope_type", "type") if block.get(k) is not None]
    if len(given) == 2 and block["rope_type"] != block["type"]:
        raise ConfigError(f"config keys '{KEY}.rope_scaling.rope_type' ({block['rope_type']!r}) and the legacy "
                          f"'{KEY}.rope_scaling.type' ({block['type']!r}) disagree; give one, or the same value")
    return (block[given[0]] if given else "yarn"), given


def native_context(hf_config: dict[str, Any]) -> tuple[int, str]:
    """The model's pre-scaling context: an existing RoPE block's original_max_position_embeddings,
    else config.json's max_position_embeddings."""
    for key in ROPE_KEYS:
        block = hf_config.get(key)
        if isinstance(block, dict) and block.get("original_max_position_embeddings"):
            return int(block["original_max_position_embeddings"]), f"config.json {key}.original_max_position_embeddings"
    if not hf_config.get("max_position_embeddings"):
        raise ConfigError(f"the model's config.json has no max_position_embeddings: set "
                          f"'{KEY}.rope_scaling.original_max_position_embeddings'")
    return int(hf_config["max_position_embeddings"]), "config.json max_position_embeddings"


def derive_rope_config(cfg: dict[str, Any], hf_config: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(new_hf_config, effective)`` for the E6 config block; ConfigError names the key when
    factor, original/maximum positions and max_model_len are inconsistent."""
    if not hf_config:
        raise ConfigError("models.<profile>.source: E6 needs the model's config.json (a local folder or the HF "
                          "cache) to derive a YaRN config")
    block = dict(cfg["rope_scaling"])
    rope_type, keys_given = requested_rope_type(block)
    factor = block.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 1:
        raise ConfigError(f"config key '{KEY}.rope_scaling.factor' must be a number > 1, got {factor!r}")
    if block.get("original_max_position_embeddings"):
        original, original_source = int(block["original_max_position_embeddings"]), \
            f"{KEY}.rope_scaling.original_max_position_embeddings"
    else:
        original, original_source = native_context(hf_config)
    scaled = int(original * factor)
    max_pos = cfg.get("max_position_embeddings")
    if max_pos is not None and max_pos != scaled:
        raise ConfigError(
            f"config key '{KEY}.max_position_embeddings' = {max_pos} must equal original_max_position_embeddings x "
            f"'{KEY}.rope_scaling.factor' = {original} x {factor:g} = {scaled} (or be left out)")
    max_len = cfg["max_model_len"]
    if max_len > scaled:
        raise ConfigError(
            f"config key '{KEY}.max_model_len' = {max_len} exceeds original_max_position_embeddings x "
            f"'{KEY}.rope_scaling.factor' = {original} x {factor:g} = {scaled}")
    try:
        new_cfg, effective = normalize_rope_scaling(hf_config, float(factor), original, max_len, rope_type)
    except ConfigError as exc:
        raise ConfigError(f"config key '{KEY}.rope_scaling': {exc}") from None
    extras = {k: block[k] for k in YARN_EXTRA_KEYS if block.get(k) is not None}
    for key in effective["rope_keys_written"]:
        new_cfg[key].update(extras)
    effective.update({
        "requested_type_keys": keys_given,
        "original_max_position_embeddings_source": original_source,
        "native_context": native_context(hf_config)[0],
        "extra_parameters": extras,
        "rope_blocks_written": {k: new_cfg[k] for k in effective["rope_keys_written"]},
    })
    return new_cfg, effective


def model_source_dir(model: dict[str, Any]) -> Path:
    """A local folder holding the served model's files (the HF cache snapshot for a hub id)."""
    local = Path(str(model["path"]))
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model["source"]), local_files_only=True))
    except Exception as exc:
        raise ConfigError(f"models.{model.get('name')}.source: E6 needs the model's files on disk to derive a "
                          f"YaRN folder; {model['source']!r} is neither a folder nor in the HF cache ({exc})") from None


def write_derived_model(source_dir: Path, hf_config: dict[str, Any], dest: Path,
                        effective: dict[str, Any]) -> dict[str, Any]:
    """Build ``dest``: relative symlinks to ``source_dir``'s files, the rewritten config.json, a
    tokenizer_config.json whose model_max_length covers the new length, and derived_from.json.
    Built beside ``dest`` and renamed into place, so a reader never sees half a folder."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    linked = []
    for entry in sorted(source_dir.iterdir()):
        if entry.name in ("config.json", "tokenizer_config.json", "manifest.json", "derived_from.json"):
            continue
        (tmp / entry.name).symlink_to(os.path.relpath(entry.resolve(), dest.resolve().parent / dest.name))
        linked.append(entry.name)
    write_text(tmp / "config.json", json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    tok_cfg = source_dir / "tokenizer_config.json"
    if tok_cfg.exists():
        tok = json.loads(tok_cfg.read_text())
        if int(tok.get("model_max_length") or 0) < effective["max_position_embeddings"]:
            tok["model_max_length"] = effective["max_position_embeddings"]
        write_text(tmp / "tokenizer_config.json", json.dumps(tok, indent=2, sort_keys=True) + "\n")
    info = {"source_dir": str(source_dir.resolve()), "linked_files": linked, "rope": effective,
            "config_sha256": sha256_file(tmp / "config.json")}
    write_json(tmp / "derived_from.json", info)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return info
