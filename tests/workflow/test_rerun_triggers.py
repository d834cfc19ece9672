"""Which rules `snakemake -n` reruns after each kind of change: exactly those whose numbers change.

No engine starts. A temp copy of the workflow and of the package is built once with a stub
``context-research`` first on PATH (it only creates each rule's outputs), so that Snakemake
records every job's params, inputs and code as after a real run. Each test then changes one
thing and reads the dry run's job counts:

* an analysis key (E0's cv_threshold): E0's analysis, figures and section only;
* a run key (E2's requests per point, and E2's TTFT SLO, which steers the capacity search): E2's
  engine rule and everything after it;
* package code: one line added to the copied package's ``experiments/e2.py`` or ``e2_points.py``
  (the code digest is over the package the workflow imports: ``PYTHONPATH`` points at the copy),
  to ``e2_report.py`` or ``e2_figures.py`` (figures and section only), to ``analysis/plots.py``
  (every figure, no engine), or to shared code (every experiment);
* a data file: E4's prompt templates (``data/upstream_prompts.json``) rematerialize E4's datasets
  and rerun E4, nothing else;
* the model's recipe: ``embedded_model.py`` rebuilds the embedded model first, then every engine
  rule runs on the new one;
* an operational serving key (``startup_timeout_s``, the device lock's mode): nothing;
* a model file: the local model folder's ``config.json``;
* the engine version: a fake ``vllm`` distribution (a ``.dist-info`` folder) put first on
  ``PYTHONPATH``, which ``importlib.metadata`` then reports, as a different install would.

One more test runs E0 for real through Snakemake on the simulated backend (no engine process):
the run's config_hash is the one the DAG computed, and a new cv_threshold only reanalyses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TARGETS = ["reports/e0.md", "reports/e1.md", "reports/e2.md", "reports/e3.md"]

STUB = r'''#!{python}
"""Test stub of context-research: creates the files a rule declares, measures nothing."""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
outputs = json.loads(Path(os.environ["STUB_OUTPUTS"]).read_text())
command = args[0]
if command in ("run", "analyse", "plots"):
    files = outputs[f"{{command}} {{args[1]}}"]
elif command == "materialize":
    files = outputs["materialize"]
elif command == "embedded-model":
    files = [os.path.join(args[args.index("--out") + 1], "manifest.json")]
elif command == "report":
    files = [args[args.index(flag) + 1] for flag in ("--markdown", "--packet") if flag in args]
else:
    sys.exit(f"stub: unexpected command {{args}}")
for f in files:
    Path(f).parent.mkdir(parents=True, exist_ok=True)
    Path(f).write_text(f"stub {{command}}\n")
'''


def _outputs_by_command() -> dict[str, list[str]]:
    from context_research.config import load_config
    from context_research.datasets import specs
    from context_research.experiments.catalog import EXPERIMENTS

    out: dict[str, list[str]] = {}
    for name, exp in EXPERIMENTS.items():
        out[f"run {name}"] = list(exp.run_paths().values())
        out[f"analyse {name}"] = list(exp.analysis_paths().values())
        out[f"plots {name}"] = list(exp.figure_paths().values())
    e4 = specs.datasets(load_config(REPO / "config" / "config.yaml", experiments=EXPERIMENTS)["experiments"]["e4"])
    out["materialize"] = [str(p) for ds in e4 for p in (ds.data_path(), ds.manifest_path())]
    return out


def snakemake(workdir: Path, *args: str, pythonpath: list[Path] | None = None,
              overlay: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{workdir / 'bin'}{os.pathsep}{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (pythonpath or []) + [workdir / "src"])
    env["STUB_OUTPUTS"] = str(workdir / "stub_outputs.json")
    exe = VENV_BIN / "snakemake"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]
    configs = ["config/config.yaml", "local.yaml", *([str(overlay)] if overlay else [])]
    return subprocess.run([*cmd, "--cores", "1", *args, "--configfile", *configs],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The dry run's job stats as {rule: count}; {} when nothing is to be done."""
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def downstream(experiment: str, engine: bool) -> dict[str, int]:
    from context_research.experiments.catalog import get

    rules = {f"{experiment}_figures": 1}
    if get(experiment).analyse:
        rules[f"{experiment}_analysis"] = 1
    if engine:
        rules[experiment] = 1
    return rules


