rule embedded_model:
    """Build the tiny random-weight Qwen3 model and its tokenizer; nothing is downloaded."""
    output:
        manifest=EMBEDDED_MANIFEST,
    params:
        model_config=json.dumps(config["embedded_model"], sort_keys=True),
        outdir=lambda w, output: os.path.dirname(output.manifest),
        # its code (embedded_model.py, embedded_tokenizer.py) and word lists: an edit rebuilds the
        # model, and so reruns every engine rule on the new one
        code=build_digest("embedded_model"),
    log:
        "logs/embedded_model.log",
    conda:
        ENGINE_ENV
    shell:
        "context-research embedded-model --out {params.outdir} --model-config-json {params.model_config:q} > {log} 2>&1"


rule dummy_model:
    """Shape-only model folder (config.json + synthetic word-level tokenizer) for dummy weights."""
    input:
        # the profile's own shapes: a variant may serve another profile than the baseline
        config=lambda w: config["models"][w.profile]["dummy_config"],
    output:
        manifest="resources/models/{profile}-dummy/manifest.json",
    params:
        outdir=lambda w, output: os.path.dirname(output.manifest),
        code=build_digest("dummy_model"),
    log:
        "logs/dummy_model_{profile}.log",
    shell:
        "python -c 'import sys; from context_research.dummy_model import build_dummy_model; "
        "build_dummy_model(sys.argv[1], sys.argv[2])' {params.outdir} {input.config} > {log} 2>&1"
