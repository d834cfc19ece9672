# E4: long-context quality on seeded subsets of RULER, LongBench, InfiniteBench and PG19.
#   snakemake --cores 1 results/e4/quality.csv
from context_research.experiments import e4 as E4

E4_DATASETS = E4.datasets(config["experiments"]["e4"])
E4_DATA = [str(ds.data_path()) for ds in E4_DATASETS]
E4_MANIFESTS = [str(ds.manifest_path()) for ds in E4_DATASETS]
FIGURES["e4"] = ["results/e4/quality.svg", "results/e4/ruler.svg", "results/e4/quality.html"]

localrules:
    e4_figures,


if E4_DATASETS:

    rule e4_data:
        """Every configured dataset, materialized with the served model's tokenizer: a seeded
        subset (or generated RULER samples) as JSONL plus a manifest with source, revision/sha256,
        seed, count, and per-sample token length and sha256. One process: loading the tokenizer
        costs more than materializing the CPU-sized subsets."""
        input:
            model_inputs,
            sources=E4.source_inputs(config),
        output:
            data=E4_DATA,
            manifests=E4_MANIFESTS,
        params:
            # only what the datasets depend on, so other config changes do not rematerialize them
            specs=json.dumps(E4.dataset_specs(config), sort_keys=True),
        log:
            "logs/e4_data.log",
        conda:
            ENGINE_ENV
        shell:
            # on failure the log's last line (one "context-research: error: ..." line) goes to stderr
            "python3 -m context_research.experiments.e4 materialize --specs-json {params.specs:q} "
            "> {log} 2>&1 || {{ tail -n 1 {log} >&2; exit 1; }}"


rule e4:
    """Long-context quality on the real engine: one start, every dataset, greedy chat decoding."""
    input:
        model_inputs,
        data=E4_DATA,
        manifests=E4_MANIFESTS,
    output:
        quality="results/e4/quality.csv",
        predictions="results/e4/predictions.jsonl",
        summary="results/e4/summary.json",
        metadata="results/e4/run_metadata.json",
        gpu_stats="results/e4/gpu_stats.json",
        engine_log="results/e4/engine.log",
    params:
        config=experiment_config_json("e4"),
        config_hash=config_hash("e4"),
    log:
        "logs/e4.log",
    resources:
        engine=1,
    conda:
        ENGINE_ENV
    shell:
        "context-research run e4 --outdir results/e4 --config-json {params.config:q} > {log} 2>&1"


rule e4_figures:
    input:
        quality="results/e4/quality.csv",
        summary="results/e4/summary.json",
        metadata="results/e4/run_metadata.json",
    output:
        quality=report(
            "results/e4/quality.svg",
            caption="../report/e4_quality.rst",
            category="E4 long-context quality",
        ),
        ruler=report(
            "results/e4/ruler.svg",
            caption="../report/e4_ruler.rst",
            category="E4 long-context quality",
        ),
        table=report(
            "results/e4/quality.html",
            caption="../report/e4_table.rst",
            category="E4 long-context quality",
        ),
    log:
        "logs/e4_figures.log",
    shell:
        "context-research plots e4 --results results/e4 > {log} 2>&1"
