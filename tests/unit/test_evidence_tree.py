"""The tracked tree stays small (every call of the lent GPU machine carries it inside 64 MiB, beside
56 MiB of staging), and every evidence folder is packed, hashed and traceable."""

import subprocess
from pathlib import Path

import pytest

from context_research import evidence

REPO = Path(__file__).resolve().parents[2]
EVIDENCE = REPO / "docs" / "evidence"
MAX_TRACKED_BYTES = 8 * 1024 * 1024
FOLDERS = sorted(p for p in EVIDENCE.iterdir() if p.is_dir())


def _tracked() -> dict[str, int]:
    """Size of every file ``git ls-files`` lists (one deleted in the work tree left out)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked tree to measure")
    paths = [p for p in out.decode().split("\0") if p]
    return {p: (REPO / p).stat().st_size for p in paths if (REPO / p).is_file()}


def test_the_tracked_tree_is_under_8_mib():
    sizes = _tracked()
    total = sum(sizes.values())
    biggest = ", ".join(f"{p} ({s / 1024:.0f} KiB)" for p, s in sorted(sizes.items(), key=lambda t: -t[1])[:5])
    assert total <= MAX_TRACKED_BYTES, (
        f"the tracked tree is {total / 2**20:.2f} MiB, over {MAX_TRACKED_BYTES / 2**20:.0f} MiB; biggest: {biggest}. "
        "Pack evidence with: python -m context_research.evidence pack docs/evidence/<run>")


def test_no_evidence_folder_keeps_a_raw_file_in_the_tree():
    offenders = []
    for path, size in _tracked().items():
        parts = path.split("/")
        if parts[:2] != ["docs", "evidence"] or len(parts) < 4:
            continue
        why = evidence.packed_by_rule("/".join(parts[3:]), size)
        if why:
            offenders.append(f"{path}: {why}")
    assert offenders == [], "raw files tracked outside raw.tar.xz (run pack):\n" + "\n".join(offenders)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_evidence_folder_verifies(folder):
    assert evidence.verify(folder) == []


def test_markdown_outside_the_evidence_folders_says_where_packed_files_live():
    notes = [f"{path}: {note}" for path in _tracked() if path.endswith(".md") and not path.startswith("docs/evidence/")
             for note in evidence.mark(REPO / path, write=False, evidence_root=EVIDENCE)]
    assert notes == [], "run: python -m context_research.evidence mark FILE\n" + "\n".join(notes)
