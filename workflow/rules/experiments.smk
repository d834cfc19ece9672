# Rules per declared experiment (context_research.experiments.catalog): `eN` starts its engines,
# serves every sweep point and writes the measured records (its params: the run keys and the
# config_hash over every hash input, machine facts included); `eN_analysis`, for an experiment with
# analysis keys and an analysis step, recomputes the tables those keys change from the saved
# records; `eN_figures` draws its figures and tables. File names and captions come from the
# declaration, so each path is named once.


for _exp in EXPERIMENTS.values():

    # No `message:` here: Snakemake would print it instead of the rule's resources (SLURM dry runs).
    rule:
        name:
            _exp.name
        input:
            model_inputs,
            data_inputs(_exp),
        output:
            **_exp.run_paths(),
        params:
            config=experiment_config_json(_exp.name),
            config_hash=config_hash(_exp.name),
            outdir=str(_exp.results_dir()),
        log:
            f"logs/{_exp.name}.log",
        resources:
            engine=1,
        conda:
            ENGINE_ENV
        shell:
            # On failure the log's end (the reason, the engine log's tail, where the measured rows
            # and engine logs were kept) goes to the console: Snakemake deletes the outputs.
            "context-research run {rule} --outdir {params.outdir} --config-json {params.config:q} > {log} 2>&1 "
            "|| {{ tail -n 30 {log} >&2; exit 1; }}"

    if _exp.analyse:

        rule:
            name:
                f"{_exp.name}_analysis"
            input:
                getattr(rules, _exp.name).output,
            output:
                **_exp.analysis_paths(),
            params:
                # the analysis keys only: changing one reruns this rule, not the engine run
                analysis=analysis_config_json(_exp.name),
                experiment=_exp.name,
                results=str(_exp.results_dir()),
            log:
                f"logs/{_exp.name}_analysis.log",
            localrule: True
            shell:
                "context-research analyse {params.experiment} --results {params.results} --analysis-json {params.analysis:q} "
                "> {log} 2>&1 || {{ tail -n 5 {log} >&2; exit 1; }}"

    rule:
        name:
            f"{_exp.name}_figures"
        input:
            getattr(rules, _exp.name).output,
            analysis_outputs(_exp),
            figure_join_inputs(_exp),
        output:
            **figure_outputs(_exp),
        params:
            experiment=_exp.name,
            results=str(_exp.results_dir()),
            code=report_code(_exp.name),
        log:
            f"logs/{_exp.name}_figures.log",
        localrule: True
        shell:
            "context-research plots {params.experiment} --results {params.results} > {log} 2>&1"