def merged(*parts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {"experiment_markdown": 0}
    for part in parts:
        out.update(part)
        out["experiment_markdown"] += 1
    return out


def copy_workflow(work: Path) -> Path:
    """The workflow and a copy of the package (the one the rules import, via PYTHONPATH), with
    E4's fixture datasets (its default sources)."""
    work.mkdir(parents=True, exist_ok=True)
    for rel in ("Snakefile", "workflow", "config", "profiles", "envs", "tests/fixtures/e4"):
        src = REPO / rel
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / rel)
    shutil.copytree(REPO / "src" / "context_research", work / "src" / "context_research",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return work


def stubbed_workflow(work: Path, stub: str, outputs: dict, extra_config: str = "", local_model: bool = True) -> Path:
    """``copy_workflow`` plus a local model folder (config.json, tokenizer.json) as the profile (or,
    without ``local_model``, the config's embedded model), and a stub ``context-research`` that
    only writes the outputs ``outputs`` names per command."""
    copy_workflow(work)
    model = work / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 64,
                                                   "num_hidden_layers": 2, "vocab_size": 3072}))
    (model / "tokenizer.json").write_text("{}")
    profile = f"model_profile: local\nmodels:\n  local:\n    source: {model}\n" if local_model else ""
    (work / "local.yaml").write_text(profile + extra_config or "{}\n")
    (work / "bin").mkdir()
    command = work / "bin" / "context-research"
    command.write_text(stub.format(python=sys.executable))
    command.chmod(0o755)
    (work / "stub_outputs.json").write_text(json.dumps(outputs))
    return work


