# Helpers shared by the rules. Logic lives in the context_research package.
import functools
import json
import re
import sys
from dataclasses import dataclass

from context_research.config import (analysis_config, experiment_hash, experiment_view, model_profile,
                                     snakemake_config_origins, validate_config)
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS
from context_research.models import dummy_model_dir
from context_research.provenance import build_digest, code_digest, comparison_files, data_digest, files_digest
from context_research.variants import (BASELINE, other_variants, results_root, side_runs, variant_configs,
                                       variant_rule, variant_runs)

# A closed terminal stops Snakemake as Ctrl-C does, so it releases its lock and the plain command
# reruns (profiles/default/config.yaml: rerun-incomplete); a failed job's output Snakemake cannot
# delete (a read-only results folder) is one line, not a traceback. See context_research.watchdog.
from context_research.watchdog import hangup_stops_like_ctrl_c, unremovable_outputs_say_so

hangup_stops_like_ctrl_c()
unremovable_outputs_say_so()

try:
    # Snakemake has merged config/config.yaml, every --configfile and --config already: an error
    # names the file that set the bad key last (the schema's defaults belong to no file).
    _CONFIG_SOURCE, _CONFIG_ORIGINS = snakemake_config_origins(workflow)
    _SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
    validate_config(config, _SCHEMA, source=_CONFIG_SOURCE, origins=_CONFIG_ORIGINS, experiments=EXPERIMENTS)
    # {name: merged config} of every variant, baseline first, each validated like the main config
    VARIANT_CONFIGS = variant_configs(config, _SCHEMA, experiments=EXPERIMENTS)
except ConfigError as exc:
    sys.exit(f"context-research: {exc}")

MODEL = model_profile(config)
EMBEDDED_MANIFEST = "resources/models/embedded-qwen3/manifest.json"
REPORT_EXPERIMENTS = config["report"]["experiments"]
# The variants compared with the baseline, and the experiments each of them runs for `compare`.
VARIANTS = other_variants(config)
# Every run under results/variants/: the variants and, with compare.runs_per_side > 1, each side's
# replicates (baseline~r2, fp8~r2, ...).
VARIANT_RUNS = variant_runs(config)
COMPARE_EXPERIMENTS = config["compare"]["experiments"]

if VARIANTS:

    # Only configured names: results/variants/<anything else>/... is no rule's output.
    wildcard_constraints:
        variant="|".join(re.escape(v) for v in VARIANT_RUNS),


# For --sdm conda: the engine build that matches this host (paths relative to rules/).
from context_research.backends.vllm_server import cuda_visible

ENGINE_ENV = "../../envs/vllm-gpu.yaml" if cuda_visible() else "../../envs/vllm-cpu.yaml"


def model_inputs(wildcards=None):
    """The model folder the workflow builds itself, if any: the embedded model, or a shape-only
    folder for dummy weights; nothing for a model that is already on disk or in the HF cache.
    A variant's job gets its own profile's (a variant may set model_profile)."""
    model = model_profile(VARIANT_CONFIGS[getattr(wildcards, "variant", BASELINE)])
    if model["source"] == "embedded":
        return [EMBEDDED_MANIFEST]
    dummy_dir = dummy_model_dir(model)
    return [f"{dummy_dir}/manifest.json"] if dummy_dir is not None else []


@dataclass(frozen=True)
class RuleSet:
    """One set of an experiment's rules: the baseline's (rules eN, eN_analysis, eN_figures writing
    results/eN/..., as before variants existed) or the variants' (variant_eN, ... writing
    results/variants/{variant}/eN/..., one job per configured variant through the wildcard)."""

    variant: str  # BASELINE, or the "{variant}" wildcard pattern

    @property
    def is_baseline(self):
        return self.variant == BASELINE

    @property
    def root(self):
        return results_root(self.variant)

    def rule(self, name):
        return name if self.is_baseline else variant_rule(name)

    def log(self, name):
        return f"logs/{name}.log" if self.is_baseline else f"logs/variants/{{variant}}/{name}.log"

    def param(self, helper, experiment):
        """``helper(experiment, variant)`` for this set's jobs: a function of the wildcards, so each
        variant's job gets its own config (and its own hash)."""
        return lambda wildcards: helper(experiment, getattr(wildcards, "variant", BASELINE))


