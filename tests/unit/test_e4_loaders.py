"""E4 loaders and materialization, on the hand-written fixtures (no downloads)."""

import json
from pathlib import Path

import pytest

from context_research.datasets import loaders
from context_research.datasets import templates as T
from context_research.datasets.materialize import materialize_subset
from context_research.errors import ConfigError
from context_research.datasets.specs import Dataset
from context_research.hashing import sha256_file, sha256_obj
from context_research.io import read_json, read_jsonl
from context_research.quality import scorers

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "e4"


def ws_count(text: str) -> int:
    return len(text.split())


def lb(**kw):
    return {"local_dir": str(FIX / "longbench"), "use_hub": False, **kw}


def ib(**kw):
    return {"local_dir": str(FIX / "infinitebench"), "use_hub": False, **kw}


def pg(**kw):
    return {"local_dir": str(FIX / "pg19"), "use_hub": False, **kw}


@pytest.mark.parametrize("task,n,metric", [("qasper", 4, "qa_f1_score"), ("gov_report", 3, "rouge_score"),
                                           ("passage_count", 4, "count_score")])
def test_longbench_fixtures_load(task, n, metric):
    rows, src = loaders.load_records("longbench", task, lb())
    assert len(rows) == n
    assert src["kind"] == "local"
    assert src["sha256"] == sha256_file(FIX / "longbench" / f"{task}.jsonl")
    samples, _ = loaders.load_samples("longbench", task, lb(), ws_count)
    assert len(samples) == n
    for s in samples:
        assert s["benchmark"] == "longbench" and s["task"] == task
        assert s["metric"] == metric == T.LONGBENCH_TASKS[task].metric
        assert s["length"] == ws_count(s["input"]) and not s["truncated"]
        assert s["outputs"]


def test_longbench_prompt_contents():
    samples, _ = loaders.load_samples("longbench", "passage_count", lb(), ws_count)
    by_id = {s["id"]: s for s in samples}
    s = by_id["pc-fixture-001"]
    assert "Paragraph 1:" in s["input"] and s["outputs"] == ["3"]
    assert scorers.score("count_score", "3", s["outputs"]) == 1.0
    q = {s["id"]: s for s in loaders.load_samples("longbench", "qasper", lb(), ws_count)[0]}["qasper-fixture-001"]
    assert q["input"].index("Lanternfish") < q["input"].index("How many pages")


def test_seeded_subset_selection():
    a, _ = loaders.load_samples("longbench", "qasper", lb(count=2, seed=3), ws_count)
    b, _ = loaders.load_samples("longbench", "qasper", lb(count=2, seed=3), ws_count)
    assert a == b and len(a) == 2
    ids = sorted(f"qasper-fixture-00{i}" for i in range(1, 5))
    import random

    assert [s["id"] for s in a] == random.Random(3).sample(ids, 2)
    seen = {tuple(s["id"] for s in loaders.load_samples("longbench", "qasper", lb(count=2, seed=k), ws_count)[0])
            for k in range(6)}
    assert len(seen) > 1


def test_truncation_via_max_input_tokens():
    s = loaders.load_samples("longbench", "qasper", lb(max_input_tokens=40), ws_count)[0][0]
    assert s["truncated"] and s["length"] <= 40
    assert s["input"].startswith("You are given a scientific article") and s["input"].rstrip().endswith("Answer:")


def test_infinitebench_fixtures():
    pk, src = loaders.load_samples("infinitebench", "passkey", ib(), ws_count)
    assert src["kind"] == "local" and len(pk) == 3
    for s in pk:
        assert s["metric"] == "passkey" and s["outputs"][0] in s["input"]
        assert scorers.score("passkey", f"The pass key is {s['outputs'][0]}.", s["outputs"]) == 1.0
    ch, _ = loaders.load_samples("infinitebench", "longbook_choice_eng", ib(), ws_count)
    by_id = {s["id"]: s for s in ch}
    assert by_id["0"]["outputs"] == ["Yellow", "B"]
    assert "B. Yellow" in by_id["0"]["input"]
    assert scorers.score("longbook_choice_eng", "B", by_id["0"]["outputs"]) == 1.0


