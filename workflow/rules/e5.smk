# E5: one engine start; memory decomposition per prompt length x serving mode.
FIGURES["e5"] = ["results/e5/memory.svg", "results/e5/memory.html"]

localrules:
    e5_figures,


rule e5:
    """vLLM's memory profile, KV used (analytical vs gauge), NVML / RSS peaks per prompt length."""
    input:
        model_inputs,
    output:
        memory="results/e5/memory.csv",
        summary="results/e5/summary.json",
        metadata="results/e5/run_metadata.json",
        gpu_stats="results/e5/gpu_stats.json",
        engine_log="results/e5/engine.log",
    params:
        config=experiment_config_json("e5"),
        config_hash=config_hash("e5"),
    log:
        "logs/e5.log",
    resources:
        engine=1,
    conda:
        ENGINE_ENV
    shell:
        "context-research run e5 --outdir results/e5 --config-json {params.config:q} > {log} 2>&1"


rule e5_figures:
    input:
        memory="results/e5/memory.csv",
        summary="results/e5/summary.json",
        metadata="results/e5/run_metadata.json",
    output:
        memory=report(
            "results/e5/memory.svg",
            caption="../report/e5_memory.rst",
            category="E5 peak-memory decomposition",
        ),
        table=report(
            "results/e5/memory.html",
            caption="../report/e5_memory_table.rst",
            category="E5 peak-memory decomposition",
        ),
    log:
        "logs/e5_figures.log",
    shell:
        "context-research plots e5 --results results/e5 > {log} 2>&1"
