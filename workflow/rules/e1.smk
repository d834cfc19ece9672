# E1: prompt-length latency sweep; one engine start serves every length.
FIGURES["e1"] = ["results/e1/ttft.svg", "results/e1/tpot.svg", "results/e1/latency.html"]


localrules:
    e1_figures,


rule e1:
    """Batch-1 TTFT / TPOT per prompt length on the real engine, with engine-side histograms."""
    input:
        model_inputs,
    output:
        latency="results/e1/latency.csv",
        requests="results/e1/requests.csv",
        summary="results/e1/summary.json",
        metadata="results/e1/run_metadata.json",
        gpu_stats="results/e1/gpu_stats.json",
        engine_log="results/e1/engine.log",
    params:
        config=experiment_config_json("e1"),
        config_hash=config_hash("e1"),
    log:
        "logs/e1.log",
    resources:
        engine=1,
    conda:
        ENGINE_ENV
    shell:
        "context-research run e1 --outdir results/e1 --config-json {params.config:q} > {log} 2>&1"


rule e1_figures:
    input:
        latency="results/e1/latency.csv",
        summary="results/e1/summary.json",
        metadata="results/e1/run_metadata.json",
    output:
        ttft=report(
            "results/e1/ttft.svg",
            caption="../report/e1_ttft.rst",
            category="E1 prompt-length latency",
        ),
        tpot=report(
            "results/e1/tpot.svg",
            caption="../report/e1_tpot.rst",
            category="E1 prompt-length latency",
        ),
        table=report(
            "results/e1/latency.html",
            caption="../report/e1_latency.rst",
            category="E1 prompt-length latency",
        ),
    log:
        "logs/e1_figures.log",
    shell:
        "context-research plots e1 --results results/e1 > {log} 2>&1"
