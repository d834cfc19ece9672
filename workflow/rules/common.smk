# Helpers shared by the rules. Logic lives in the context_research package.
import json
import sys

from context_research.config import experiment_hash, model_profile, validate_config
from context_research.errors import ConfigError

try:
    validate_config(config)
except ConfigError as exc:
    sys.exit(f"context-research: {exc}")

MODEL = model_profile(config)
EMBEDDED_MANIFEST = "resources/models/embedded-qwen3/manifest.json"
CONFIG_JSON = json.dumps(config, sort_keys=True)
REPORT_EXPERIMENTS = config["report"]["experiments"]
# Experiment -> the figure/table files its packet section shows; each rules/eN.smk fills its entry.
FIGURES = {}


def model_inputs(wildcards=None):
    """The embedded model's manifest when the profile serves it; nothing for external models."""
    return [EMBEDDED_MANIFEST] if MODEL["source"] == "embedded" else []


def config_hash(experiment):
    return experiment_hash(config, experiment)


def experiment_rule_params(experiment):
    """The params every engine rule carries: the config (JSON) and the experiment's config hash."""
    return {"config": CONFIG_JSON, "config_hash": config_hash(experiment)}
