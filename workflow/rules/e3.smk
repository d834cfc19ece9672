# E3: aggregated vs prefill/decode-disaggregated serving with real KV transfer. The rule starts
# its own engines: one aggregated engine, stopped before a prefill (kv_producer) and a decode
# (kv_consumer) engine joined by the configured vLLM KV connector start.
FIGURES["e3"] = [
    "results/e3/latency.svg",
    "results/e3/goodput.svg",
    "results/e3/transfer.svg",
    "results/e3/mode_comparison.html",
]


localrules:
    e3_figures,


rule e3:
    """Same workload on both modes; KV bytes, transfer time and stall ratio per handoff."""
    input:
        model_inputs,
    output:
        comparison="results/e3/mode_comparison.csv",
        requests="results/e3/requests.csv",
        transfers="results/e3/transfers.csv",
        routes_aggregated="results/e3/routes_aggregated.jsonl",
        routes_disaggregated="results/e3/routes_disaggregated.jsonl",
        summary="results/e3/summary.json",
        metadata="results/e3/run_metadata.json",
        gpu_stats="results/e3/gpu_stats.json",
        engine_aggregated="results/e3/engine_aggregated.log",
        engine_prefill="results/e3/engine_prefill.log",
        engine_decode="results/e3/engine_decode.log",
    params:
        config=experiment_config_json("e3"),
        config_hash=config_hash("e3"),
    log:
        "logs/e3.log",
    resources:
        # One engine job like the others (its two disaggregated engines share the job's GPU or,
        # given two, use one each).
        engine=1,
    conda:
        ENGINE_ENV
    shell:
        "context-research run e3 --outdir results/e3 --config-json {params.config:q} > {log} 2>&1"


rule e3_figures:
    input:
        comparison="results/e3/mode_comparison.csv",
        summary="results/e3/summary.json",
        metadata="results/e3/run_metadata.json",
    output:
        latency=report(
            "results/e3/latency.svg",
            caption="../report/e3_latency.rst",
            category="E3 aggregated vs disaggregated",
        ),
        goodput=report(
            "results/e3/goodput.svg",
            caption="../report/e3_goodput.rst",
            category="E3 aggregated vs disaggregated",
        ),
        transfer=report(
            "results/e3/transfer.svg",
            caption="../report/e3_transfer.rst",
            category="E3 aggregated vs disaggregated",
        ),
        table=report(
            "results/e3/mode_comparison.html",
            caption="../report/e3_mode_comparison.rst",
            category="E3 aggregated vs disaggregated",
        ),
    log:
        "logs/e3_figures.log",
    shell:
        "context-research plots e3 --results results/e3 > {log} 2>&1"
