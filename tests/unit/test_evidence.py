"""Evidence folders: pack moves raw files into one deterministic archive, unpack gives back the same
bytes, verify finds every hash that does not match and every file the manifest leaves out."""

import os
import tarfile

import pytest

from context_research import evidence, provenance
from context_research.evidence import ARCHIVE, MANIFEST, EvidenceError, pack, unpack, verify

FILES = {
    "README.md": "# Run\n\nPer request: `results/e1/requests.csv`; the table `latency.csv`; "
                 "logs: `engine.log`.\n\n```text\ncat `results/e1/requests.csv`\n```\n",
    "results/e1/latency.csv": "experiment,ttft_ms\ne1,12.5\n",
    "results/e1/requests.csv": "request_id,ttft_s\n" + "".join(f"r{i},0.0{i % 10}\n" for i in range(200)),
    "results/e1/engine.log": "INFO engine started\n" * 50,
    "results/e1/summary.json": '{"passed": true}\n',
    "results/e1/ttft.svg": "<svg/>\n",
    "results/e2/timeline.svg": "<svg>" + "<path d='M 0 0'/>" * 5000 + "</svg>\n",  # over 64 KiB
    "results/e3/kv_ledger.jsonl": '{"event": "push"}\n' * 10,
    "reports/packet.html": "<html>packet</html>\n",
}
PACKED = {"results/e1/requests.csv", "results/e1/engine.log", "results/e2/timeline.svg",
          "results/e3/kv_ledger.jsonl", "reports/packet.html"}


def _make(root, name="2026-01-01-run", files=FILES, mtime=None):
    folder = root / "docs" / "evidence" / name
    for rel in (sorted(files) if mtime is None else sorted(files, reverse=True)):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[rel])
        if mtime is not None:
            os.utime(path, (mtime, mtime))
    return folder


def _tree(folder):
    return {rel: (folder / rel).read_bytes() for rel in evidence.tree_files(folder)}


def test_the_rule_packs_raw_kinds_and_large_files_and_keeps_summaries():
    rule = evidence.packed_by_rule
    assert rule("results/e2/requests.csv", 10) and rule("results/e3/kv_ledger.jsonl", 10)
    assert rule("logs/e0.log", 0) and rule("e3-nixl.out", 10) and rule("reports/packet.html", 10)
    assert rule("results/e2/timeline.svg", evidence.FIGURE_MAX_BYTES + 1)
    assert rule("results/e2/concurrency.csv", evidence.KEPT_MAX_BYTES + 1)
    for rel in ("results/e2/concurrency.csv", "results/e0/summary.json", "results/e1/run_metadata.json",
                "reports/e1.md", "compare.csv"):
        assert rule(rel, 30_000) is None, rel
    assert rule("results/e1/ttft.svg", evidence.FIGURE_MAX_BYTES) is None
    assert rule("README.md", 10**7) is None and rule(ARCHIVE, 10**7) is None


def test_pack_unpack_round_trip_gives_back_every_byte(tmp_path):
    folder = _make(tmp_path)
    moved = pack(folder)
    assert set(moved) == PACKED
    assert not any((folder / rel).exists() for rel in PACKED)
    assert set(evidence.tree_files(folder)) == set(FILES) - PACKED | {ARCHIVE}
    assert set(evidence.read_archive(folder)) == PACKED
    manifest = evidence.read_manifest(folder)
    assert set(manifest) == set(FILES) | {ARCHIVE}
    assert {rel for rel, e in manifest.items() if e.where == ARCHIVE} == PACKED
    assert (folder / ".gitignore").read_text().splitlines()[2:] == sorted("/" + rel for rel in PACKED)
    assert verify(folder) == []

    assert set(unpack(folder)) == PACKED
    restored = _tree(folder)
    for rel in set(FILES) - {"README.md"}:
        assert restored[rel] == FILES[rel].encode(), rel
    assert verify(folder) == [], "unpacked copies that match are fine"
    assert unpack(folder) == [], "a second unpack writes nothing"