def test_pg19_scores_one_window_after_each_context_length():
    cfg = pg(window_tokens=100, context_lengths=[50, 400])
    books = {loaders.record_id("pg19", r, i): " ".join(r["text"].split())
             for i, r in enumerate(loaders.load_records("pg19", "pg19", pg())[0])}
    by_length = {}
    for ctx in (50, 400):
        samples, _ = loaders.load_samples("pg19", "pg19", {**cfg, "context_tokens": ctx}, ws_count)
        assert len(samples) == 2
        for s in samples:
            assert s["metric"] == "perplexity" and s["outputs"] == [] and s["context_tokens"] == ctx
            assert ws_count(s["input"]) == 100 and ws_count(s["context"]) == ctx  # one word = one token here
            book = books[s["id"]].split()
            # the window starts after the longest context; the context is what precedes it
            assert s["window"]["start_word"] == 400 and s["input"].split() == book[400:500]
            assert s["context"].split() == book[400 - ctx:400]
        by_length[ctx] = samples
    assert [s["input"] for s in by_length[50]] == [s["input"] for s in by_length[400]]  # the same scored text
    again, _ = loaders.load_samples("pg19", "pg19", {**cfg, "context_tokens": 50}, ws_count)
    assert again == by_length[50]


def test_pg19_skips_books_too_short_for_the_longest_context():
    samples, source = loaders.load_samples("pg19", "pg19", pg(window_tokens=100, context_lengths=[2500]), ws_count)
    assert [s["window"]["book_words"] for s in samples] == [3002]
    assert source["skipped_too_short"] and len(source["skipped_too_short"]) == 1
    with pytest.raises(ConfigError, match="context_lengths"):
        loaders.load_samples("pg19", "pg19", pg(window_tokens=100), ws_count)


def test_missing_data_raises_config_error_naming_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        loaders.load_records("longbench", "narrativeqa", {"local_dir": str(tmp_path / "nope"), "use_hub": False})
    msg = str(err.value)
    assert "experiments.e4.benchmarks.longbench.local_dir" in msg
    assert "THUDM/LongBench" in msg and "narrativeqa" in msg
    with pytest.raises(ConfigError) as err:
        loaders.load_records("infinitebench", "kv_retrieval", {"use_hub": False})
    assert "experiments.e4.benchmarks.infinitebench.local_dir" in str(err.value)
    assert "xinrongzhang2022/InfiniteBench" in str(err.value)


