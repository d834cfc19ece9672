# Rules per declared experiment (context_research.experiments.catalog): `eN` starts its engines,
# serves every sweep point and writes the measured records (its params: the run keys and the
# config_hash over every hash input, machine facts included); `eN_analysis`, for an experiment with
# analysis keys and an analysis step, recomputes the tables those keys change from the saved
# records; `eN_figures` draws its figures and tables. File names and captions come from the
# declaration, so each path is named once.
#
# Each rule exists once per rule set (common.smk's RuleSet): the baseline's (eN..., writing
# results/eN/) and, when `variants:` are configured, the variants' (variant_eN..., writing
# results/variants/{variant}/eN/). Same commands; params are functions of the wildcards, so a
# variant's job carries that variant's merged config and hash, and no other variant's.

# Snakemake evaluates a `shell:` expression again when the job runs, after this loop has ended:
# it must be a constant, never built from _exp or _set. The command names its experiment through
# params.experiment: the rule's name ({rule}) is eN or variant_eN.
#
# One rule statement serves both rule sets: `use rule eN as variant_eN with:` cannot be written
# here, because Snakemake looks the inherited rule up by the literal name after `use rule`, and
# these names come from the catalog.
ENGINE_RUN = ("context-research run {params.experiment} --outdir {params.outdir} --config-json {params.config:q} "
              "> {log} 2>&1 || {{ tail -n 30 {log} >&2; exit 1; }}")

for _exp in EXPERIMENTS.values():
    for _set in RULE_SETS:

        # No `message:` here: Snakemake would print it instead of the rule's resources (SLURM dry runs).
        # On failure the log's end (the reason, the engine log's tail, where the measured rows and
        # engine logs were kept) goes to the console: Snakemake deletes the outputs.
        rule:
            name:
                _set.rule(_exp.name)
            input:
                model_inputs,
                data_inputs(_exp),
            output:
                **_exp.run_paths(_set.root),
            params:
                config=_set.param(experiment_config_json, _exp.name),
                config_hash=_set.param(config_hash, _exp.name),
                outdir=str(_exp.results_dir(_set.root)),
                experiment=_exp.name,
            log:
                _set.log(_exp.name),
            resources:
                engine=1,
            conda:
                ENGINE_ENV
            shell:
                ENGINE_RUN

        if _exp.analyse:

            rule:
                name:
                    _set.rule(f"{_exp.name}_analysis")
                input:
                    getattr(rules, _set.rule(_exp.name)).output,
                output:
                    **_exp.analysis_paths(_set.root),
                params:
                    # the analysis keys only: changing one reruns this rule, not the engine run
                    analysis=_set.param(analysis_config_json, _exp.name),
                    experiment=_exp.name,
                    results=str(_exp.results_dir(_set.root)),
                log:
                    _set.log(f"{_exp.name}_analysis"),
                localrule: True
                shell:
                    "context-research analyse {params.experiment} --results {params.results} --analysis-json {params.analysis:q} "
                    "> {log} 2>&1 || {{ tail -n 5 {log} >&2; exit 1; }}"

        rule:
            name:
                _set.rule(f"{_exp.name}_figures")
            input:
                getattr(rules, _set.rule(_exp.name)).output,
                analysis_outputs(_exp, _set.root),
                figure_join_inputs(_exp, _set),
            output:
                **figure_outputs(_exp, _set),
            params:
                experiment=_exp.name,
                results=str(_exp.results_dir(_set.root)),
                code=report_code(_exp.name),
            log:
                _set.log(f"{_exp.name}_figures"),
            localrule: True
            shell:
                "context-research plots {params.experiment} --results {params.results} > {log} 2>&1"