RULE_SETS = [RuleSet(BASELINE)] + ([RuleSet("{variant}")] if VARIANTS else [])


class Untracked:
    """A param Snakemake hands to the command but does not record: its params trigger compares
    only values of built-in types, so a change of this one alone reruns nothing. The engine rules
    pass their config this way; every part of it that can change a number is in config_hash,
    which Snakemake does record (provenance.UNHASHED_SERVING_KEYS says what is left out, and why)."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


@functools.cache
def config_hash(experiment, variant=BASELINE):
    """The run's hash: its run keys, model, serving settings and the machine facts (engine and
    torch versions, the experiment's declared code and the shared run code, model files, engine
    environment, GPU model), computed here while the DAG is built, from the variant's merged
    config. A param, so any change of them reruns the engine rule."""
    return experiment_hash(VARIANT_CONFIGS[variant], EXPERIMENTS[experiment])


def report_code(experiment):
    """sha256 of the code the figures and report rules of ``experiment`` run (its run code, its
    declared report code, the shared report code and the code of the experiments its figures
    join): a param, so a fixed figure is redrawn without a new run, and a figure-only edit reruns
    no engine."""
    declared = EXPERIMENTS[experiment]
    return code_digest(declared, reports=True, joined=[EXPERIMENTS[n] for n in declared.figure_joins])


def analysis_config_json(experiment, variant=BASELINE):
    """What an analysis rule passes to `context-research analyse`: the experiment's analysis keys."""
    return json.dumps(analysis_config(VARIANT_CONFIGS[variant], EXPERIMENTS[experiment]), sort_keys=True)


def analysis_outputs(experiment, root="results"):
    """The analysis rule's outputs (none for an experiment whose run writes every table)."""
    return list(experiment.analysis_paths(root).values())


def experiment_config_json(experiment, variant=BASELINE):
    """What an engine rule passes to `context-research run`: only the config its run reads, so
    changing another experiment's block (or another variant) leaves this rule alone. Untracked:
    config_hash covers all of it but the serving keys that change no number."""
    return Untracked(json.dumps(experiment_view(VARIANT_CONFIGS[variant], EXPERIMENTS[experiment]), sort_keys=True))


def data_inputs(experiment):
    """Files an experiment's run reads besides the model (E4: its materialized datasets). A variant
    cannot change the experiments' blocks, so these are the baseline's."""
    return experiment.data_inputs(config) if experiment.data_inputs else []


def figure_outputs(experiment, rule_set=RuleSet(BASELINE)):
    """The figures rule's outputs, each shown in Snakemake's report with its caption file (a
    variant's under a subcategory named after it, so it is not mistaken for the baseline's)."""
    paths = experiment.figure_paths(rule_set.root)
    subcategory = None if rule_set.is_baseline else rule_set.variant
    return {fig.key: report(paths[fig.key], caption=f"../report/{fig.caption}", category=experiment.category,
                            subcategory=subcategory)
            for fig in experiment.figures}


def figure_join_inputs(experiment, rule_set=RuleSet(BASELINE)):
    """Results of the experiments an experiment's figures join (E4: E1 and E5), when the baseline
    reports them or the variants run them for `compare`; from the same variant's results."""
    joined = REPORT_EXPERIMENTS if rule_set.is_baseline else COMPARE_EXPERIMENTS
    return [path for name in experiment.figure_joins if name in joined
            for path in EXPERIMENTS[name].run_paths(rule_set.root).values()]


def report_inputs(wildcards):
    """What an experiment's markdown section shows: its run metadata, analysis tables and figures."""
    return [getattr(rules, wildcards.experiment).output.metadata,
            *analysis_outputs(EXPERIMENTS[wildcards.experiment]),
            *getattr(rules, f"{wildcards.experiment}_figures").output]
