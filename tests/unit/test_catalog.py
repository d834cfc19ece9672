"""The experiment catalog is the one place an experiment is declared: the CLI, the packet, the
config schema, the Snakemake rules and the report captions all agree with it."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from context_research import cli, report
from context_research.config import REPO_ROOT, load_config, merged_schema
from context_research.experiments import catalog
from context_research.experiments.declaration import ONE_ENGINE, RUN_FILES, UnknownExperimentError

REPORT_DIR = REPO_ROOT / "workflow" / "report"
EXPERIMENTS = catalog.EXPERIMENTS


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(UnknownExperimentError) as err:
        catalog.get("e9")
    assert "'e9'" in str(err.value)
    for name in EXPERIMENTS:
        assert name in str(err.value)


def test_cli_run_of_an_unknown_experiment_fails_before_any_engine(capsys):
    rc = cli.main(["run", "e9", "--outdir", "unused", "--configfile", str(REPO_ROOT / "config" / "config.yaml")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'e9'" in err and "e0" in err


def test_schema_lists_exactly_the_catalog():
    schema = merged_schema(REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml", experiments=EXPERIMENTS)
    names = list(EXPERIMENTS)
    assert list(schema["properties"]["experiments"]["properties"]) == names
    report_block = schema["properties"]["report"]["properties"]
    assert report_block["experiments"]["items"]["enum"] == names
    assert report_block["experiments"]["default"] == names
    assert report_block["not_run_reasons"]["propertyNames"]["enum"] == names
    files = sorted(p.name.split(".")[0] for p in (REPO_ROOT / "workflow" / "schemas" / "experiments").glob("*.yaml"))
    assert files == sorted(names)


def test_declarations_are_complete():
    config = load_config(REPO_ROOT / "config" / "config.yaml", experiments=EXPERIMENTS)
    for name, exp in EXPERIMENTS.items():
        assert exp.name == name
        assert callable(exp.report.make_figures) and callable(exp.report.report_section)
        assert callable(exp.report.headline), f"{name}: the packet summary needs its key figures"
        if exp.engines == ONE_ENGINE:
            assert inspect.iscoroutinefunction(exp.body), f"{name}: a one-engine body is async (session, cfg, ctx)"
        else:
            assert list(inspect.signature(exp.body).parameters)[0] == "run", f"{name}: a several-engine body takes the run"
        assert set(RUN_FILES.values()) <= set(exp.files.values())
        block = config["experiments"][name]
        for key in exp.analysis_keys:
            assert key in block, f"{name}: analysis key {key!r} is not a key of experiments.{name}"
        svgs = [f for f in exp.figures if f.is_svg]
        assert svgs, f"{name} declares no figure for the packet"
        assert len({f.key for f in exp.figures}) == len(exp.figures)


def test_every_caption_is_written_once_and_used():
    used = {f.caption for exp in EXPERIMENTS.values() for f in exp.figures}
    for caption in used:
        assert (REPORT_DIR / caption).is_file(), f"missing caption file {caption}"
        assert report.caption_text(caption)
    # packet.rst and workflow.rst belong to the packet rule and the Snakefile's report directive
    orphans = {p.name for p in REPORT_DIR.glob("*.rst")} - used - {"packet.rst", "workflow.rst"}
    assert not orphans, f"caption files no figure declares: {sorted(orphans)}"


def test_report_sections_no_longer_carry_their_own_captions():
    for exp in EXPERIMENTS.values():
        source = inspect.getsource(exp.report.report_section)
        assert '"figures"' not in source, f"{exp.name}: captions come from the declaration's caption files"


def test_snakemake_rules_come_from_the_catalog(tmp_path):
    """`snakemake --list-rules` in this checkout names a run and a figures rule per experiment."""
    snakemake = Path(sys.executable).parent / "snakemake"
    cmd = [str(snakemake)] if snakemake.exists() else [sys.executable, "-m", "snakemake"]
    # this checkout's package, whichever one the environment has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([*cmd, "--list-rules"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rules = set(proc.stdout.split())
    for name, exp in EXPERIMENTS.items():
        assert {name, f"{name}_figures"} <= rules
        assert (f"{name}_analysis" in rules) == bool(exp.analyse)



def test_a_declaration_alone_feeds_the_glossary_compare_recheck_and_provenance():
    """Everything about an experiment is read from its declaration: a toy one, handed in beside the
    catalog's, has its tables in the glossary, its layout in compare's, its checks in recheck's and
    its code in its run digest. (tests/workflow/test_new_experiment.py adds a toy to a copy of the
    workflow and runs it to a packet.)"""
    from context_research import provenance, result_tables
    from context_research.analysis.compare_layout import NotCompared
    from context_research.columns import Column, Table
    from context_research.experiments.declaration import Experiment, Figure, comparison_layouts

    async def body(session, cfg, ctx):
        return None

    points = Table("e9/points.csv", (Column("request", "", "label", "the request's index", "request"),))
    toy = Experiment(name="e9", title="E9", category="E9", engines=ONE_ENGINE, body=body,
                     outputs={"points": "points.csv"}, figures=(Figure("points", "points.svg", "x.rst"),),
                     report_module="toy_report", code=("experiments/e1.py",), tables=(points,),
                     comparison=NotCompared("a toy"), row_checks=(("points", lambda row, gpu, cfg: None),))
    declared = {**EXPERIMENTS, "e9": toy}
    assert "## e9/points.csv" in result_tables.glossary_markdown(declared)
    assert comparison_layouts(declared)["e9"] == NotCompared("a toy")
    assert toy.table("points.csv") is points
    assert "experiments/e1.py" in provenance.code_files(toy) and "experiments/runner.py" in provenance.code_files(toy)
    with pytest.raises(ValueError, match="no table declares"):
        Experiment(**{**toy.__dict__, "tables": ()})
    with pytest.raises(ValueError, match="row checks name no output"):
        Experiment(**{**toy.__dict__, "row_checks": (("nothing", None),)})


def test_no_experiment_module_imports_its_report_module():
    """The declaration names its report module; the report module imports the experiment (no circle)."""
    import ast

    for name, exp in EXPERIMENTS.items():
        module = REPO_ROOT / "src" / "context_research" / "experiments" / f"{name}.py"
        imported = {a.name for node in ast.walk(ast.parse(module.read_text(encoding="utf-8")))
                    if isinstance(node, ast.ImportFrom) for a in node.names}
        assert f"{name}_report" not in imported and exp.report_module.endswith(f".{name}_report")
