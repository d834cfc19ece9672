# context-research: long-context serving baselines on the real vLLM engine.
#   snakemake --cores 1                       # evidence packet on the configured model profile
#   snakemake --cores 1 results/e0/summary.json
#   snakemake --cores 1 compare               # every variant against the baseline: reports/compare.html
#   snakemake --report reports/snakemake-report.zip
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/experiments.smk"
include: "workflow/rules/e4.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/compare.smk"


rule all:
    input:
        "reports/packet.html",
