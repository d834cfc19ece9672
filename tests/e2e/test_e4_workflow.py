"""E4 long-context quality, end to end on the real engine (the shared workflow run)."""

import json
import math

import pandas as pd
import pytest

from context_research.config import load_config
from context_research.datasets import specs
from context_research.experiments.catalog import EXPERIMENTS
from context_research.hashing import sha256_file, sha256_obj
from context_research.quality.scorers import score_sample

from .conftest import copy_checkout, run_snakemake

pytestmark = pytest.mark.e2e


def _config(workflow_dir):
    return load_config(workflow_dir / "config" / "config.yaml", experiments=EXPERIMENTS)


def _datasets(workflow_dir):
    return specs.datasets(_config(workflow_dir)["experiments"]["e4"])


def _quality(workflow_dir):
    return pd.read_csv(workflow_dir / "results/e4/quality.csv")


def _predictions(workflow_dir):
    lines = (workflow_dir / "results/e4/predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_data_manifests_match_their_files(workflow_dir):
    dss = _datasets(workflow_dir)
    assert dss, "no E4 datasets configured"
    for ds in dss:
        data, man = workflow_dir / ds.data_path(), workflow_dir / ds.manifest_path()
        manifest = json.loads(man.read_text())
        rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        assert manifest["file"]["sha256"] == sha256_file(data)
        assert manifest["count"] == len(rows) == len(manifest["samples"]) > 0
        assert manifest["tokenizer"] == "resources/models/embedded-qwen3"
        for row, entry in zip(rows, manifest["samples"]):
            assert entry["id"] == row["id"] and entry["length"] == row["length"]
            assert entry["sha256"] == sha256_obj(row)
        if ds.benchmark == "ruler":
            assert manifest["source"]["kind"] == "synthetic"
            assert all(r["length"] <= ds.context_tokens for r in rows)
        else:
            assert manifest["source"]["kind"] == "local"
            assert manifest["source"]["sha256"] == sha256_file(workflow_dir / manifest["source"]["path"])


def test_quality_csv_has_every_task_and_counts_match_the_manifests(workflow_dir):
    frame = _quality(workflow_dir)
    dss = _datasets(workflow_dir)
    tasks = frame[frame["benchmark"] != "overall"]
    assert len(tasks) == len(dss)
    for ds in dss:
        row = tasks[(tasks["benchmark"] == ds.benchmark) & (tasks["dataset"] == ds.name)]
        assert len(row) == 1, ds.key
        row = row.iloc[0]
        manifest = json.loads((workflow_dir / ds.manifest_path()).read_text())
        assert row["n"] == manifest["count"] and row["task"] == ds.task
        assert row["status"] == "ok" and row["n_ok"] == row["n"], row["reason"]
        if ds.context_tokens is not None:
            assert row["context_tokens"] == ds.context_tokens
    for bench in ("ruler", "longbench", "infinitebench", "pg19"):
        assert bench in set(tasks["benchmark"])
    overall = frame[frame["benchmark"] == "overall"]
    assert len(overall) == 1
    overall = overall.iloc[0]
    assert overall["n"] == tasks["n"].sum() and overall["truncated"] == tasks["truncated"].sum()
    percent = tasks[tasks["score_scale"] == "percent"]
    assert overall["score"] == pytest.approx(percent["score"].mean())


def test_scores_are_in_range_and_not_claimed_as_quality(workflow_dir):
    frame = _quality(workflow_dir)
    assert (frame["meaningful"] == False).all()  # noqa: E712  (random-embedded weights)
    assert (frame["weights"] == "random-embedded").all() and (frame["backend_mode"] == "real").all()
    percent = frame[frame["score_scale"] == "percent"]
    assert percent["score"].between(0, 100).all()
    pg19 = frame[frame["benchmark"] == "pg19"]
    cfg_pg19 = _config(workflow_dir)["experiments"]["e4"]["benchmarks"]["pg19"]
    assert sorted(pg19["context_tokens"]) == sorted(cfg_pg19["context_lengths"])  # one row per context length
    assert (pg19["metric"] == "perplexity").all()
    for _, row in pg19.iterrows():
        assert math.isfinite(row["score"]) and row["score"] > 1
        assert row["bits_per_token"] == pytest.approx(math.log2(row["score"]))
    assert set(frame.loc[frame["benchmark"] == "ruler", "metric"]) <= {"string_match_all", "string_match_part"}
    summary = json.loads((workflow_dir / "results/e4/summary.json").read_text())
    assert summary["meaningful"] is False and "random-embedded" in summary["meaningful_reason"]


def test_predictions_match_rows_and_are_rescorable(workflow_dir):
    frame = _quality(workflow_dir)
    preds = _predictions(workflow_dir)
    tasks = frame[frame["benchmark"] != "overall"]
    assert len(preds) == tasks["n"].sum()
    by_ds = pd.DataFrame(preds).groupby(["benchmark", "dataset"]).size()
    for _, row in tasks.iterrows():
        assert by_ds[(row["benchmark"], row["dataset"])] == row["n"]
        sub = [p for p in preds if p["benchmark"] == row["benchmark"] and p["dataset"] == row["dataset"]]
        assert sum(bool(p["truncated"]) for p in sub) == row["truncated"]
    cfg = _config(workflow_dir)
    max_len = cfg["models"]["embedded"]["max_model_len"]
    samples = {}
    for ds in _datasets(workflow_dir):
        for line in (workflow_dir / ds.data_path()).read_text().splitlines():
            s = json.loads(line)
            samples[(ds.key, s["id"])] = s
    for p in preds:
        assert p["status"] == "ok" and p["run_id"] and p["weights"] == "random-embedded"
        sample = samples[(f"{p['benchmark']}/{p['dataset']}", p["id"])]
        assert p["references"] == sample["outputs"]
        assert 0 < p["input_tokens"] <= max_len - p["max_new_tokens"]
        if p["metric"] == "perplexity":
            assert p["prediction"] is None and p["score"] > 1 and p["scored_tokens"] == sample["window_tokens"]
            assert p["input_tokens"] == sample["context_tokens"] + sample["window_tokens"]
            continue
        # the served answer, scored again here, gives the recorded score
        assert isinstance(p["prediction"], str)
        assert score_sample(sample, p["prediction"])[0] == pytest.approx(p["score"])
        assert 0 <= p["output_tokens"] <= p["max_new_tokens"]
        assert p["input_tokens"] == p["input_tokens_local"]  # our tokenizer + template == the server's


def test_run_metadata_hashes_the_dataset_manifests(workflow_dir):
    meta = json.loads((workflow_dir / "results/e4/run_metadata.json").read_text())
    summary = json.loads((workflow_dir / "results/e4/summary.json").read_text())
    dss = _datasets(workflow_dir)
    digest = specs.combined_manifest_sha256({ds.key: workflow_dir / ds.manifest_path() for ds in dss})
    assert meta["hash_inputs"]["dataset_manifest_sha256"] == digest == summary["dataset_manifest_sha256"]
    assert meta["config_hash"] == summary["config_hash"] and meta["run_id"] == summary["run_id"]
    assert "--no-enable-prefix-caching" in meta["engine"]["command"]


def test_quality_by_length_and_beside_speed(workflow_dir):
    by_length = pd.read_csv(workflow_dir / "results/e4/quality_by_length.csv")
    assert not by_length["meaningful"].any()  # random-embedded weights
    cfg = _config(workflow_dir)["experiments"]["e4"]
    ruler = by_length[by_length["benchmark"] == "ruler"]
    assert set(ruler["length_bucket"]) == set(cfg["ruler"]["context_lengths"])
    pooled = by_length[by_length["benchmark"] == "all"]
    assert pooled["score"].between(0, 100).all() and len(pooled)
    preds = _predictions(workflow_dir)
    assert all(p["length_bucket"] is not None for p in preds)
    svg = (workflow_dir / "results/e4/beside_speed.svg").read_text()
    assert "<svg" in svg and "NOT a quality measurement" in svg
    assert ("E1 run" in svg) == (workflow_dir / "results/e1/latency.csv").is_file()


def test_figures_and_packet_section(workflow_dir):
    for name in ("quality.svg", "ruler.svg"):
        svg = (workflow_dir / "results/e4" / name).read_text()
        assert "<svg" in svg and "NOT a quality measurement" in svg and "random-embedded" in svg
    assert "overall" in (workflow_dir / "results/e4/quality.html").read_text()
    md = (workflow_dir / "reports/e4.md").read_text()
    meta = json.loads((workflow_dir / "results/e4/run_metadata.json").read_text())
    assert meta["run_id"] in md and "NOT a quality measurement" in md


def test_missing_benchmark_data_is_one_clear_error(tmp_path):
    fresh = copy_checkout(tmp_path / "fresh")
    override = 'experiments={"e4": {"benchmarks": {"longbench": {"local_dir": "nowhere"}}}}'
    proc = run_snakemake(fresh, "results/data/longbench/qasper.jsonl", "--config", override)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("context-research: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "experiments.e4.benchmarks.longbench.local_dir" in errors[0] and "THUDM/LongBench" in errors[0]
    assert "Traceback" not in proc.stderr
