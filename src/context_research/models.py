"""Resolve a model profile into what the engine and the analysis need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .metadata import weights_mode

EMBEDDED_DIR = Path("resources/models/embedded-qwen3")
DUMMY_DIR = Path("resources/models")


def source_available(source: str) -> bool:
    """A local model directory, or a hub id whose config.json is in the HF cache (no download)."""
    if Path(source).expanduser().is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except Exception:
        return False


def dummy_model_dir(profile: dict[str, Any]) -> Path | None:
    """Where the shape-only folder for a dummy-weights run lives, when one is needed: the profile
    asks for ``load_format: dummy``, names ``dummy_config``, and its source is not available."""
    if profile.get("load_format") != "dummy" or not profile.get("dummy_config"):
        return None
    if profile["source"] == "embedded" or source_available(profile["source"]):
        return None
    return DUMMY_DIR / f"{profile['name']}-dummy"


def resolve_model(profile: dict[str, Any], embedded_dir: str | Path = EMBEDDED_DIR) -> dict[str, Any]:
    """The profile plus ``path`` (what ``vllm serve`` gets), ``hf_config`` and ``weights``."""
    model = dict(profile)
    source = model["source"]
    dummy_dir = dummy_model_dir(model)
    if source == "embedded":
        model["path"] = str(Path(embedded_dir).resolve())
    elif dummy_dir is not None:
        model["path"] = str(dummy_dir.resolve())
        model["shape_only"] = True
    else:
        local = Path(source).expanduser()
        model["path"] = str(local.resolve()) if local.exists() else source
    model["hf_config"] = load_hf_config(model["path"], source)
    model["weights"] = weights_mode(model)
    return model


def load_hf_config(path: str, source: str) -> dict[str, Any] | None:
    """config.json from a local directory or the HF cache (never downloads); None if absent."""
    local = Path(path)
    if local.is_dir():
        cfg = local / "config.json"
        if not cfg.exists():
            raise ConfigError(f"model directory {local} (models.<profile>.source) has no config.json")
        return json.loads(cfg.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    except Exception:
        pass
    return None
