"""``context-research``: the commands Snakemake rules call (and users may call directly)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .errors import ContextResearchError


def _config_from_args(args) -> dict:
    from .config import load_config, validate_config
    from .experiments.catalog import EXPERIMENTS

    if args.config_json:
        return validate_config(json.loads(args.config_json), source="--config-json", experiments=EXPERIMENTS)
    return load_config(args.configfile[0], args.configfile[1:], experiments=EXPERIMENTS)


def cmd_run(args) -> int:
    from .experiments.catalog import get
    from .experiments.runner import run_declared

    experiment = get(args.experiment)
    meta = run_declared(experiment, _config_from_args(args), args.outdir)
    print(json.dumps({"run_id": meta["run_id"], "backend_mode": meta["backend_mode"],
                      "result": meta["result_summary"]}, default=str))
    return 0


def cmd_embedded_model(args) -> int:
    from .embedded_model import build_embedded_model

    if args.model_config_json is not None:
        block = json.loads(args.model_config_json)
    else:
        block = _config_from_args(args).get("embedded_model", {})
    manifest = build_embedded_model(args.out, block)
    print(json.dumps({"out": args.out, "files": len(manifest.get("files", []))}))
    return 0


def cmd_materialize(args) -> int:
    from .datasets.materialize import materialize_command

    try:
        lines = materialize_command(json.loads(args.specs_json), args.root)
    except ContextResearchError as exc:
        # one line: rule e4_data prints the log's last line as its error
        raise ContextResearchError(" ".join(str(exc).split())) from None
    for line in lines:
        print(json.dumps(line))
    return 0


def cmd_recheck(args) -> int:
    from .experiments.catalog import EXPERIMENTS
    from .recheck import recheck

    changes = recheck(args.results, EXPERIMENTS)
    print("\n".join(changes) if changes else "no judgement changed")
    print(f"written: {Path(args.results) / 'RECHECKED.md'}")
    return 0


def cmd_analyse(args) -> int:
    from .experiments.catalog import get

    experiment = get(args.experiment)
    if experiment.analyse is None:
        raise ContextResearchError(f"{experiment.name} has no analysis step: its run writes every table")
    experiment.analyse(Path(args.results), json.loads(args.analysis_json))
    return 0


def cmd_provenance(args) -> int:
    from .provenance import describe, differences

    if args.other is None:
        print("\n".join(describe(args.results)))
    else:
        diff = differences(args.results, args.other)
        print("\n".join(diff) if diff else "no hash input differs")
    return 0


def cmd_compare(args) -> int:
    from .compare_report import compare_runs
    from .experiments.catalog import EXPERIMENTS
    from .experiments.declaration import comparison_layouts

    path = compare_runs(args.a, args.b, args.out, comparison_layouts(EXPERIMENTS),
                        min_effect=args.min_effect, alpha=args.alpha, seed=args.seed,
                        resamples=args.resamples, allow_different_hardware=args.allow_different_hardware,
                        use_e0_start_noise=not args.no_e0_start_noise)
    print(f"written: {path} (and compare.csv, compare.md beside it)")
    return 0


def cmd_compare_index(args) -> int:
    from .compare_report import write_index

    print(f"written: {write_index(args.folder, args.out)}")
    return 0


def cmd_validate(args) -> int:
    config = _config_from_args(args)
    print(f"configuration is valid (model_profile={config['model_profile']}, backend={config['serving']['backend']})")
    return 0


def cmd_report(args) -> int:
    from .experiments.catalog import EXPERIMENTS, get
    from .report import render_experiment_markdown, render_packet

    if args.markdown:
        render_experiment_markdown(get(args.experiment), Path(args.results), Path(args.markdown))
    if args.packet:
        render_packet(Path(args.results), Path(args.packet), [get(e) for e in args.experiments],
                      json.loads(args.not_run_reasons), declared=EXPERIMENTS)
    return 0


def cmd_plots(args) -> int:
    from .experiments.catalog import get
    from .report import experiment_figures

    experiment_figures(get(args.experiment), Path(args.results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="context-research", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        group = p.add_mutually_exclusive_group()
        group.add_argument("--config-json", help="validated config as JSON (what Snakemake rules pass)")
        group.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                           help="config YAML plus overlays merged in order")
        return p

    p = with_config(sub.add_parser("run", help="run one experiment (its engines start and stop with it)"))
    p.add_argument("experiment", help="an experiment of the catalog (e0 ... e6)")
    p.add_argument("--outdir", required=True)
    p.set_defaults(func=cmd_run)

    p = with_config(sub.add_parser("embedded-model", help="build the embedded tiny Qwen3 model"))
    p.add_argument("--out", required=True)
    p.add_argument("--model-config-json", help="just the validated embedded_model block (what the rule passes)")
    p.set_defaults(func=cmd_embedded_model)

    p = sub.add_parser("materialize", help="write E4's datasets as JSONL plus manifests (rule e4_data)")
    p.add_argument("--specs-json", required=True, help="a list of dataset specs as JSON (what the rule passes)")
    p.add_argument("--root", default="results/data")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("recheck", help="re-judge saved results with today's integrity checks and verdicts")
    p.add_argument("results", help="a results root (holding e0/, e1/, ...), e.g. docs/evidence/<run>/results")
    p.set_defaults(func=cmd_recheck)

    p = sub.add_parser("analyse", help="recompute an experiment's analysis tables from its saved records")
    p.add_argument("experiment")
    p.add_argument("--results", required=True, help="the experiment's results folder")
    p.add_argument("--analysis-json", required=True, help="its analysis keys as JSON (what rule eN_analysis passes)")
    p.set_defaults(func=cmd_analyse)

    p = sub.add_parser("provenance", help="a run's hash inputs, or what differs between two runs")
    p.add_argument("results", help="a results folder (e.g. results/e1) or its run_metadata.json")
    p.add_argument("other", nargs="?", help="a second run to compare with")
    p.set_defaults(func=cmd_provenance)

    p = sub.add_parser("compare", help="compare two runs: per metric and point, B - A with its CI, a verdict and mde_pct")
    p.add_argument("a", help="run A: a results root (results, results/variants/<v>, docs/evidence/<x>/results) or "
                             "one experiment folder (results/e1); several runs of the same settings comma-separated "
                             "(results,results/variants/baseline~r2)")
    p.add_argument("b", help="run B, the same kind of folder(s)")
    p.add_argument("--out", default="reports/compare", help="folder for compare.csv, compare.md, compare.html")
    p.add_argument("--allow-different-hardware", action="store_true",
                   help="compare different GPUs / hardware or models anyway (the report names the difference)")
    p.add_argument("--min-effect", type=float, default=0.05, help="smallest relative change that counts (0.05: 5%%)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate (Holm); CIs at 1 - alpha")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--resamples", type=int, help="bootstrap resamples of each side's request-level noise (default 2000)")
    p.add_argument("--no-e0-start-noise", action="store_true",
                   help="leave E0's between-engine-start variation out of the CIs (request-level noise only)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("compare-index", help="write an index (reports/compare.html) of the comparisons in a folder")
    p.add_argument("folder", help="a folder of comparisons, one per subfolder (reports/compare)")
    p.add_argument("--out", help="the index file (default: FOLDER.html, e.g. reports/compare.html)")
    p.set_defaults(func=cmd_compare_index)

    p = with_config(sub.add_parser("validate", help="validate the configuration"))
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plots", help="figures and HTML tables of one experiment's results")
    p.add_argument("experiment")
    p.add_argument("--results", required=True, help="the experiment's results folder")
    p.set_defaults(func=cmd_plots)

    p = sub.add_parser("report", help="render an experiment's markdown and/or the evidence packet")
    p.add_argument("--experiment", default="e0")
    p.add_argument("--results", default="results", help="results root")
    p.add_argument("--markdown")
    p.add_argument("--packet")
    p.add_argument("--experiments", nargs="*", default=["e0"])
    p.add_argument("--not-run-reasons", default="{}", help="JSON {experiment: why it was not run}")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``context-research`` command. As a process's entry point (``argv`` None) it never
    outlives the process that started it, normally a Snakemake rule's shell: once that is gone
    it stops as on SIGTERM (``watchdog.die_with_parent``), so a failed job writes nothing more."""
    from .experiments.runner import Terminated
    from .watchdog import Orphaned

    args = build_parser().parse_args(argv)
    if argv is None:
        from .watchdog import die_with_parent

        die_with_parent()
    try:
        return args.func(args)
    except ContextResearchError as exc:
        print(f"context-research: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("context-research: interrupted; the engine was stopped", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"context-research: {exc}; the engine was stopped", file=sys.stderr)
        return 128 + exc.signum
    except Orphaned as exc:
        print(f"context-research: {exc}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as exc:  # a read-only or full disk, a missing folder: one line naming the path
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"context-research: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
