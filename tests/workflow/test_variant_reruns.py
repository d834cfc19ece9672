"""Which rules `snakemake -n` reruns after a variant is added or changed: that variant's only.

Same setup as ``test_rerun_triggers`` (a copy of the workflow and package, a stub
``context-research`` first on PATH), with two variants configured and ``compare`` built once:
the baseline's runs under ``results/eN``, each variant's under ``results/variants/<name>/eN``,
the comparisons under ``reports/compare/<name>`` and their index. The stub here writes a rule's
files into the folder its command names (``--outdir``, ``--results``, ``--out``), so one stub
serves the baseline's rules and the variants'.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_rerun_triggers import TARGETS, jobs, snakemake, stubbed_workflow

STUB = r'''#!{python}
"""Test stub of context-research: creates the files a rule declares, measures nothing."""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
names = json.loads(Path(os.environ["STUB_OUTPUTS"]).read_text())
command = args[0]
def after(flag):
    return args[args.index(flag) + 1]
if command in ("run", "analyse", "plots"):
    folder = after("--outdir" if command == "run" else "--results")
    files = [os.path.join(folder, name) for name in names[f"{{command}} {{args[1]}}"]]
elif command == "report":
    files = [after(flag) for flag in ("--markdown", "--packet") if flag in args]
elif command == "compare":
    files = [os.path.join(after("--out"), name) for name in ("compare.csv", "compare.md", "compare.html")]
elif command == "compare-index":
    files = [after("--out")]
else:
    sys.exit(f"stub: unexpected command {{args}}")
for f in files:
    Path(f).parent.mkdir(parents=True, exist_ok=True)
    Path(f).write_text(f"stub {{command}}\n")
'''

VARIANTS = ("variants:\n"
            "  fp8:\n    serving:\n      kv_cache_dtype: fp8\n"
            "  chunked:\n    serving:\n      max_num_batched_tokens: 64\n      enable_chunked_prefill: true\n")
COMPARED = ("e0", "e1", "e2", "e5")  # compare.experiments' default


def _file_names_by_command() -> dict[str, list[str]]:
    from context_research.experiments.catalog import EXPERIMENTS

    out: dict[str, list[str]] = {}
    for name, exp in EXPERIMENTS.items():
        out[f"run {name}"] = list(exp.files.values())
        out[f"analyse {name}"] = list(exp.analysis_outputs.values())
        out[f"plots {name}"] = [f.file for f in exp.figures]
    return out


def variant_jobs(proc) -> dict[tuple[str, str | None], int]:
    """The dry run's jobs as {(rule, variant or None): count}."""
    counts: dict[tuple[str, str | None], int] = {}
    text = proc.stdout + proc.stderr
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", text, re.M):
        wildcard = re.search(r"^\s+wildcards: variant=(\S+)\s*$", m.group(2), re.M)
        key = (m.group(1), wildcard.group(1) if wildcard else None)
        counts[key] = counts.get(key, 0) + 1
    return counts


def one_variant(variant: str) -> dict[tuple[str, str | None], int]:
    """Every rule `compare` runs for one variant, and the index (whose list of reports changed)."""
    rules = {(f"variant_{e}", variant): 1 for e in COMPARED}
    rules[("variant_e0_analysis", variant)] = 1
    rules[("compare_variant", variant)] = 1
    rules[("compare", None)] = 1
    return rules


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = stubbed_workflow(tmp_path_factory.mktemp("variants"), STUB, _file_names_by_command(), VARIANTS)
    built = snakemake(work, "compare", *TARGETS)
    assert built.returncode == 0, built.stderr[-4000:]
    for variant in ("fp8", "chunked"):
        assert (work / "results" / "variants" / variant / "e1" / "run_metadata.json").exists()
        assert (work / "reports" / "compare" / variant / "compare.html").exists()
    assert (work / "reports" / "compare.html").exists() and (work / "results" / "e1" / "run_metadata.json").exists()
    return work


