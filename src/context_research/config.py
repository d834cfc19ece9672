"""Load, validate and hash the workflow configuration.

Validation uses ``snakemake.utils.validate`` (which also fills the schema's defaults); its
jsonschema error is turned into one line that names the offending key.

This module knows no experiment: the callers (the CLI, ``workflow/rules/common.smk``, tests) pass
the declarations (``experiments.catalog.EXPERIMENTS``, or one ``Experiment``) to whatever needs
them: their names and config checks to validation, an experiment's analysis keys to its hash.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

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
# The key a server bound to a non-loopback address requires (vLLM --api-key); clients send it.
API_KEY_ENV = "CONTEXT_RESEARCH_API_KEY"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and ``localhost``; anything else reaches
    other machines (``0.0.0.0`` and ``::`` bind every interface)."""
    import ipaddress

    name = str(host).strip().lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False  # a host name: it may resolve to any interface
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def exposure_error(serving: dict) -> str | None:
    """Why ``serving`` may not be used as is: a non-loopback host without ``allow_remote``."""
    host = serving.get("host", "127.0.0.1")
    if is_loopback(host) or serving.get("allow_remote") is True:
        return None
    return (f"config key 'serving.host' is {host!r}, which is not a loopback address (127.0.0.0/8, "
            f"localhost, ::1): vLLM's server would accept requests from other machines. Set "
            f"'serving.allow_remote: true' as well (the server then requires the API key in "
            f"{API_KEY_ENV}), or use host 127.0.0.1")


def missing_api_key_error(serving: dict) -> str | None:
    """Why a non-loopback server cannot start: ``CONTEXT_RESEARCH_API_KEY`` is unset or empty."""
    host = serving.get("host", "127.0.0.1")
    if is_loopback(host) or os.environ.get(API_KEY_ENV, "").strip():
        return None
    return (f"serving.host {host!r} with serving.allow_remote: true needs an API key: set the environment "
            f"variable {API_KEY_ENV} (the server then requires it and every client sends it)")


def api_key_for(serving: dict) -> str | None:
    """The API key the server must require: from ``CONTEXT_RESEARCH_API_KEY`` when the host is not
    loopback (``allow_remote``), else None. Refuses a non-loopback host without the opt-in or
    without the key."""
    why = exposure_error(serving) or missing_api_key_error(serving)
    if why is not None:
        raise ConfigError(f"Invalid configuration: {why}")
    if is_loopback(serving.get("host", "127.0.0.1")):
        return None
    return os.environ[API_KEY_ENV].strip()


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


def merged_schema(schema_path: str | os.PathLike | None = None, *, experiments: Mapping[str, Any]) -> dict:
    """The top-level schema with the ``experiments/<eN>.schema.yaml`` of every declared experiment
    (``experiments``: {name: declaration}, in catalog order) merged in.

    Inlined rather than ``$ref``-ed: defaults inside referenced schemas are not filled by
    ``snakemake.utils.validate``.
    """
    top = Path(schema_path or default_schema())
    schema = yaml.safe_load(top.read_text(encoding="utf-8"))
    blocks = schema["properties"]["experiments"].setdefault("properties", {})
    for name in experiments:
        part = top.parent / "experiments" / f"{name}.schema.yaml"
        try:
            sub = yaml.safe_load(part.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"experiment {name} has no config schema: {part} is missing") from None
        sub.pop("$schema", None)
        sub.setdefault("default", {})
        blocks[name] = sub
    report = schema["properties"]["report"]["properties"]
    names = list(experiments)
    report["experiments"]["items"]["enum"] = names
    report["experiments"]["default"] = names
    report["not_run_reasons"]["propertyNames"]["enum"] = names
    schema["properties"]["compare"]["properties"]["experiments"]["items"]["enum"] = names
    return schema


