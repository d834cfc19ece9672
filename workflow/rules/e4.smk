# E4's datasets: materialized once with the served model's tokenizer, read by rule e4.
#   snakemake --cores 1 results/e4/quality.csv
from context_research.datasets import specs as E4_SPECS

E4_DATASETS = E4_SPECS.datasets(config["experiments"]["e4"])

if E4_DATASETS:

    rule e4_data:
        """Every configured dataset, materialized with the served model's tokenizer: a seeded
        subset (or generated RULER samples) as JSONL plus a manifest with source, revision/sha256,
        seed, count, and per-sample token length and sha256. One process: loading the tokenizer
        costs more than materializing the CPU-sized subsets."""
        input:
            model_inputs,
            sources=E4_SPECS.source_inputs(config),
        output:
            data=[str(ds.data_path()) for ds in E4_DATASETS],
            manifests=[str(ds.manifest_path()) for ds in E4_DATASETS],
        params:
            # only what the datasets depend on, so other config changes do not rematerialize them
            specs=json.dumps(E4_SPECS.dataset_specs(config), sort_keys=True),
            # the code, prompt templates and word lists E4 declares for its data (data_code)
            code=data_digest(EXPERIMENTS["e4"]),
        log:
            "logs/e4_data.log",
        conda:
            ENGINE_ENV
        shell:
            # on failure the log's last line (one "context-research: error: ..." line) goes to stderr
            "context-research materialize --specs-json {params.specs:q} "
            "> {log} 2>&1 || {{ tail -n 1 {log} >&2; exit 1; }}"
