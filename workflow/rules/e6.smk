# E6: YaRN long-context stress; one engine start (a second one only for a KV-dtype fallback).
FIGURES["e6"] = ["results/e6/stress.svg", "results/e6/stress.html"]

localrules:
    e6_figures,


rule e6:
    """Serve a derived YaRN model folder past the native context; one request per target length."""
    input:
        model_inputs,
    output:
        stress="results/e6/stress.csv",
        summary="results/e6/summary.json",
        metadata="results/e6/run_metadata.json",
        gpu_stats="results/e6/gpu_stats.json",
        engine_log="results/e6/engine.log",
        model_config="results/e6/model/config.json",
    params:
        config=experiment_config_json("e6"),
        config_hash=config_hash("e6"),
    log:
        "logs/e6.log",
    resources:
        engine=1,
    conda:
        ENGINE_ENV
    shell:
        "context-research run e6 --outdir results/e6 --config-json {params.config:q} > {log} 2>&1"


rule e6_figures:
    input:
        stress="results/e6/stress.csv",
        summary="results/e6/summary.json",
        metadata="results/e6/run_metadata.json",
    output:
        stress=report(
            "results/e6/stress.svg",
            caption="../report/e6_stress.rst",
            category="E6 YaRN long-context stress",
        ),
        table=report(
            "results/e6/stress.html",
            caption="../report/e6_stress_table.rst",
            category="E6 YaRN long-context stress",
        ),
    log:
        "logs/e6_figures.log",
    shell:
        "context-research plots e6 --results results/e6 > {log} 2>&1"