def test_hub_path_is_used_and_failures_become_config_errors(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fail(*args, **kw):
        calls.append((args, kw))
        raise FileNotFoundError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(ConfigError) as err:
        loaders.load_records("pg19", "pg19", {"local_dir": str(tmp_path)})
    assert calls[0][0] == ("deepmind/pg19",) and calls[0][1]["split"] == "test"
    assert "deepmind/pg19" in str(err.value) and "experiments.e4.benchmarks.pg19.local_dir" in str(err.value)

    rows = read_jsonl(FIX / "infinitebench" / "passkey.jsonl")

    def ok(*args, **kw):
        calls.append((args, kw))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", ok)
    got, src = loaders.load_records("infinitebench", "passkey", {"revision": "abc"})
    assert calls[-1] == (("xinrongzhang2022/InfiniteBench",), {"split": "passkey", "revision": "abc"})
    assert src["kind"] == "hub" and src["split"] == "passkey" and src["revision"] == "abc"
    assert [r["id"] for r in got] == [r["id"] for r in rows]


def test_bad_schema_and_unknown_template(tmp_path):
    (tmp_path / "qasper.jsonl").write_text(json.dumps({"context": "x"}) + "\n")
    with pytest.raises(ConfigError, match="lacks field"):
        loaders.load_records("longbench", "qasper", {"local_dir": str(tmp_path), "use_hub": False})
    with pytest.raises(ConfigError):
        loaders.longbench_sample("no_such_task", {"context": "", "input": "", "answers": [], "_id": "x"}, ws_count)


def _check_manifest(out, man_path, source_file=None):
    man = read_json(man_path)
    rows = read_jsonl(out)
    assert man["file"]["sha256"] == sha256_file(out)
    assert man["count"] == len(rows) == len(man["samples"])
    for row, entry in zip(rows, man["samples"]):
        assert entry["id"] == row["id"] and entry["length"] == row["length"]
        assert entry["sha256"] == sha256_obj(row)
    if source_file is not None:
        assert man["source"]["sha256"] == sha256_file(source_file)
    return man


@pytest.mark.parametrize("benchmark,task,cfg,source", [
    ("longbench", "qasper", lb(count=3, seed=1), FIX / "longbench" / "qasper.jsonl"),
    ("infinitebench", "longbook_choice_eng", ib(seed=2), FIX / "infinitebench" / "longbook_choice_eng.jsonl"),
    ("pg19", "pg19", pg(window_tokens=300, context_lengths=[100], seed=0), FIX / "pg19" / "pg19.jsonl"),
    ("ruler", "niah_multikey_2", {"context_tokens": 400, "count": 3, "seed": 5}, None),
])
def test_materialize_manifest_and_byte_identical(tmp_path, benchmark, task, cfg, source):
    outs = []
    for run in ("a", "b"):
        ds = Dataset(benchmark, task, task)
        out, man = ds.data_path(tmp_path / run / "results" / "data"), ds.manifest_path(tmp_path / run / "results" / "data")
        assert out.as_posix().endswith(f"results/data/{benchmark}/{task}.jsonl")
        returned = materialize_subset(benchmark, task, cfg, ws_count, out, man, tokenizer="whitespace")
        manifest = _check_manifest(out, man, source)
        assert returned == manifest
        assert manifest["seed"] == cfg.get("seed", 0) and manifest["tokenizer"] == "whitespace"
        outs.append((out.read_bytes(), man.read_bytes()))
    assert outs[0] == outs[1]
    if source is not None:
        assert manifest["source"]["path"] == str(source)


def test_materialize_accepts_e4_block_and_ruler_qa_needs_records(tmp_path):
    e4 = {"seed": 9, "benchmarks": {"longbench": lb(count=1)}}
    man = materialize_subset("longbench", "gov_report", e4, ws_count, tmp_path / "g.jsonl", tmp_path / "g.json")
    assert man["seed"] == 9 and man["count"] == 1
    with pytest.raises(ConfigError, match=r"`experiments\.e4\.ruler\.qa_records`"):  # beside benchmarks, not in it
        materialize_subset("ruler", "qa", {"context_tokens": 500}, ws_count, tmp_path / "q.jsonl", tmp_path / "q.json")
    with pytest.raises(ConfigError, match="context_tokens"):
        materialize_subset("ruler", "vt", {}, ws_count, tmp_path / "v.jsonl", tmp_path / "v.json")


def test_upstream_prompts_and_chat_flags():
    prompts = T.upstream_prompts()
    assert prompts["longbench"]["source"]["repo"] == "THUDM/LongBench"
    assert len(prompts["longbench"]["source"]["commit"]) == 40
    gov = T.LONGBENCH_TASKS["gov_report"]
    assert gov.template.startswith("You are given a report by a government agency.") and gov.max_new_tokens == 512
    # upstream keeps its typo; pred.py skips the chat template on these six tasks only
    assert "asconcisely" in T.LONGBENCH_TASKS["narrativeqa"].template
    assert {t for t, s in T.LONGBENCH_TASKS.items() if not s.chat_template} == {"trec", "triviaqa", "samsum", "lcc",
                                                                                "repobench-p"}
    assert T.LONGBENCH_TASKS["trec"].system_prompt is None
    ib_spec = T.INFINITEBENCH_TASKS["passkey"]
    assert ib_spec.chat_template and ib_spec.system_prompt == "You are a helpful assistant"
    assert ib_spec.truncation == "infinitebench" and ib_spec.max_new_tokens == 6
    s = loaders.longbench_sample("qasper", {"_id": "x", "context": "C {braces}", "input": "Q?", "answers": ["a"]},
                                 ws_count)
    assert "Article: C {braces}\n\n Answer the question" in s["input"] and s["chat_template"] is True


def test_infinitebench_prompts_fill_upstream_fields():
    rec = {"id": 1, "context": "book", "input": "Who?", "answer": ["Yellow"], "options": ["Green", "Yellow", "Red", "Blue"]}
    s = loaders.infinitebench_sample("longbook_choice_eng", rec, ws_count)
    assert s["input"].endswith("A. Green\nB. Yellow\nC. Red\nD. Blue") and "Question: Who?" in s["input"]
    assert s["outputs"] == ["Yellow", "B"] and s["system_prompt"] == "You are a helpful assistant"
    mf = loaders.infinitebench_sample("math_find", {"id": 2, "context": "1, 5, 3", "input": "The largest number of the list is:",
                                                    "answer": [5]}, ws_count)
    assert mf["input"].startswith("What is the largest number in the following list?\n\n1, 5, 3")
    assert mf["outputs"] == ["5"]


def test_manifest_records_the_prompt_template_source(tmp_path):
    from context_research.datasets.materialize import materialize_subset

    m = materialize_subset("longbench", "qasper", lb(count=1), ws_count, tmp_path / "q.jsonl", tmp_path / "q.json")
    assert m["prompt_template"]["repo"] == "THUDM/LongBench" and len(m["prompt_template"]["commit"]) == 40
    m = materialize_subset("infinitebench", "passkey", ib(count=1), ws_count, tmp_path / "p.jsonl", tmp_path / "p.json")
    assert m["prompt_template"]["repo"] == "OpenBMB/InfiniteBench"
