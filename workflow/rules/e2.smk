# E2: concurrency / arrival-rate sweep with SLO goodput; one engine start serves every point.
FIGURES["e2"] = [
    "results/e2/throughput.svg",
    "results/e2/latency.svg",
    "results/e2/goodput.svg",
    "results/e2/concurrency.html",
]


localrules:
    e2_figures,


rule e2:
    """Closed-loop concurrency and open-loop Poisson-rate points with SLO attainment and goodput."""
    input:
        model_inputs,
    output:
        concurrency="results/e2/concurrency.csv",
        requests="results/e2/requests.csv",
        summary="results/e2/summary.json",
        metadata="results/e2/run_metadata.json",
        gpu_stats="results/e2/gpu_stats.json",
        engine_log="results/e2/engine.log",
    params:
        config=experiment_config_json("e2"),
        config_hash=config_hash("e2"),
    log:
        "logs/e2.log",
    resources:
        engine=1,
    conda:
        ENGINE_ENV
    shell:
        "context-research run e2 --outdir results/e2 --config-json {params.config:q} > {log} 2>&1"


rule e2_figures:
    input:
        concurrency="results/e2/concurrency.csv",
        summary="results/e2/summary.json",
        metadata="results/e2/run_metadata.json",
    output:
        throughput=report(
            "results/e2/throughput.svg",
            caption="../report/e2_throughput.rst",
            category="E2 concurrency and goodput",
        ),
        latency=report(
            "results/e2/latency.svg",
            caption="../report/e2_latency.rst",
            category="E2 concurrency and goodput",
        ),
        goodput=report(
            "results/e2/goodput.svg",
            caption="../report/e2_goodput.rst",
            category="E2 concurrency and goodput",
        ),
        table=report(
            "results/e2/concurrency.html",
            caption="../report/e2_concurrency.rst",
            category="E2 concurrency and goodput",
        ),
    log:
        "logs/e2_figures.log",
    shell:
        "context-research plots e2 --results results/e2 > {log} 2>&1"