def test_nothing_changed_nothing_reruns(workdir):
    assert jobs(snakemake(workdir, "-n", "compare", *TARGETS)) == {}


def test_the_baseline_does_not_see_the_variants(workdir):
    """Without the variants, the baseline's outputs (built while they were configured) are up to date."""
    local = workdir / "local.yaml"
    original = local.read_text()
    try:
        local.write_text(original.replace(VARIANTS, ""))
        assert "variants:" not in local.read_text()
        assert jobs(snakemake(workdir, "-n", *TARGETS)) == {}
    finally:
        local.write_text(original)


def test_adding_a_variant_runs_only_that_variant(workdir, tmp_path):
    overlay = tmp_path / "added.yaml"
    overlay.write_text("variants:\n  blocks:\n    serving:\n      block_size: 32\n")
    proc = snakemake(workdir, "-n", "compare", *TARGETS, overlay=overlay)
    assert variant_jobs(proc) == one_variant("blocks")


def test_changing_a_variant_reruns_only_that_variant(workdir, tmp_path):
    overlay = tmp_path / "changed.yaml"
    overlay.write_text("variants:\n  fp8:\n    serving:\n      kv_cache_dtype: fp8_e5m2\n")
    proc = snakemake(workdir, "-n", "compare", *TARGETS, overlay=overlay)
    assert variant_jobs(proc) == one_variant("fp8")


def test_two_runs_per_side_add_one_run_of_each_side_and_keep_the_first(workdir, tmp_path):
    """compare.runs_per_side: 2 runs each side once more (baseline~r2, fp8~r2, chunked~r2, same
    settings, own folders); the runs already made stay, and both comparisons are redone."""
    overlay = tmp_path / "runs.yaml"
    overlay.write_text("compare:\n  runs_per_side: 2\n")
    proc = snakemake(workdir, "-n", "compare", *TARGETS, overlay=overlay)
    expected = {("compare_variant", v): 1 for v in ("fp8", "chunked")}
    expected[("compare", None)] = 1
    for run in ("baseline~r2", "fp8~r2", "chunked~r2"):
        expected.update({(f"variant_{e}", run): 1 for e in COMPARED})
        expected[("variant_e0_analysis", run)] = 1
    assert variant_jobs(proc) == expected


def test_a_variants_e3_setting_reruns_none_of_its_other_experiments(workdir, tmp_path):
    """E3's connector settings are inputs of E3's hash only: the variant's compared runs stay."""
    overlay = tmp_path / "connector.yaml"
    overlay.write_text("variants:\n  fp8:\n    experiments:\n      e3:\n        kv_connector_extra_config:\n"
                       "          note: changed\n")
    assert jobs(snakemake(workdir, "-n", "compare", *TARGETS, overlay=overlay)) == {}


def test_a_model_profile_variant_serves_its_own_model(workdir, tmp_path):
    """A variant on another profile gets that profile's shape-only model, built by its own job."""
    overlay = tmp_path / "model.yaml"
    overlay.write_text("models:\n  other:\n    source: example-org/not-in-any-cache\n    load_format: dummy\n"
                       f"    dummy_config: {workdir / 'model' / 'config.json'}\n"
                       "variants:\n  other:\n    model_profile: other\n")
    proc = snakemake(workdir, "-n", "-p", "results/variants/other/e1/run_metadata.json", overlay=overlay)
    assert variant_jobs(proc) == {("dummy_model", None): 1, ("variant_e1", "other"): 1}
    assert "resources/models/other-dummy/manifest.json" in proc.stdout


def test_a_key_a_variant_cannot_vary_stops_the_workflow_naming_variant_and_key(workdir, tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("variants:\n  mine:\n    experiments:\n      e1:\n        max_tokens: 3\n")
    proc = snakemake(workdir, "-n", "compare", overlay=overlay)
    assert proc.returncode != 0
    assert "variant 'mine': config key 'experiments.e1.max_tokens' cannot differ between variants" in proc.stderr