def test_the_archive_depends_only_on_names_and_contents(tmp_path):
    first = _make(tmp_path / "a", mtime=1_000_000)
    second = _make(tmp_path / "b", mtime=2_000_000_000)  # other mtimes, files written in reverse order
    pack(first)
    pack(second)
    data = (first / ARCHIVE).read_bytes()
    assert data == (second / ARCHIVE).read_bytes()
    assert (first / MANIFEST).read_text() == (second / MANIFEST).read_text()
    unpack(first)
    pack(first)  # repacking the unpacked files
    assert (first / ARCHIVE).read_bytes() == data
    with tarfile.open(first / ARCHIVE) as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar.getmembers()} == \
               {(0, 0, 0, "root", "root", 0o644)}
    assert evidence.archive_bytes({"b": b"2", "a": b"1"}) == evidence.archive_bytes({"a": b"1", "b": b"2"})
    changed = dict(FILES, **{"results/e1/engine.log": "INFO engine started\n" * 51})
    third = _make(tmp_path / "c", files=changed)
    pack(third)
    assert (third / ARCHIVE).read_bytes() != data, "another file gives another archive"


def test_pack_adds_new_raw_files_to_the_archive_and_keeps_the_old_ones(tmp_path):
    folder = _make(tmp_path)
    pack(folder)
    new = folder / "after" / "results" / "e2" / "requests.csv"
    new.parent.mkdir(parents=True)
    new.write_text("request_id\nx\n")
    assert any("after/results/e2/requests.csv: not in MANIFEST" in p for p in verify(folder))
    assert pack(folder) == ["after/results/e2/requests.csv"]
    assert set(evidence.read_archive(folder)) == PACKED | {"after/results/e2/requests.csv"}
    assert not (folder / "after").exists(), "emptied folders go too"
    assert verify(folder) == []


def test_verify_names_each_file_that_does_not_match(tmp_path):
    folder = _make(tmp_path)
    pack(folder)
    (folder / "results/e1/latency.csv").write_text("experiment,ttft_ms\ne1,99.9\n")
    members = evidence.read_archive(folder)
    members["results/e1/requests.csv"] = b"request_id,ttft_s\nr0,0.99\n"
    (folder / ARCHIVE).write_bytes(evidence.archive_bytes(members))
    (folder / "notes.txt").write_text("new\n")
    problems = "\n".join(verify(folder))
    assert "results/e1/latency.csv: does not match its sha256" in problems
    assert "results/e1/requests.csv: its copy in raw.tar.xz does not match its sha256" in problems
    assert f"{ARCHIVE}: does not match its sha256" in problems
    assert "notes.txt: not in MANIFEST.sha256" in problems
    assert len(verify(folder)) == 4
    with pytest.raises(EvidenceError, match="results/e1/requests.csv does not match MANIFEST"):
        unpack(folder)


def test_verify_finds_an_unpacked_copy_changed_and_a_raw_file_kept_in_the_tree(tmp_path):
    folder = _make(tmp_path)
    pack(folder)
    unpack(folder)
    (folder / "results/e1/engine.log").write_text("edited\n")
    assert [p.split(": ", 1)[1] for p in verify(folder)] == [
        "results/e1/engine.log: the unpacked copy does not match its sha256"]
    with pytest.raises(EvidenceError, match="differs from its copy in raw.tar.xz"):
        pack(folder)
    with pytest.raises(EvidenceError, match="exists and differs"):
        unpack(folder)
    # A manifest that says a raw file stays in the tree (written by hand, or before the rule).
    other = _make(tmp_path / "x")
    pack(other)
    (other / "late.log").write_text("x\n")
    manifest = (other / MANIFEST).read_text()
    line = f"{evidence.sha256_bytes(b'x' + bytes([10]))}  tree  late.log\n"
    (other / MANIFEST).write_text(manifest + line)
    assert [p.split(": ", 1)[1] for p in verify(other)] == ["late.log: a log, belongs in raw.tar.xz (run pack)"]


def test_unpack_refuses_a_member_outside_the_folder(tmp_path):
    folder = _make(tmp_path)
    (folder / ARCHIVE).write_bytes(evidence.archive_bytes({"../escape.csv": b"x\n"}))
    with pytest.raises(EvidenceError, match="not a plain relative path"):
        evidence.read_archive(folder)
    (folder / ARCHIVE).write_bytes(b"not an archive")
    with pytest.raises(EvidenceError, match="not a readable tar.xz"):
        evidence.read_archive(folder)
    assert not (tmp_path / "docs" / "evidence" / "escape.csv").exists()


