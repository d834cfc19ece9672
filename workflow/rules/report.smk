localrules:
    experiment_markdown,
    packet,


rule experiment_markdown:
    input:
        report_inputs,
    output:
        "reports/{experiment}.md",
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    params:
        code=lambda wildcards: report_code(wildcards.experiment),
    log:
        "logs/report_{experiment}.log",
    shell:
        "context-research report --experiment {wildcards.experiment} --results results "
        "--markdown {output} > {log} 2>&1"


rule packet:
    """The evidence packet: one section per experiment, each stating where its numbers came from."""
    input:
        expand("reports/{experiment}.md", experiment=REPORT_EXPERIMENTS),
    output:
        report("reports/packet.html", caption="../report/packet.rst", category="Evidence packet"),
    params:
        experiments=" ".join(REPORT_EXPERIMENTS),
        not_run=json.dumps(config["report"]["not_run_reasons"], sort_keys=True),
    log:
        "logs/packet.log",
    shell:
        "context-research report --results results --packet {output} "
        "--experiments {params.experiments} --not-run-reasons {params.not_run:q} > {log} 2>&1"
