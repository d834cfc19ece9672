"""Artifacts get the permissions of a file opened normally, not a temp file's 0600."""

import os
import stat

import pandas as pd
import pytest

from context_research import io


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_ordinary_permissions(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        written = [io.write_text(tmp_path / "packet.html", "<html></html>\n"),
                   io.write_json(tmp_path / "summary.json", {"a": 1}),
                   io.write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}]),
                   io.write_csv(tmp_path / "table.csv", pd.DataFrame({"a": [1]}))]
        with io.atomic_path(tmp_path / "model.safetensors") as tmp:
            tmp.write_bytes(b"\0")
        written.append(tmp_path / "model.safetensors")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    assert _mode(plain) == expected
    assert {p.name: _mode(p) for p in written} == {p.name: expected for p in written}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_overwriting_keeps_the_file_whole_and_ordinary(tmp_path):
    previous = os.umask(0o022)
    try:
        target = io.write_json(tmp_path / "summary.json", {"run": 1})
        os.chmod(target, 0o600)  # e.g. written by an older version
        io.write_json(target, {"run": 2})
    finally:
        os.umask(previous)
    assert io.read_json(target) == {"run": 2} and _mode(target) == 0o644
