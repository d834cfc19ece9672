# E0: one engine start; determinism and run-to-run variability.
FIGURES["e0"] = ["results/e0/variability.svg", "results/e0/repeats.html"]

localrules:
    e0_figures,


rule e0:
    """Smoke and reproducibility on the real engine."""
    input:
        model_inputs,
    output:
        summary="results/e0/summary.json",
        requests="results/e0/requests.csv",
        metadata="results/e0/run_metadata.json",
        gpu_stats="results/e0/gpu_stats.json",
        engine_log="results/e0/engine.log",
    params:
        config=experiment_config_json("e0"),
        config_hash=config_hash("e0"),
    log:
        "logs/e0.log",
    resources:
        engine=1,
    conda:
        ENGINE_ENV
    shell:
        "context-research run e0 --outdir results/e0 --config-json {params.config:q} > {log} 2>&1"


rule e0_figures:
    input:
        summary="results/e0/summary.json",
        metadata="results/e0/run_metadata.json",
    output:
        variability=report(
            "results/e0/variability.svg",
            caption="../report/e0_variability.rst",
            category="E0 smoke and reproducibility",
        ),
        repeats=report(
            "results/e0/repeats.html",
            caption="../report/e0_repeats.rst",
            category="E0 smoke and reproducibility",
        ),
    log:
        "logs/e0_figures.log",
    shell:
        "context-research plots e0 --results results/e0 > {log} 2>&1"
