import json

import pytest

from context_research import io
from context_research.hashing import canonical_json, sha256_file, sha256_obj


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_canonical_hash_ignores_key_order(tmp_path):
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert sha256_obj({"b": 1, "a": 2}) == sha256_obj({"a": 2, "b": 1})
    assert sha256_obj({"a": 1}) != sha256_obj({"a": 1.5})
    f = tmp_path / "x.txt"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_figures_are_byte_stable(tmp_path):
    import pandas as pd

    from context_research.analysis.plots import line_plot

    frame = pd.DataFrame({"x": [1, 2, 3], "y": [3, 1, 2]})
    paths = [line_plot(frame, "x", ["y"], tmp_path / f"f{i}.svg", "t", "x", "y", provenance="p") or
             tmp_path / f"f{i}.svg" for i in range(2)]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert b"<svg" in paths[0].read_bytes()


def test_a_generated_text_with_a_bare_carriage_return_reads_back_as_one_row(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"request_id": ["a", "b", "c"], "ttft_s": [0.5, None, 0.25], "n": [1, 2, 3],
                          "text": ["one\rtwo", "plain, with a comma", ""]})
    frame.to_csv(tmp_path / "plain.csv", index=False)  # pandas' default: the row splits at the \r
    assert len(pd.read_csv(tmp_path / "plain.csv")) != 3
    io.write_csv(tmp_path / "t.csv", frame)
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["text"].tolist()[:2] == ["one\rtwo", "plain, with a comma"] and pd.isna(back["text"][2])
    assert back["ttft_s"].tolist()[0] == 0.5 and pd.isna(back["ttft_s"][1]) and back["n"].tolist() == [1, 2, 3]
    io.write_csv(tmp_path / "u.csv", frame.drop(columns="text"))  # no \r: minimal quoting, as before
    assert (tmp_path / "u.csv").read_text().splitlines()[0] == "request_id,ttft_s,n"
