rule embedded_model:
    """Build the tiny random-weight Qwen3 model and its tokenizer; nothing is downloaded."""
    output:
        manifest=EMBEDDED_MANIFEST,
    params:
        config=CONFIG_JSON,
        config_hash=lambda w: json.dumps(config.get("embedded_model", {}), sort_keys=True),
        outdir=lambda w, output: os.path.dirname(output.manifest),
    log:
        "logs/embedded_model.log",
    shell:
        "context-research embedded-model --out {params.outdir} --config-json {params.config:q} > {log} 2>&1"
