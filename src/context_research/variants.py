"""Named variants: overlays on the engine settings, run side by side and compared with the baseline.

A variant (``variants.<name>`` in the config) may change only what a comparison is about: how the
engine serves (``serving``, but not its backend), the model profile, and E3's KV connector (the
UCX environment of its NIXL engines, or its list of ways, ``kv_paths``). The
workload (every other ``experiments`` key) stays the baseline's, so the two runs' numbers answer
the same question. ``baseline`` is the config itself; its outputs stay under ``results/`` and
``reports/``, and every other variant's under ``results/variants/<name>/`` with its own hashes
(computed from its merged config by the usual ``experiment_hash``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

from .config import deep_update, validate_config
from .errors import ConfigError

BASELINE = "baseline"
VARIANTS_ROOT = "results/variants"
COMPARE_ROOT = "reports/compare"
COMPARE_INDEX = "reports/compare.html"
COMPARE_FILES = {"csv": "compare.csv", "markdown": "compare.md", "html": "compare.html"}

# What a variant may set, as dotted keys; "serving.*" is any key of serving but those in
# FIXED_SERVING_KEYS. experiments.e3.* is E3's connector and the settings it passes to it.
VARIABLE_KEYS = ("model_profile", "serving.*", "experiments.e3.connector", "experiments.e3.kv_connector_extra_config",
                 "experiments.e3.ucx_env", "experiments.e3.kv_paths")
# Free-form mappings a variant sets as a whole (their keys are not config keys).
FREE_FORM_KEYS = ("experiments.e3.kv_connector_extra_config", "experiments.e3.ucx_env")
# A variant on another backend would pit simulated rows against real ones, which compare refuses.
FIXED_SERVING_KEYS = ("backend",)


class VariantError(ConfigError):
    """A variant that cannot be run: a key it may not vary, or a merged config that is invalid."""


def variant_names(config: dict) -> list[str]:
    """Every configured variant, ``baseline`` first (it is always there, configured or not)."""
    return [BASELINE, *(name for name in (config.get("variants") or {}) if name != BASELINE)]


def other_variants(config: dict) -> list[str]:
    """The variants compared with the baseline: every one but ``baseline``."""
    return variant_names(config)[1:]


# Run k > 1 of a side (``compare.runs_per_side``) is ``<name>~r<k>``: "~" is not allowed in a
# variant's name, so these never collide with a configured one.
REPLICATE_MARK = "~r"


def runs_per_side(config: dict) -> int:
    return int((config.get("compare") or {}).get("runs_per_side") or 1)


def side_runs(config: dict, name: str) -> list[str]:
    """The runs of one side of a comparison: ``name`` itself, then its replicates ``name~r2`` ...
    (same settings, same hashes, each its own engine start and folder)."""
    return [name] + [f"{name}{REPLICATE_MARK}{k}" for k in range(2, runs_per_side(config) + 1)]


def base_variant(run: str) -> str:
    """The variant a run belongs to (``fp8~r2`` -> ``fp8``)."""
    return run.split(REPLICATE_MARK, 1)[0]


def variant_runs(config: dict) -> list[str]:
    """Every run under results/variants/: each variant's runs and the baseline's replicates (the
    names the ``{variant}`` wildcard matches)."""
    if not other_variants(config):
        return []
    return [run for name in variant_names(config) for run in side_runs(config, name) if run != BASELINE]


def variant_rule(rule: str) -> str:
    """The name of the variants' copy of a rule (``e1`` -> ``variant_e1``): the rule that writes
    ``results/variants/{variant}/e1``. The SLURM profile gives ``variant_eN`` an engine's resources."""
    return f"variant_{rule}"


def results_root(name: str) -> str:
    """Where a variant's results live: ``results`` for the baseline (as before variants existed),
    else ``results/variants/<name>``. ``results_root("{variant}")`` is the rules' output pattern."""
    return "results" if name == BASELINE else f"{VARIANTS_ROOT}/{name}"


def compare_dir(name: str) -> str:
    """Where ``context-research compare`` writes the comparison of ``name`` with the baseline."""
    return f"{COMPARE_ROOT}/{name}"


def compare_paths(name: str) -> dict[str, str]:
    return {key: f"{compare_dir(name)}/{file}" for key, file in COMPARE_FILES.items()}


def overlay(config: dict, name: str) -> dict:
    """The overlay of variant ``name`` ({} for the baseline or an empty entry)."""
    variants = config.get("variants") or {}
    if name == BASELINE:
        if variants.get(BASELINE):
            raise VariantError(f"variant {BASELINE!r} is the config itself: change the config, or give the "
                               "overlay another name")
        return {}
    if name not in variants:
        known = ", ".join(variant_names(config))
        raise VariantError(f"unknown variant {name!r}; configured variants: {known}")
    return variants[name] or {}


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """Every leaf key of ``data`` as a dotted path; a mapping value is descended into, an empty
    mapping counts as a leaf."""
    out: list[str] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        # kv_connector_extra_config and ucx_env are free-form: a variant sets them as a whole
        if isinstance(value, dict) and value and path not in FREE_FORM_KEYS:
            out += _dotted_keys(value, path + ".")
        else:
            out.append(path)
    return out


def _may_vary(key: str) -> bool:
    if key.startswith("serving."):
        return key.split(".")[1] not in FIXED_SERVING_KEYS
    return key in VARIABLE_KEYS


def check_variable_keys(name: str, data: dict) -> None:
    """Raise VariantError naming the variant and the first key it may not set."""
    if not isinstance(data, dict):
        raise VariantError(f"variant {name!r}: its entry must be a mapping of config keys, got {type(data).__name__}")
    for key in _dotted_keys(data):
        if not _may_vary(key):
            fixed = ", ".join(f"serving.{k}" for k in FIXED_SERVING_KEYS)
            raise VariantError(
                f"variant {name!r}: config key '{key}' cannot differ between variants (a comparison keeps "
                f"the baseline's workload and backend); a variant may set {', '.join(VARIABLE_KEYS)} "
                f"(serving.* but {fixed})")


def variant_config(config: dict, name: str, schema_path: str | os.PathLike | Path | None = None, *,
                   experiments: Mapping[str, Any]) -> dict:
    """The config variant ``name`` runs: the base config (without ``variants``) with the variant's
    overlay merged on, validated like the main config (defaults filled; ``experiments``: the
    declarations, as ``config.validate_config`` takes them). Raises VariantError naming the variant
    and the key."""
    data = overlay(config, name)
    check_variable_keys(name, data)
    merged = copy.deepcopy({k: v for k, v in config.items() if k != "variants"})
    deep_update(merged, data)
    if not data:
        return merged
    try:
        validate_config(merged, schema_path, source=f"config with variants.{name} merged on", experiments=experiments)
    except ConfigError as exc:
        raise VariantError(f"variant {name!r}: {exc}") from None
    merged.pop("variants", None)  # the schema's default, filled again: a variant has no variants
    return merged


def variant_configs(config: dict, schema_path: str | os.PathLike | Path | None = None, *,
                    experiments: Mapping[str, Any]) -> dict[str, dict]:
    """{run: merged config} for every variant and its replicates, baseline first; the first bad
    variant raises. A replicate shares its variant's config (and so its hashes)."""
    configs = {name: variant_config(config, name, schema_path, experiments=experiments)
               for name in variant_names(config)}
    return {run: configs[name] for name in configs for run in side_runs(config, name)}