def _merged_schema_file(schema_path: str | os.PathLike, experiments: Mapping[str, Any]) -> str:
    """Write the merged schema once per process (and experiment list); ``snakemake.utils.validate``
    takes a path."""
    key = (str(Path(schema_path).resolve()), tuple(experiments))
    if key not in _MERGED_SCHEMA_FILES:
        import tempfile

        fd, path = tempfile.mkstemp(prefix="context-research-schema-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(merged_schema(schema_path, experiments=experiments), handle, sort_keys=False)
        _MERGED_SCHEMA_FILES[key] = path
        import atexit

        atexit.register(lambda p=path: os.path.exists(p) and os.unlink(p))
    return _MERGED_SCHEMA_FILES[key]


_MERGED_SCHEMA_FILES: dict[tuple[str, tuple[str, ...]], str] = {}


def record_origins(origins: dict[str, str], data: dict, origin: str, prefix: str = "") -> dict[str, str]:
    """Note in ``origins`` ({dotted key: file}) that ``origin`` sets every key of ``data``, the way
    ``deep_update`` merges it: a mapping merges key by key, anything else replaces the whole
    subtree (and forgets where the replaced keys came from)."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if not isinstance(value, dict):
            for known in [k for k in origins if k.startswith(path + ".")]:
                del origins[known]
        origins[path] = origin
        if isinstance(value, dict):
            record_origins(origins, value, origin, path + ".")
    return origins


def origin_of(key: str, origins: dict[str, str] | None) -> str | None:
    """The file that set ``key`` (or the closest enclosing key that a file set)."""
    if not origins:
        return None
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        hit = origins.get(".".join(parts[:n]))
        if hit is not None:
            return hit
    return None


def _where(source: str, key: str | None, origins: dict[str, str] | None) -> str:
    """The file named in an error about ``key``: the one that set it, else every file read."""
    return (origin_of(key, origins) if key else None) or source


def validate_config(config: dict, schema_path: str | os.PathLike | None = None,
                    source: str = "config/config.yaml", origins: dict[str, str] | None = None, *,
                    experiments: Mapping[str, Any]) -> dict:
    """Validate ``config`` in place (defaults filled) and return it; raise ConfigError naming the key
    and the file it came from (``origins``: {dotted key: file}, see ``record_origins``; else
    ``source``). ``experiments`` ({name: declaration}, ``experiments.catalog.EXPERIMENTS``): the
    blocks the schema allows, and each declaration's ``config_problems`` for its block."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(config).__name__}")
    given = [k for k, v in (config.get("experiments") or {}).items() if v] \
        if isinstance(config.get("experiments"), dict) else []
    try:
        validate(config, _merged_schema_file(schema_path or default_schema(), experiments))
    except WorkflowError as exc:
        cause = next((a for a in exc.args if isinstance(a, jsonschema.ValidationError)), None)
        cause = cause or exc.__cause__ or exc.__context__
        if isinstance(cause, jsonschema.ValidationError):
            where = _where(source, _key_path(cause), origins)
            raise ConfigError(f"Invalid configuration ({where}): {_describe(cause)}") from None
        raise ConfigError(f"Invalid configuration ({source}): {exc}") from None
    profile = config["model_profile"]
    if profile not in config["models"]:
        raise ConfigError(
            f"Invalid configuration ({_where(source, 'model_profile', origins)}): config key 'model_profile': "
            f"{profile!r} is not one of the entries of 'models' ({', '.join(sorted(config['models']))})")
    if config["serving"]["backend"] == "simulated" and os.environ.get(SIMULATED_OPT_IN_ENV) != "1":
        raise ConfigError(
            f"Invalid configuration ({_where(source, 'serving.backend', origins)}): config key 'serving.backend' "
            f"is 'simulated', which needs the explicit opt-in {SIMULATED_OPT_IN_ENV}=1 in the environment as "
            "well. Use backend: vllm for real measurements.")
    exposed = exposure_error(config["serving"]) or missing_api_key_error(config["serving"])
    if exposed is not None:
        raise ConfigError(f"Invalid configuration ({_where(source, 'serving.host', origins)}): {exposed}")
    if "VLLM_API_KEY" in (config["serving"].get("env") or {}):
        raise ConfigError(
            f"Invalid configuration ({_where(source, 'serving.env.VLLM_API_KEY', origins)}): config key "
            f"'serving.env.VLLM_API_KEY': a key does not belong in the config (it would be hashed and stored); "
            f"set serving.allow_remote: true and the environment variable {API_KEY_ENV} instead")
    for exp in experiments.values():  # what a block names that cannot be used (E4's data files)
        block = (config.get("experiments") or {}).get(exp.name)
        for key, problem in (exp.config_problems(block) if block and exp.config_problems else ()):
            raise ConfigError(f"Invalid configuration ({_where(source, key, origins)}): {problem}")
    from .input_checks import input_problems  # what no run could serve: refused before any engine starts

    for key, problem in input_problems(config, given):
        raise ConfigError(f"Invalid configuration ({_where(source, key, origins)}): {problem}")
    return config


def load_config(path: str | os.PathLike, overlays: list[str | os.PathLike] = (),
                schema_path: str | os.PathLike | None = None, *, experiments: Mapping[str, Any]) -> dict:
    """Read a YAML config (plus overlays merged on top, like ``--configfile``) and validate it
    against the declared ``experiments`` (see ``validate_config``)."""
    config: dict = {}
    origins: dict[str, str] = {}
    for p in [path, *overlays]:
        data = _read_config_file(p)
        deep_update(config, data)
        record_origins(origins, data, str(p))
    return validate_config(config, schema_path, source=", ".join(map(str, [path, *overlays])), origins=origins,
                           experiments=experiments)


def _read_config_file(p: str | os.PathLike) -> dict:
    try:
        data = yaml.safe_load(Path(p).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: the configuration must be a mapping, got {type(data).__name__}")
    return data


def _shown_path(path: str | os.PathLike) -> str:
    """A config file as a user would name it: relative to the working directory when inside it
    (Snakemake makes --configfile paths absolute), else normalised."""
    p = os.path.normpath(str(path))
    if os.path.isabs(p):
        rel = os.path.relpath(p, os.getcwd())
        if not rel.startswith(".."):
            return rel
    return p


def snakemake_config_origins(workflow) -> tuple[str, dict[str, str]]:
    """For ``common.smk``: which file set each key of Snakemake's merged ``config``, and the list
    of files for keys none of them set. Snakemake applies the Snakefile's ``configfile:`` first,
    then every ``--configfile`` in order, then ``--config KEY=VALUE``; the last one to set a key
    is where its value came from."""
    settings = getattr(workflow, "config_settings", None)
    cli_files = [_shown_path(f) for f in (getattr(workflow, "overwrite_configfiles", None) or [])]
    loaded = [_shown_path(f) for f in (getattr(workflow, "configfiles", None) or [])]
    # workflow.configfiles = the --configfile list, then each file a configfile: directive loaded
    directive = loaded[len(cli_files):] if loaded[:len(cli_files)] == cli_files \
        else [f for f in loaded if f not in cli_files]
    if getattr(settings, "replace_workflow_config", False):
        directive = []
    files = [*directive, *cli_files]
    origins: dict[str, str] = {}
    for f in files:
        try:
            record_origins(origins, _read_config_file(f), f)
        except ConfigError:
            continue  # Snakemake read it already; a file we cannot re-read attributes nothing
    command_line = getattr(settings, "config", None)
    if isinstance(command_line, dict) and command_line:
        record_origins(origins, command_line, "--config on the command line")
    source = ", ".join(files) if files else "config/config.yaml or an overlay given with --configfile"
    return source, origins


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


def run_config(config: dict, experiment: Any) -> dict:
    """``experiments.<name>`` of ``experiment`` (its declaration) without its analysis keys, which
    only its analysis step reads: what the engine run depends on."""
    return {k: v for k, v in experiment_config(config, experiment.name).items() if k not in experiment.analysis_keys}


def analysis_config(config: dict, experiment: Any) -> dict:
    """The analysis keys of ``experiments.<name>`` (what rule eN_analysis passes)."""
    block = experiment_config(config, experiment.name)
    return {k: block[k] for k in experiment.analysis_keys if k in block}


def experiment_view(config: dict, experiment: Any) -> dict:
    """The part of the config one experiment's run (``experiment``: its declaration) depends on,
    itself a valid config.

    Rules pass this (not the whole config) to the engine, so that a change elsewhere in the
    config (another experiment's block, an analysis key of this one) does not alter the rule's
    params and does not rerun it. Validating the view fills the schema's defaults for the analysis
    keys again; the runner drops them before the body sees the config.
    """
    name = config["model_profile"]
    view = {
        "model_profile": name,
        "models": {name: config["models"][name]},
        "serving": config["serving"],
        "experiments": {experiment.name: run_config(config, experiment)},
    }
    if config["models"][name]["source"] == "embedded":
        view["embedded_model"] = config.get("embedded_model", {})
    return view


def hash_inputs(config: dict, experiment: Any, dataset_manifest_sha256: str | None = None) -> dict:
    """Everything an experiment's run (``experiment``: its declaration) depends on, as a canonical
    mapping: its run keys, model profile, serving settings (but those that change no number,
    ``provenance.UNHASHED_SERVING_KEYS``) and dataset manifest, plus what the config does not say
    (``provenance.machine_facts``: engine and torch versions, its declared code, model files,
    engine environment, GPU model)."""
    from .models import dummy_model_dir
    from .provenance import hashed_serving, machine_facts

    model = model_profile(config)
    inputs = {
        "experiment": experiment.name,
        "experiment_config": run_config(config, experiment),
        "model": model,
        "serving": hashed_serving(config["serving"]),
        "dataset_manifest_sha256": dataset_manifest_sha256,
    }
    if model["source"] == "embedded":
        inputs["embedded_model"] = config.get("embedded_model", {})
    inputs.update(machine_facts(experiment, model, config["serving"],
                                built_by_workflow=dummy_model_dir(model) is not None))
    return inputs


def experiment_hash(config: dict, experiment: Any, dataset_manifest_sha256: str | None = None) -> str:
    """sha256 of ``hash_inputs``: run keys, model, serving, dataset manifest and machine facts."""
    return sha256_obj(hash_inputs(config, experiment, dataset_manifest_sha256))
