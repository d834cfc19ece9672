# Helpers shared by the rules. Logic lives in the context_research package.
import json
import sys

from context_research.config import (analysis_config, experiment_hash, experiment_view, model_profile,
                                     snakemake_config_origins, validate_config)
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS
from context_research.models import dummy_model_dir
from context_research.provenance import code_digest

try:
    # Snakemake has merged config/config.yaml, every --configfile and --config already: an error
    # names the file that set the bad key last (the schema's defaults belong to no file).
    _CONFIG_SOURCE, _CONFIG_ORIGINS = snakemake_config_origins(workflow)
    validate_config(config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"),
                    source=_CONFIG_SOURCE, origins=_CONFIG_ORIGINS)
except ConfigError as exc:
    sys.exit(f"context-research: {exc}")

MODEL = model_profile(config)
EMBEDDED_MANIFEST = "resources/models/embedded-qwen3/manifest.json"
REPORT_EXPERIMENTS = config["report"]["experiments"]


DUMMY_DIR = dummy_model_dir(MODEL)

# For --sdm conda: the engine build that matches this host (paths relative to rules/).
from context_research.backends.vllm_server import cuda_visible

ENGINE_ENV = "../../envs/vllm-gpu.yaml" if cuda_visible() else "../../envs/vllm-cpu.yaml"


def model_inputs(wildcards=None):
    """The model folder the workflow builds itself, if any: the embedded model, or a shape-only
    folder for dummy weights; nothing for a model that is already on disk or in the HF cache."""
    if MODEL["source"] == "embedded":
        return [EMBEDDED_MANIFEST]
    if DUMMY_DIR is not None:
        return [f"{DUMMY_DIR}/manifest.json"]
    return []


def config_hash(experiment):
    """The run's hash: its run keys, model, serving settings and the machine facts (engine and
    torch versions, package code, model files, engine environment, GPU model), computed here while
    the DAG is built. A param, so any change of them reruns the engine rule."""
    return experiment_hash(config, experiment)


def report_code(experiment):
    """sha256 of the package code the figures and report rules of ``experiment`` run (its
    ``eN_report.py`` included): a param, so a fixed figure is redrawn without a new run."""
    return code_digest(experiment, reports=True)


def analysis_config_json(experiment):
    """What an analysis rule passes to `context-research analyse`: the experiment's analysis keys."""
    return json.dumps(analysis_config(config, experiment), sort_keys=True)


def analysis_outputs(experiment):
    """The analysis rule's outputs (none for an experiment whose run writes every table)."""
    return list(experiment.analysis_paths().values())


def experiment_config_json(experiment):
    """What an engine rule passes to `context-research run`: only the config its hash covers,
    so changing another experiment's block leaves this rule's params (and outputs) alone."""
    return json.dumps(experiment_view(config, experiment), sort_keys=True)


def data_inputs(experiment):
    """Files an experiment's run reads besides the model (E4: its materialized datasets)."""
    return experiment.data_inputs(config) if experiment.data_inputs else []


def figure_outputs(experiment):
    """The figures rule's outputs, each shown in Snakemake's report with its caption file."""
    paths = experiment.figure_paths()
    return {fig.key: report(paths[fig.key], caption=f"../report/{fig.caption}", category=experiment.category)
            for fig in experiment.figures}


def figure_join_inputs(experiment):
    """Results of the experiments an experiment's figures join (E4: E1 and E5), when reported."""
    return [path for name in experiment.figure_joins if name in REPORT_EXPERIMENTS
            for path in EXPERIMENTS[name].run_paths().values()]


def report_inputs(wildcards):
    """What an experiment's markdown section shows: its run metadata, analysis tables and figures."""
    return [getattr(rules, wildcards.experiment).output.metadata,
            *analysis_outputs(EXPERIMENTS[wildcards.experiment]),
            *getattr(rules, f"{wildcards.experiment}_figures").output]
