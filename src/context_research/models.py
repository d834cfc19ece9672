"""Resolve a model profile into what the engine and the analysis need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .metadata import weights_mode

EMBEDDED_DIR = Path("resources/models/embedded-qwen3")
DUMMY_DIR = Path("resources/models")
# Files any tokenizer transformers (and so vLLM) can load is made of: a fast tokenizer, a
# tokenizer config naming a class, sentencepiece / tiktoken models, or BPE/WordPiece vocabularies.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "tekken.json")
TOKENIZER_GLOBS = ("*.tiktoken",)


def source_available(source: str, revision: str | None = None) -> bool:
    """A local model directory, or a hub id whose config.json (at ``revision``) is in the HF cache
    (no download)."""
    if Path(source).expanduser().is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source, "config.json", revision=revision), str)
    except Exception:
        return False


def dummy_model_dir(profile: dict[str, Any]) -> Path | None:
    """Where the shape-only folder for a dummy-weights run lives, when one is needed: the profile
    asks for ``load_format: dummy``, names ``dummy_config``, and its source is not available."""
    if profile.get("load_format") != "dummy" or not profile.get("dummy_config"):
        return None
    if profile["source"] == "embedded" or source_available(profile["source"], profile.get("revision")):
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
    model["hf_config"] = load_hf_config(model["path"], source, model.get("revision"))
    check_tokenizer(model)
    model["weights"] = weights_mode(model)
    return model


def has_tokenizer(folder: str | Path) -> bool:
    d = Path(folder)
    return any((d / name).is_file() for name in TOKENIZER_FILES) or any(
        next(d.glob(pattern), None) is not None for pattern in TOKENIZER_GLOBS)


def require_tokenizer(folder: str | Path, key: str, tokenizer_key: str | None = None) -> None:
    """Refuse a local folder with no tokenizer file, in our words, before anything loads it (vLLM's
    own error then suggests installing sentencepiece or tiktoken, which is not the problem).
    A hub id (not a local folder) is left to the engine: it may be in the HF cache."""
    d = Path(folder).expanduser()
    if not d.is_dir() or has_tokenizer(d):
        return
    raise ConfigError(
        f"model folder {d} ({key}) has no tokenizer: none of {', '.join(TOKENIZER_FILES + TOKENIZER_GLOBS)} "
        f"is in it. Copy the model's tokenizer files into the folder, or point "
        f"{tokenizer_key or key.rsplit('.', 1)[0] + '.tokenizer'} at a folder or hub id that has them.")


def check_tokenizer(model: dict[str, Any]) -> None:
    """The tokenizer the engine will load (``--tokenizer`` if the profile sets one, else the model
    folder) exists, checked before any engine starts. A folder that is not built yet (the embedded
    model, a dummy-weights folder) is the workflow's business, not checked here."""
    name = model.get("name", "<profile>")
    if model.get("tokenizer"):
        require_tokenizer(model["tokenizer"], f"models.{name}.tokenizer")
        return
    path = Path(str(model["path"]))
    if (path / "config.json").is_file():
        require_tokenizer(path, f"models.{name}.source")


def load_hf_config(path: str, source: str, revision: str | None = None) -> dict[str, Any] | None:
    """config.json from a local directory or the HF cache at ``revision`` (never downloads); None
    if absent."""
    local = Path(path)
    if local.is_dir():
        cfg = local / "config.json"
        if not cfg.exists():
            raise ConfigError(f"model directory {local} (models.<profile>.source) has no config.json")
        return json.loads(cfg.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    except Exception:
        pass
    return None
