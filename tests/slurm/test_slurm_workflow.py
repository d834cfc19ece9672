"""`snakemake --profile slurm` on a real single-node SLURM cluster with the real vLLM engine.

The embedded-default workflow (embedded model -> E0 -> packet) runs in a temp copy of the
checkout. Engine jobs must go through sbatch with a GPU (fake gres) in the partition and
account the environment names; light rules stay local; the artifacts must be complete.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.conftest import REPO, copy_checkout, snakemake_cmd

from .conftest import TIMINGS

pytestmark = pytest.mark.e2e

VENV_BIN = Path(sys.executable).parent
TARGETS = ("results/e0/summary.json", "reports/packet.html")
# Where the CI cluster (scripts/slurm-ci.sh) puts things: engine jobs in partition "gpu" with
# account "research" and GPU type "fake"; light jobs in the default partition "cpu".
PLACEMENT = {
    "CONTEXT_RESEARCH_SLURM_GPU_PARTITION": "gpu",
    "CONTEXT_RESEARCH_SLURM_ACCOUNT": "research",
    "CONTEXT_RESEARCH_SLURM_GPU_MODEL": "fake",
}
SACCT_FIELDS = ("JobID", "JobName", "Comment", "Partition", "Account", "State", "ExitCode",
                "AllocTRES", "ReqTRES")


def workflow_env(workdir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SBATCH_", "SLURM_", "CONTEXT_RESEARCH_SLURM_"))}
    # Jobs inherit the submitting environment (sbatch --export=ALL): the venv's bin first on
    # PATH; the copy's src first on PYTHONPATH, since the editable install points at the live
    # checkout that other people may be editing while the jobs run.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(workdir / "src")
    env.setdefault("CONTEXT_RESEARCH_CACHE", str(REPO / ".cache"))
    env.update(extra)
    return env


def snakemake_slurm(workdir: Path, env: dict[str, str], *args: str, timeout: int = 3600):
    # Only e0 in the packet, whatever report.experiments defaults to by now.
    return subprocess.run([*snakemake_cmd(), "--profile", "slurm", "--config", 'report={"experiments": ["e0"]}',
                           *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def test_profile_gives_engine_rules_a_gpu_and_placement_from_the_environment(tmp_path):
    """Dry run: no cluster needed, only the profile's resolution of resources."""
    workdir = copy_checkout(tmp_path / "checkout")
    env = workflow_env(workdir, {**PLACEMENT, "SBATCH_PARTITION": "all", "SBATCH_ACCOUNT": "fallback"})
    proc = snakemake_slurm(workdir, env, "-n", *TARGETS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    blocks = {m.group(1): m.group(2) for m in re.finditer(r"rule (\w+):\n(.*?)(?:\n\n|\Z)", out, re.S)}
    resources = {rule: dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", body).group(1).split(", "))
                 for rule, body in blocks.items()}
    e0 = resources["e0"]
    assert (e0["gpu"], e0["cpus_per_gpu"], e0["runtime"]) == ("1", "8", "240")
    assert (e0["slurm_partition"], e0["slurm_account"], e0["gpu_model"]) == ("gpu", "research", "fake")
    light = resources["embedded_model"]
    assert "gpu" not in light and light["runtime"] == "30" and light["mem_mb"] == "2000"
    # No CONTEXT_RESEARCH_SLURM_PARTITION: SBATCH_PARTITION is the light jobs' partition, even a
    # name that is a Python builtin; the explicit account wins over SBATCH_ACCOUNT.
    assert (light["slurm_partition"], light["slurm_account"]) == ("all", "research")


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    workdir = copy_checkout(tmp_path_factory.mktemp("slurm-workflow"))
    env = workflow_env(workdir, {**PLACEMENT, "SLURM_CONF": slurm_cluster["SLURM_CONF"]})
    # First status check after 5 s instead of 40 s; keep the job logs for failure messages.
    started = time.monotonic()
    proc = snakemake_slurm(workdir, env, "--slurm-init-seconds-before-status-checks", "5",
                           "--slurm-keep-successful-logs", *TARGETS)
    TIMINGS["workflow"] = time.monotonic() - started
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted([*(workdir / "logs").glob("*.log"),
                                          *(workdir / ".snakemake/slurm_logs").rglob("*.log")]))
        pytest.fail(f"snakemake --profile slurm failed ({proc.returncode}):\n{out[-6000:]}\n{logs}")
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    since = (dt.datetime.now() - dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
    sacct = subprocess.run(["sacct", "-X", "-P", "--noheader", "--starttime", since, "--name", run_id,
                            "--format", ",".join(SACCT_FIELDS)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert sacct.returncode == 0, sacct.stderr
    jobs = [dict(zip(SACCT_FIELDS, line.split("|"))) for line in sacct.stdout.splitlines() if line]
    return {"workdir": workdir, "jobs": jobs, "output": out, "run_id": run_id}


def jobs_of(run, rule):
    return [j for j in run["jobs"] if j["Comment"] == f"rule_{rule}"]


def test_engine_job_went_through_sbatch_with_a_gpu(slurm_run):
    (e0,) = jobs_of(slurm_run, "e0")
    assert e0["JobName"] == slurm_run["run_id"]
    assert (e0["State"], e0["ExitCode"]) == ("COMPLETED", "0:0")
    assert (e0["Partition"], e0["Account"]) == ("gpu", "research")
    for tres in ("ReqTRES", "AllocTRES"):
        assert "gres/gpu=1" in e0[tres].split(","), e0
        assert "gres/gpu:fake=1" in e0[tres].split(","), e0        # gpu_model -> --gpus=fake:1
    alloc = dict(kv.split("=", 1) for kv in e0["AllocTRES"].split(","))
    assert alloc["cpu"] == "8" and alloc["mem"] == "64G"            # cpus_per_gpu, mem_mb 65536


def test_light_jobs_have_no_gpu_and_plots_and_report_stay_local(slurm_run):
    (model,) = jobs_of(slurm_run, "embedded_model")
    assert (model["State"], model["ExitCode"], model["Partition"]) == ("COMPLETED", "0:0", "cpu")
    assert "gres/gpu" not in model["AllocTRES"] and model["Account"] == "research"
    submitted = {j["Comment"] for j in slurm_run["jobs"]}
    assert submitted == {"rule_embedded_model", "rule_e0"}, slurm_run["jobs"]
    for rule in ("e0_analysis", "e0_figures", "experiment_markdown", "packet"):
        assert f"rule {rule}:" in slurm_run["output"]                # ran, but on the submit host


def test_artifacts_are_real_and_complete(slurm_run):
    workdir = slurm_run["workdir"]
    s = json.loads((workdir / "results/e0/summary.json").read_text())
    assert s["backend_mode"] == "real" and s["weights"] == "random-embedded"
    assert s["strict_backend"]["strict"] and s["strict_backend"]["server_answered_version_endpoint"]
    det = s["determinism"]
    assert det["requests"] == det["ok"] == 8 and det["all_identical"] and det["compared"] == "token_ids"
    assert s["failed_requests"] == 0 and s["prompt_tokens_mismatch"] == []
    assert s["latency_engine"]["engine_ttft_count"] == 5 * 4
    meta = json.loads((workdir / "results/e0/run_metadata.json").read_text())
    assert meta["engine"]["startup_s"] > 0 and meta["config_hash"] and len(meta["config_hash"]) == 64
    html = (workdir / "reports/packet.html").read_text()
    assert 'id="e0"' in html and meta["run_id"] in html and "SIMULATED" not in html
    (e0_job,) = jobs_of(slurm_run, "e0")
    log = workdir / ".snakemake/slurm_logs/rule_e0" / f"{e0_job['JobID']}.log"
    assert "slurm-jobstep" in log.read_text()                         # the job ran inside SLURM
