# Two rules per declared experiment (context_research.experiments.catalog): `eN` starts its
# engines and serves every sweep point; `eN_figures` draws its figures and tables. File names
# and captions come from the declaration, so each path is named once.


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

    rule:
        name:
            f"{_exp.name}_figures"
        input:
            getattr(rules, _exp.name).output,
            figure_join_inputs(_exp),
        output:
            **figure_outputs(_exp),
        params:
            experiment=_exp.name,
            results=str(_exp.results_dir()),
        log:
            f"logs/{_exp.name}_figures.log",
        localrule: True
        shell:
            "context-research plots {params.experiment} --results {params.results} > {log} 2>&1"
