"""A new experiment is five files and its name in the catalog: a toy E9 added to a copy of the
workflow (its module, report module, config schema and caption, and the catalog's import line)
is picked up by Snakemake's rules, the CLI, the packet, the glossary, the run digest, compare and
recheck, with no other file changed. It runs on the simulated backend (no engine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from context_research.config import REPO_ROOT

TOY_MODULE = '''"""E9, a toy: a few requests, one row each."""

from __future__ import annotations

from ..analysis.compare_layout import NotCompared
from ..analysis.integrity import check_request_row
from ..columns import Column, Table
from ..records import GenerationRequest
from ..result_tables import stamp_columns, status_columns
from .declaration import ONE_ENGINE, Experiment, Figure


async def run(session, cfg, ctx):
    rows = []
    for i in range(cfg["requests"]):
        r = await session.generate(GenerationRequest(f"toy-{i}", [1] * 8, 4, prompt_tokens_target=8))
        rows.append({"request": i, "status": "ok" if r.ok else "failed", "reason": r.error or "", "ttft_s": r.ttft_s})
    ctx.write_table("points", ctx.frame(rows))
    return {"rows": len(rows)}


POINTS = Table("e9/points.csv", (
    Column("request", "", "label", "the request's index", "request"),
    *status_columns("request"),
    Column("ttft_s", "s", "client", "client TTFT of the toy request", "toy TTFT"),
    *stamp_columns(),
), "one row per toy request")

EXPERIMENT = Experiment(
    name="e9", title="E9 - a toy", category="E9 toy", engines=ONE_ENGINE, body=run,
    outputs={"points": "points.csv", "engine_log": "engine.log"},
    figures=(Figure("points", "points.svg", "e9_points.rst"),),
    report_module="context_research.experiments.e9_report",
    code=("experiments/e9.py", "analysis/integrity.py", "analysis/hardware.py", "analysis/model_math.py"),
    report_code=("experiments/e9_report.py",),
    tables=(POINTS,),
    comparison=NotCompared("a toy"),
    row_checks=(("points", check_request_row),),
)
'''

TOY_REPORT = '''"""E9's figure and section."""

import pandas as pd

from ..analysis.plots import line_plot
from ..io import read_json
from ..report import provenance_line
from ..tables import html_table, markdown_table
from . import e9


def _frame(results_dir):
    return pd.read_csv(e9.EXPERIMENT.path(results_dir, "points"))


def make_figures(results_dir):
    meta = read_json(e9.EXPERIMENT.path(results_dir, "metadata"))
    line_plot(_frame(results_dir), "request", ["ttft_s"], e9.EXPERIMENT.figure_path(results_dir, "points"),
              "E9: a toy", "request", "s", provenance=provenance_line(meta))


def report_section(results_dir):
    table = e9.POINTS.shown(_frame(results_dir), ["request", "status", "ttft_s"])
    return {"findings": ["A toy, served by the simulated backend."], "facts": [("requests", len(table))],
            "tables": [{"caption": "Toy rows", "html": html_table(table), "markdown": markdown_table(table)}]}


def headline(results_dir):
    return {"figures": [("toy requests", str(len(_frame(results_dir))))]}
'''

TOY_SCHEMA = '''$schema: "https://json-schema.org/draft/2020-12/schema"
description: E9, a toy
type: object
additionalProperties: false
default: {}
properties:
  requests: {type: integer, minimum: 1, default: 3, description: toy requests}
'''


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        '{"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, '
        '"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 3072, '
        '"max_position_embeddings": 4096, "torch_dtype": "bfloat16"}')
    (model / "tokenizer.json").write_text("{}")
    return model


def test_a_new_experiment_is_five_files_and_its_name_in_the_catalog(tmp_path, tiny_model):
    """The packet shows the toy's section with its declared table header; its tables are in the
    glossary, its layout in compare's, its checks in recheck's, its module in its run digest and
    its report module in none."""
    work = tmp_path / "work"
    work.mkdir()
    for rel in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = REPO_ROOT / rel
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / rel)
    pkg = work / "src" / "context_research"
    shutil.copytree(REPO_ROOT / "src" / "context_research", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "experiments" / "e9.py").write_text(TOY_MODULE)
    (pkg / "experiments" / "e9_report.py").write_text(TOY_REPORT)
    (work / "workflow" / "schemas" / "experiments" / "e9.schema.yaml").write_text(TOY_SCHEMA)
    (work / "workflow" / "report" / "e9_points.rst").write_text("A toy's client TTFT per request.\n")
    catalog_file = pkg / "experiments" / "catalog.py"
    text = catalog_file.read_text()
    assert text.count("e5, e6") == 2
    catalog_file.write_text(text.replace("e5, e6", "e5, e6, e9"))
    (work / "local.yaml").write_text(
        f"model_profile: local\nmodels:\n  local:\n    source: {tiny_model}\n    max_model_len: 512\n"
        "serving:\n  backend: simulated\n  device: cpu\nreport:\n  experiments: [e9]\n")
    env = {**os.environ, "PYTHONPATH": str(work / "src"), "CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND": "1",
           "CONTEXT_RESEARCH_LOCK_DIR": str(tmp_path / "locks"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        return proc.stdout

    snakemake = [str(Path(sys.executable).parent / "snakemake")]
    rules = set(run(*snakemake, "--list-rules").split())
    assert {"e9", "e9_figures"} <= rules and "e9_analysis" not in rules
    run(*snakemake, "--cores", "1", "reports/packet.html", "--configfile", "config/config.yaml", "local.yaml")
    packet = (work / "reports" / "packet.html").read_text()
    assert "E9 - a toy" in packet and "A toy, served by the simulated backend." in packet and "toy TTFT (s)" in packet
    assert (work / "results" / "e9" / "points.svg").is_file()
    assert len((work / "results" / "e9" / "points.csv").read_text().splitlines()) == 4  # header + 3 requests
    assert "## e9/points.csv" in run(sys.executable, "-m", "context_research.result_tables")
    assert "no judgement changed" in run("context-research", "recheck", "results")
    checks = run(sys.executable, "-c", "from context_research.experiments.catalog import get, EXPERIMENTS\n"
                 "from context_research.experiments.declaration import comparison_layouts\n"
                 "from context_research.provenance import code_files\n"
                 "print(comparison_layouts(EXPERIMENTS)['e9'].reason, 'experiments/e9.py' in code_files(get('e9')),\n"
                 "      'experiments/e9_report.py' in code_files(get('e9')))")
    assert checks.split() == ["a", "toy", "True", "False"]
