"""Load, validate and hash the workflow configuration.

Validation uses ``snakemake.utils.validate`` (which also fills the schema's defaults); its
jsonschema error is turned into one line that names the offending key.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .hashing import sha256_obj

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_RELPATH = Path("workflow") / "schemas" / "config.schema.yaml"


def workflow_file(*parts: str) -> Path:
    """A file of the workflow being run (rules run in its directory), else this checkout's."""
    here = Path.cwd().joinpath(*parts)
    return here if here.exists() else REPO_ROOT.joinpath(*parts)


def default_schema() -> Path:
    return workflow_file(*SCHEMA_RELPATH.parts)

SIMULATED_OPT_IN_ENV = "CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND"


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set((error.schema or {}).get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            parts.append(extra[0])
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        if missing:
            parts.append(missing[0])
    return ".".join(parts) or "<top level>"


def _describe(error) -> str:
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted((error.schema or {}).get("properties", {}))
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"config key '{key}' is not allowed{hint}"
    if error.validator == "required":
        return f"config key '{key}' is required"
    if error.validator == "enum":
        return f"config key '{key}': {error.instance!r} is not one of {error.validator_value}"
    return f"config key '{key}': {error.message}"


def merged_schema(schema_path: str | os.PathLike | None = None) -> dict:
    """The top-level schema with every ``experiments/<eN>.schema.yaml`` merged in.

    Inlined rather than ``$ref``-ed: defaults inside referenced schemas are not filled by
    ``snakemake.utils.validate``.
    """
    from .experiments.catalog import EXPERIMENTS

    top = Path(schema_path or default_schema())
    schema = yaml.safe_load(top.read_text(encoding="utf-8"))
    experiments = schema["properties"]["experiments"].setdefault("properties", {})
    for name in EXPERIMENTS:
        part = top.parent / "experiments" / f"{name}.schema.yaml"
        try:
            sub = yaml.safe_load(part.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"experiment {name} has no config schema: {part} is missing") from None
        sub.pop("$schema", None)
        sub.setdefault("default", {})
        experiments[name] = sub
    report = schema["properties"]["report"]["properties"]
    names = list(EXPERIMENTS)
    report["experiments"]["items"]["enum"] = names
    report["experiments"]["default"] = names
    report["not_run_reasons"]["propertyNames"]["enum"] = names
    return schema


def _merged_schema_file(schema_path: str | os.PathLike) -> str:
    """Write the merged schema once per process; ``snakemake.utils.validate`` takes a path."""
    key = str(Path(schema_path).resolve())
    if key not in _MERGED_SCHEMA_FILES:
        import tempfile

        fd, path = tempfile.mkstemp(prefix="context-research-schema-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(merged_schema(schema_path), handle, sort_keys=False)
        _MERGED_SCHEMA_FILES[key] = path
        import atexit

        atexit.register(lambda p=path: os.path.exists(p) and os.unlink(p))
    return _MERGED_SCHEMA_FILES[key]


_MERGED_SCHEMA_FILES: dict[str, str] = {}


def validate_config(config: dict, schema_path: str | os.PathLike | None = None,
                    source: str = "config/config.yaml") -> dict:
    """Validate ``config`` in place (defaults filled) and return it; raise ConfigError naming the key."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(config).__name__}")
    try:
        validate(config, _merged_schema_file(schema_path or default_schema()))
    except WorkflowError as exc:
        cause = next((a for a in exc.args if isinstance(a, jsonschema.ValidationError)), None)
        cause = cause or exc.__cause__ or exc.__context__
        if isinstance(cause, jsonschema.ValidationError):
            raise ConfigError(f"Invalid configuration ({source}): {_describe(cause)}") from None
        raise ConfigError(f"Invalid configuration ({source}): {exc}") from None
    profile = config["model_profile"]
    if profile not in config["models"]:
        raise ConfigError(
            f"Invalid configuration ({source}): config key 'model_profile': {profile!r} is not one of "
            f"the entries of 'models' ({', '.join(sorted(config['models']))})")
    if config["serving"]["backend"] == "simulated" and os.environ.get(SIMULATED_OPT_IN_ENV) != "1":
        raise ConfigError(
            f"Invalid configuration ({source}): config key 'serving.backend' is 'simulated', which needs "
            f"the explicit opt-in {SIMULATED_OPT_IN_ENV}=1 in the environment as well. Use backend: vllm "
            "for real measurements.")
    return config


def load_config(path: str | os.PathLike, overlays: list[str | os.PathLike] = (),
                schema_path: str | os.PathLike | None = None) -> dict:
    """Read a YAML config (plus overlays merged on top, like ``--configfile``) and validate it."""
    config: dict = {}
    for p in [path, *overlays]:
        try:
            data = yaml.safe_load(Path(p).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        deep_update(config, data)
    return validate_config(config, schema_path, source=", ".join(map(str, [path, *overlays])))


def deep_update(base: dict, new: dict) -> dict:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def model_profile(config: dict) -> dict:
    """The served model's profile, with its name under ``name``."""
    name = config["model_profile"]
    return {"name": name, **config["models"][name]}


def experiment_config(config: dict, experiment: str) -> dict:
    try:
        return config["experiments"][experiment]
    except KeyError:
        raise ConfigError(f"config key 'experiments.{experiment}' is missing") from None


def experiment_view(config: dict, experiment: str) -> dict:
    """The part of the config one experiment depends on, itself a valid config.

    Rules pass this (not the whole config) to the engine, so that a change elsewhere in the
    config does not alter the rule's params and does not rerun it.
    """
    name = config["model_profile"]
    view = {
        "model_profile": name,
        "models": {name: config["models"][name]},
        "serving": config["serving"],
        "experiments": {experiment: experiment_config(config, experiment)},
    }
    if config["models"][name]["source"] == "embedded":
        view["embedded_model"] = config.get("embedded_model", {})
    return view


def hash_inputs(config: dict, experiment: str, dataset_manifest_sha256: str | None = None) -> dict:
    """Everything an experiment's result depends on, as a canonical mapping."""
    model = model_profile(config)
    inputs = {
        "experiment": experiment,
        "experiment_config": experiment_config(config, experiment),
        "model": model,
        "serving": config["serving"],
        "dataset_manifest_sha256": dataset_manifest_sha256,
    }
    if model["source"] == "embedded":
        inputs["embedded_model"] = config.get("embedded_model", {})
    return inputs


def experiment_hash(config: dict, experiment: str, dataset_manifest_sha256: str | None = None) -> str:
    """sha256 of the canonical experiment config, model, serving settings and dataset manifest."""
    return sha256_obj(hash_inputs(config, experiment, dataset_manifest_sha256))
