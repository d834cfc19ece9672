"""A real single-node SLURM cluster (scripts/slurm-ci.sh) for the session, stopped at the end.

Outside CI the tests skip when they cannot run here: not root, or the SLURM packages cannot
be installed. With CI=true they never skip: a missing prerequisite is a failure.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM_CI = REPO / "scripts" / "slurm-ci.sh"
PACKAGES_UNAVAILABLE = 3  # slurm-ci.sh's exit status when it cannot install SLURM
# Wall times shown in the terminal summary (bring-up, workflow run): informational, never asserted.
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("slurm wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI is set, so the SLURM test must run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(request) -> dict:
    """Bring the cluster up (idempotent); yields SLURM_CONF and the state folder."""
    if os.geteuid() != 0:
        skip_or_fail("the SLURM test starts munge, MariaDB and the SLURM daemons and needs root")
    state = Path(os.environ.get("SLURM_CI_DIR") or Path(tempfile.gettempdir()) / "context-research-slurm-test")
    started = time.monotonic()
    proc = subprocess.run([str(SLURM_CI), "up", str(state)], capture_output=True, text=True, timeout=900)
    TIMINGS["bring-up"] = time.monotonic() - started
    if proc.returncode == PACKAGES_UNAVAILABLE:
        skip_or_fail(f"SLURM packages are not installed and cannot be installed:\n{proc.stderr[-2000:]}")
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted((state / "log").glob("*.log")))
        pytest.fail(f"slurm-ci.sh up failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{logs}")
    try:
        yield {"SLURM_CONF": str(state / "etc" / "slurm.conf"), "state_dir": state}
    finally:
        # Stops exactly the daemons this cluster recorded (PID files under the state dir); the
        # state (logs, database) stays for a look when something failed.
        action = "down" if request.session.testsfailed else "purge"
        subprocess.run([str(SLURM_CI), action, str(state)], capture_output=True, text=True, timeout=300)
