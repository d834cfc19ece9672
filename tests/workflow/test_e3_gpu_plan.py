"""The GPU evidence plan of E3 (issue 27; docs/e3-transfer.md), dry-run here as the GPU host runs
it: the repository's own overlays, the documented targets, and nothing else scheduled. No engine
starts and no stub is needed: ``snakemake -n`` only builds the DAG."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_rerun_triggers import VENV_BIN, copy_workflow, jobs

CONFIGS = ["config/config.yaml", "config/qwen3-8b.yaml", "config/e3-kv-paths.yaml"]
CALLS = {  # the documented calls: targets -> the engine rule and its way names
    "get-zcopy": (["results/variants/get-zcopy/e3/transfer.svg"], "variant_e3", "variant_e3_figures"),
    "push": (["results/variants/push/e3/transfer.svg"], "variant_e3", "variant_e3_figures"),
    "shipped": (["reports/e3.md", "results/e3/transfer.svg"], "e3", "e3_figures"),
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("gpu-plan"))


def dry_run(work: Path, targets: list[str], *overlays: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(work / "src")
    exe = VENV_BIN / "snakemake"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]
    return subprocess.run([*cmd, "--cores", "1", "-n", "-p", *targets, "--configfile", *CONFIGS, *overlays],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)


def run_configs(proc: subprocess.CompletedProcess) -> list[dict]:
    """The --config-json of every engine run the dry run would start."""
    return [json.loads(m.group(1).replace("'\\''", "'"))
            for m in re.finditer(r"--config-json '(\{.*?\})'", proc.stdout)]


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("two_gpus", [False, True])
def test_each_call_schedules_one_e3_run_of_its_ways(work, call, two_gpus):
    targets, engine_rule, figures_rule = CALLS[call]
    proc = dry_run(work, targets, *(["config/e3-two-gpus.yaml"] if two_gpus else []))
    scheduled = jobs(proc)
    scheduled.pop("dummy_model", None)   # the shape-only model folder, unless Qwen3-8B is in the HF cache
    expected = {engine_rule: 1, figures_rule: 1}
    if "reports/e3.md" in targets:
        expected["experiment_markdown"] = 1
    assert scheduled == expected
    (cfg,) = run_configs(proc)
    e3 = cfg["experiments"]["e3"]
    names = [w["name"] for w in e3["kv_paths"]]
    assert names == {"get-zcopy": ["nixl-pull-get-zcopy"], "push": ["nixl-push"],
                     "shipped": ["example", "nixl-pull"]}[call]
    assert cfg["model_profile"] == "qwen3-8b" and e3["prompt_tokens"] == [4096, 16384]
    assert (e3["prefill_visible_devices"], e3["decode_visible_devices"]) == (("0", "1") if two_gpus else (None, None))