E4_TARGETS = ["reports/e4.md"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = stubbed_workflow(tmp_path_factory.mktemp("rerun"), STUB, _outputs_by_command())
    built = snakemake(work, *TARGETS, *E4_TARGETS)
    assert built.returncode == 0, built.stderr[-4000:]
    return work


@pytest.fixture(scope="module")
def embedded_workdir(tmp_path_factory) -> Path:
    """The same, serving the config's embedded model, which the workflow builds (rule embedded_model)."""
    work = stubbed_workflow(tmp_path_factory.mktemp("embedded"), STUB, _outputs_by_command(), local_model=False)
    built = snakemake(work, *TARGETS)
    assert built.returncode == 0, built.stderr[-4000:]
    return work


def edited(path: Path, addition: str):
    """A context manager: ``addition`` appended to ``path`` inside it, the original back after."""
    import contextlib

    @contextlib.contextmanager
    def manager():
        original = path.read_text()
        try:
            path.write_text(original + addition)
            yield path
        finally:
            path.write_text(original)
    return manager()


def test_nothing_changed_nothing_reruns(workdir):
    assert jobs(snakemake(workdir, "-n", *TARGETS)) == {}


def test_an_analysis_key_reruns_only_the_analysis_figures_and_section(workdir, tmp_path):
    overlay = tmp_path / "cv.yaml"
    overlay.write_text("experiments:\n  e0:\n    cv_threshold: 0.5\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, overlay=overlay)) == merged(downstream("e0", engine=False))


def test_e2_slo_is_a_run_key_it_steers_the_capacity_search(workdir, tmp_path):
    overlay = tmp_path / "slo.yaml"
    overlay.write_text("experiments:\n  e2:\n    ttft_slo_ms: 12345\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, overlay=overlay)) == merged(downstream("e2", engine=True))


def test_e3s_ucx_environment_and_ways_rerun_e3_only(workdir, tmp_path):
    """issue 27: the UCX variable that changed NIXL's transport 300-fold must rerun E3."""
    overlay = tmp_path / "ucx.yaml"
    overlay.write_text("experiments:\n  e3:\n    connector: NixlConnector\n    ucx_env:\n"
                       "      UCX_CUDA_IPC_ENABLE_GET_ZCOPY: \"y\"\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, overlay=overlay)) == merged(downstream("e3", engine=True))
    ways = tmp_path / "ways.yaml"
    ways.write_text("experiments:\n  e3:\n    kv_paths:\n      - {name: a, connector: ExampleConnector}\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, overlay=ways)) == merged(downstream("e3", engine=True))


def test_e3_slo_stays_a_run_key_until_e3_has_an_analysis_step(workdir, tmp_path):
    overlay = tmp_path / "e3.yaml"
    overlay.write_text("experiments:\n  e3:\n    ttft_slo_ms: 12345\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, overlay=overlay)) == merged(downstream("e3", engine=True))


def test_a_run_key_reruns_the_engine_rule_and_what_follows(workdir, tmp_path):
    overlay = tmp_path / "run.yaml"
    overlay.write_text("experiments:\n  e2:\n    requests_per_point: 7\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, overlay=overlay)) == merged(downstream("e2", engine=True))


@pytest.mark.parametrize("name", ["e2.py", "e2_points.py", "e2_load.py"])
def test_a_change_in_an_experiment_module_reruns_that_experiment_only(workdir, name):
    module = workdir / "src" / "context_research" / "experiments" / name
    original = module.read_text()
    try:
        module.write_text(original + "\nMETRIC_FIX = 1  # a changed metric\n")
        assert jobs(snakemake(workdir, "-n", *TARGETS)) == merged(downstream("e2", engine=True))
    finally:
        module.write_text(original)


@pytest.mark.parametrize("name", ["e2_report.py", "e2_figures.py"])
def test_a_change_in_a_report_module_redraws_without_a_run(workdir, name):
    module = workdir / "src" / "context_research" / "experiments" / name
    original = module.read_text()
    try:
        module.write_text(original + "\n# a fixed axis label\n")
        assert jobs(snakemake(workdir, "-n", *TARGETS)) == merged({"e2_figures": 1})
    finally:
        module.write_text(original)


def test_a_plot_edit_redraws_every_figure_and_reruns_no_engine(workdir):
    """analysis/plots.py is figures code only: on a GPU a plot fix must not cost a packet of runs."""
    with edited(workdir / "src" / "context_research" / "analysis" / "plots.py", "\n# a fixed axis label\n"):
        assert jobs(snakemake(workdir, "-n", *TARGETS)) == merged(
            *({f"{e}_figures": 1} for e in ("e0", "e1", "e2", "e3")))


def test_an_e4_prompt_template_edit_rematerializes_and_reruns_e4_only(workdir):
    templates = workdir / "src" / "context_research" / "data" / "upstream_prompts.json"
    data = json.loads(templates.read_text())
    original = templates.read_text()
    try:
        data["longbench"]["tasks"]["qasper"]["prompt"] += " Answer briefly."
        templates.write_text(json.dumps(data))
        assert jobs(snakemake(workdir, "-n", *E4_TARGETS)) == merged({"e4_data": 1, "e4": 1, "e4_figures": 1})
        assert jobs(snakemake(workdir, "-n", *TARGETS)) == {}
    finally:
        templates.write_text(original)


def test_an_operational_serving_key_reruns_nothing(workdir, tmp_path):
    """startup_timeout_s and the device lock's mode change how long a run waits, never a number."""
    overlay = tmp_path / "ops.yaml"
    overlay.write_text("serving:\n  startup_timeout_s: 12345\n  device_lock:\n    mode: fail\n    timeout_s: 5\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, *E4_TARGETS, overlay=overlay)) == {}
    timeout = tmp_path / "timeout.yaml"  # a request timeout can fail a request: a run key
    timeout.write_text("serving:\n  request_timeout_s: 12345\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, overlay=timeout)) == merged(
        *(downstream(e, engine=True) for e in ("e0", "e1", "e2", "e3")))


def test_an_embedded_model_recipe_edit_rebuilds_the_model_first_then_reruns_every_engine(embedded_workdir):
    with edited(embedded_workdir / "src" / "context_research" / "embedded_model.py", "\n# a new recipe\n"):
        proc = snakemake(embedded_workdir, "-n", *TARGETS)
        assert jobs(proc) == {"embedded_model": 1, **merged(*(downstream(e, engine=True)
                                                                for e in ("e0", "e1", "e2", "e3")))}
        order = [m.group(1) for m in re.finditer(r"^rule (\w+):", proc.stdout + proc.stderr, re.M)]
        assert order[0] == "embedded_model", order
    assert jobs(snakemake(embedded_workdir, "-n", *TARGETS)) == {}


def test_a_change_in_shared_code_reruns_every_experiment(workdir):
    module = workdir / "src" / "context_research" / "analysis" / "latency.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# a changed metric\n")
        assert jobs(snakemake(workdir, "-n", *TARGETS)) == merged(
            *(downstream(e, engine=True) for e in ("e0", "e1", "e2", "e3")))
    finally:
        module.write_text(original)


def test_a_changed_model_file_reruns_every_engine_rule(workdir):
    config = workdir / "model" / "config.json"
    original = config.read_text()
    try:
        config.write_text(json.dumps({**json.loads(original), "rope_theta": 5000000.0}))
        assert jobs(snakemake(workdir, "-n", *TARGETS)) == merged(
            *(downstream(e, engine=True) for e in ("e0", "e1", "e2", "e3")))
    finally:
        config.write_text(original)


def test_a_different_engine_version_reruns_every_engine_rule(workdir, tmp_path):
    dist = tmp_path / "fake-engine" / "vllm-9.9.9.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 9.9.9\n")
    assert jobs(snakemake(workdir, "-n", *TARGETS, pythonpath=[dist.parent])) == merged(
        *(downstream(e, engine=True) for e in ("e0", "e1", "e2", "e3")))


def test_a_simulated_run_records_the_rules_hash_and_a_new_threshold_only_reanalyses(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    """Through Snakemake for real, on the simulated backend (no engine): the run's config_hash is
    the one the DAG computed, and a new cv_threshold rewrites summary.json from measured.json
    without running e0 again."""
    from context_research.config import experiment_hash, load_config
    from context_research.experiments.catalog import EXPERIMENTS
    from context_research.hashing import sha256_obj

    work = copy_workflow(tmp_path / "sim")
    (work / "bin").mkdir()  # no stub: the real context-research command
    (work / "local.yaml").write_text(
        f"model_profile: local\nmodels:\n  local:\n    source: {tiny_model_dir}\n    max_model_len: 512\n"
        "serving:\n  backend: simulated\n  device: cpu\n"
        "experiments:\n  e0:\n    engine_starts: 2\n    repeats: 2\n    requests_per_repeat: 2\n")
    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")
    monkeypatch.setenv("CONTEXT_RESEARCH_LOCK_DIR", str(tmp_path / "locks"))
    built = snakemake(work, "results/e0/summary.json")
    assert built.returncode == 0, built.stderr[-4000:]
    meta = json.loads((work / "results/e0/run_metadata.json").read_text())
    config = load_config(work / "config/config.yaml", [work / "local.yaml"], experiments=EXPERIMENTS)
    assert meta["config_hash"] == sha256_obj(meta["hash_inputs"]) == experiment_hash(config, EXPERIMENTS["e0"])
    measured = (work / "results/e0/measured.json").stat().st_mtime_ns
    overlay = tmp_path / "cv.yaml"
    overlay.write_text("experiments:\n  e0:\n    cv_threshold: 0.9\n")
    again = snakemake(work, "results/e0/summary.json", overlay=overlay)
    assert again.returncode == 0, again.stderr[-4000:]
    log = again.stderr + again.stdout
    assert "rule e0_analysis:" in log and "rule e0:" not in log
    assert (work / "results/e0/measured.json").stat().st_mtime_ns == measured
    assert json.loads((work / "results/e0/summary.json").read_text())["variability"]["cv_threshold"] == 0.9


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 3072,
        "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}))
    (model / "tokenizer.json").write_text("{}")
    return model
