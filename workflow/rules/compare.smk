# `snakemake --cores 1 compare`: every variant's runs of compare.experiments (and the baseline's),
# one comparison per variant against the baseline (reports/compare/{variant}/), and an index
# linking them (reports/compare.html).
from context_research.variants import COMPARE_INDEX, COMPARE_ROOT, compare_dir, compare_paths


def compared_results(side):
    """What `context-research compare` reads of one side, every run of it (compare.runs_per_side):
    the run's and the analysis' files of every compared experiment (not the figures: the
    comparison draws its own). The baseline's E0 always: its engine starts give the between-start
    noise where a variant does not run E0."""
    noise = ["e0"] if side == BASELINE and "e0" not in COMPARE_EXPERIMENTS else []
    return [path for k, run in enumerate(side_runs(config, side))
            for name in [*COMPARE_EXPERIMENTS, *(noise if k == 0 else [])]
            for path in (*EXPERIMENTS[name].run_paths(results_root(run)).values(),
                         *EXPERIMENTS[name].analysis_paths(results_root(run)).values())]


def side_roots(side):
    """The result folders of one side, comma-joined as `context-research compare` takes them."""
    return ",".join(results_root(run) for run in side_runs(config, side))


if VARIANTS:

    rule compare_variant:
        """One variant against the baseline: differences with bootstrap CIs and verdicts."""
        input:
            baseline=compared_results(BASELINE),
            variant=lambda wildcards: compared_results(wildcards.variant),
        output:
            **compare_paths("{variant}"),
        params:
            baseline=side_roots(BASELINE),
            variant=lambda wildcards: side_roots(wildcards.variant),
            outdir=compare_dir("{variant}"),
            # The comparison's code (statistics, report, the declared layouts): a fix redraws it
            # without rerunning a run.
            code=files_digest(comparison_files(EXPERIMENTS)),
        log:
            "logs/compare/{variant}.log",
        localrule: True
        shell:
            "context-research compare {params.baseline} {params.variant} --out {params.outdir} > {log} 2>&1 "
            "|| {{ tail -n 5 {log} >&2; exit 1; }}"

    rule compare:
        """The index of every variant's comparison with the baseline."""
        input:
            expand(compare_paths("{variant}")["html"], variant=VARIANTS),
        output:
            COMPARE_INDEX,
        params:
            root=COMPARE_ROOT,
        log:
            "logs/compare/index.log",
        localrule: True
        shell:
            "context-research compare-index {params.root} --out {output} > {log} 2>&1"

else:

    rule compare:
        """Without variants there is nothing to compare: say how to add one."""
        output:
            COMPARE_INDEX,
        localrule: True
        shell:
            "echo 'context-research: no variants configured: add one under variants: in the config "
            "(docs/comparisons.md)' >&2; exit 1"