def test_pack_marks_the_readme_once_and_leaves_code_blocks_alone(tmp_path):
    folder = _make(tmp_path)
    pack(folder)
    text = (folder / "README.md").read_text()
    assert "`results/e1/requests.csv` (in `raw.tar.xz`);" in text
    assert "`engine.log` (in `raw.tar.xz`)." in text
    assert "`latency.csv`;" in text, "a file in the tree is not marked"
    assert "\ncat `results/e1/requests.csv`\n```" in text
    assert evidence.mark(folder / "README.md", evidence_root=folder.parent) == [], "marking twice changes nothing"
    # verify reports a README mention that does not say where the file is
    (folder / "README.md").write_text(text + "\nSee `kv_ledger.jsonl`.\n")
    evidence.mark_readme(folder)
    assert verify(folder) == []
    assert "`kv_ledger.jsonl` (in `raw.tar.xz`)" in (folder / "README.md").read_text()


def test_mark_rewrites_links_from_outside_the_evidence_folders(tmp_path):
    folder = _make(tmp_path)
    pack(folder)
    doc = tmp_path / "README.md"
    doc.write_text("The [`packet.html`](docs/evidence/2026-01-01-run/reports/packet.html), "
                   "![ttft](docs/evidence/2026-01-01-run/results/e1/ttft.svg), "
                   "`docs/evidence/2026-01-01-run/results/e1/requests.csv`, [web](https://x.org/a.log).\n")
    root = tmp_path / "docs" / "evidence"
    assert len(evidence.mark(doc, write=False, evidence_root=root)) == 2
    evidence.mark(doc, evidence_root=root)
    assert doc.read_text() == (
        "The `packet.html` (in [`raw.tar.xz`](docs/evidence/2026-01-01-run/raw.tar.xz)), "
        "![ttft](docs/evidence/2026-01-01-run/results/e1/ttft.svg), "
        "`docs/evidence/2026-01-01-run/results/e1/requests.csv` (in `docs/evidence/2026-01-01-run/raw.tar.xz`), "
        "[web](https://x.org/a.log).\n")


def test_a_folder_without_raw_files_gets_a_manifest_and_no_archive(tmp_path):
    folder = _make(tmp_path, files={"README.md": "# x\n", "summary.json": "{}\n"})
    assert pack(folder) == []
    assert not (folder / ARCHIVE).exists() and not (folder / ".gitignore").exists()
    assert set(evidence.read_manifest(folder)) == {"README.md", "summary.json"}
    assert verify(folder) == []


def test_the_command_line_exits_non_zero_on_a_problem(tmp_path, capsys):
    folder = _make(tmp_path)
    assert evidence.main(["pack", str(folder)]) == 0
    assert evidence.main(["verify", str(folder)]) == 0
    (folder / "results/e1/summary.json").write_text("{}\n")
    assert evidence.main(["verify", str(folder)]) == 1
    assert "summary.json: does not match its sha256" in capsys.readouterr().out
    (folder / MANIFEST).unlink()
    assert evidence.main(["unpack", str(folder)]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_the_tool_is_in_no_run_digest():
    from context_research.experiments.catalog import EXPERIMENTS

    for exp in EXPERIMENTS.values():
        assert "evidence.py" not in provenance.code_files(exp, reports=True)
    # the comparison reads result folders through it (find_run refuses packed records)
    assert "evidence.py" in provenance.comparison_files(EXPERIMENTS)


def test_a_comparison_refuses_a_results_folder_whose_records_are_packed(tmp_path):
    from context_research.analysis.compare_io import find_run
    from context_research.errors import ContextResearchError

    folder = _make(tmp_path, files=dict(FILES, **{"results/e1/run_metadata.json": '{"experiment": "e1"}\n'}))
    pack(folder)
    with pytest.raises(ContextResearchError, match=r"A: 4 file\(s\) under .*results \(e1/engine.log, ...\) are packed"
                                                  r" in .*raw.tar.xz: python -m context_research.evidence unpack"):
        find_run(folder / "results", "A")
    assert evidence.packed_under(folder / "results" / "e1")[1] == ["engine.log", "requests.csv"]
    assert evidence.packed_under(tmp_path) is None
    unpack(folder)
    assert set(find_run(folder / "results", "A").experiments) == {"e1"}
    assert set(find_run(folder / "results" / "e1", "A").experiments) == {"e1"}
