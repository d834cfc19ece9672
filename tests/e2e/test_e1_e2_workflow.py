"""E1 (prompt-length sweep) and E2 (concurrency / rate sweep with goodput), end to end on the real engine."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from context_research.analysis.capacity import BUDGET, CONVERGED, INVALID_TWICE, NONE_PASSED, STOP_REASONS
from context_research.analysis.latency import poisson_schedule
from context_research.config import load_config
from context_research.experiments import e2
from context_research.experiments.catalog import EXPERIMENTS

from .conftest import copy_checkout, run_snakemake, texts

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def config(workflow_dir):
    return load_config(workflow_dir / "config/config.yaml",
                       schema_path=workflow_dir / "workflow/schemas/config.schema.yaml", experiments=EXPERIMENTS)


def _ordered(frame, metric):
    """Per row: the stated percentiles are positive and ordered, each inside its 95% CI where it has
    one; one left empty (or stated without a CI) is so because the point had too few requests, and
    the row's stats_note says so."""
    for _, row in frame.iterrows():
        stated = [row[f"{metric}_ms_p{q}"] for q in (50, 95, 99) if pd.notna(row[f"{metric}_ms_p{q}"])]
        if stated and (stated[0] <= 0 or stated != sorted(stated)):
            return False
        for q in (50, 95, 99):
            col = f"{metric}_ms_p{q}"
            has_ci = pd.notna(row[f"{col}_ci_low"])
            if pd.notna(row[col]) and has_ci and not row[f"{col}_ci_low"] <= row[col] <= row[f"{col}_ci_high"]:
                return False
            if pd.notna(row[col]) and not has_ci and f"p{q} (" not in str(row["stats_note"]):
                return False
            if pd.isna(row[col]) and f"{metric} " not in str(row["stats_note"]):
                return False
    return True


def test_e1_latency_csv_has_one_exact_row_per_length(workflow_dir, config):
    cfg = config["experiments"]["e1"]
    frame = pd.read_csv(workflow_dir / "results/e1/latency.csv")
    assert list(frame["prompt_tokens"]) == cfg["prompt_tokens"]
    fits = [n + cfg["max_tokens"] <= config["models"][config["model_profile"]]["max_model_len"]
            for n in cfg["prompt_tokens"]]
    ok = frame[fits]
    # ok, or implausible only for the client's findings (a stream this 2-core host delivered late or
    # bunched; the engine's own timings stand): never for anything else
    delivered_late = (ok["status"] == "implausible") & ok["engine_timings_stand"].astype(bool)
    assert ((ok["status"] == "ok") | delivered_late).all(), ok["reason"].tolist()
    assert (frame.loc[[not f for f in fits], "status"] == "failed").all()
    assert (ok["n"] == cfg["trials"]).all() and (ok["n_ok"] == cfg["trials"]).all()
    for metric in ("ttft", "tpot", "e2e"):
        assert _ordered(ok, metric), metric
    # Every request's server-counted prompt length is exactly the target; no prefix-cache hit.
    assert (ok["prompt_tokens_min"] == ok["prompt_tokens"]).all()
    assert (ok["prompt_tokens_max"] == ok["prompt_tokens"]).all()
    assert (ok["prompt_tokens_mismatches"] == 0).all()
    assert (ok["local_cache_hit_tokens"] == 0).all()
    assert (ok["prefix_caching"] == config["serving"]["enable_prefix_caching"]).all()
    # The engine's /metrics window around each point saw exactly that point's measured requests.
    assert (ok["engine_requests"] == cfg["trials"]).all()
    assert (ok["engine_ttft_ms_mean"] > 0).all()
    gap = ok["ttft_ms_mean"] - ok["engine_ttft_ms_mean"]
    assert ok["ttft_client_minus_engine_ms"].to_numpy() == pytest.approx(gap.to_numpy())
    assert (frame["backend_mode"] == "real").all() and (frame["weights"] == "random-embedded").all()
    meta = json.loads((workflow_dir / "results/e1/run_metadata.json").read_text())
    assert frame["run_id"].nunique() == 1 and frame["run_id"].iloc[0] == meta["run_id"]
    if meta["engine"]["device"] == "cpu":
        assert ok["ttft_floor_ms"].isna().all() and texts(ok["floor_note"]).str.contains("not on a GPU").all()


def test_e1_requests_csv_matches_the_workload(workflow_dir, config):
    cfg = config["experiments"]["e1"]
    req = pd.read_csv(workflow_dir / "results/e1/requests.csv")
    measured = req[req["phase"] == "measured"]
    lengths = sorted(set(req["prompt_tokens_point"]))
    assert len(measured) == cfg["trials"] * len(lengths)
    # the warm-up of each length went until steady: between warmup_requests and warmup_max_requests,
    # as many as latency.csv says
    latency = pd.read_csv(workflow_dir / "results/e1/latency.csv")
    warm = req[req["phase"] == "warmup"].groupby("prompt_tokens_point").size()
    assert warm.between(cfg["warmup_requests"], max(cfg["warmup_requests"], cfg["warmup_max_requests"])).all()
    assert dict(warm) == dict(zip(latency["prompt_tokens"], latency["warmup_requests_sent"]))
    assert len(req) == cfg["trials"] * len(lengths) + warm.sum()
    assert req["ok"].all() and req["request_id"].is_unique
    assert (req["prompt_tokens"] == req["prompt_tokens_target"]).all() and req["prompt_tokens_match"].all()
    assert (req["output_tokens"] == cfg["max_tokens"]).all()
    # vLLM's per-request timings beside the client's, for every request
    assert req[["engine_ttft_ms", "engine_itl_ms", "engine_queue_ms"]].notna().all().all()
    assert (req["engine_ttft_ms"] > 0).all() and (req["first_chunk_tokens"] >= 1).all()
    # A request without a client TPOT showed the client no decode pace, and says so: its whole output
    # came in the opening burst (or all but the anchor chunk), or every chunk after the second came as
    # one backlog, faster than half the engine's own ITL (a stalled reader, then the waiting tokens).
    no_tpot = req[req["tpot_s"].isna()]
    burst = no_tpot["opening_burst_tokens"] >= no_tpot["output_tokens"] - 1
    later = no_tpot["itl_s"].map(lambda gaps: [float(g) for g in str(gaps).split(",")][1:])
    backlog = [sum(g) < 0.5 * itl / 1000.0 * len(g) for g, itl in zip(later, no_tpot["engine_itl_ms"])]
    assert (burst | backlog).all(), no_tpot[~(burst | backlog)].to_dict("records")


def test_e2_concurrency_csv(workflow_dir, config):
    cfg = config["experiments"]["e2"]
    every = pd.read_csv(workflow_dir / "results/e2/concurrency.csv")
    frame = every[every["mode"].isin(["concurrency", "rate"])].reset_index(drop=True)
    conc = frame[frame["mode"] == "concurrency"]
    rate = frame[frame["mode"] == "rate"]
    assert list(conc["level"]) == cfg["concurrency_levels"]
    assert list(rate["level"]) == pytest.approx(cfg["request_rates"])
    assert len(frame) == len(cfg["concurrency_levels"]) + len(cfg["request_rates"])
    # A rate point plainly over-saturated stops sending early, and says so.
    stopped = frame["stopped_early"].astype(str).eq("True")   # empty (NaN) where not judged
    assert texts(frame.loc[stopped, "saturation_note"]).str.contains("over-saturated").all()
    frame = frame[~stopped]
    # Every point was measured; on a 2-core host a point can come out implausible (a stalled API
    # server flushing streams at once), and then it says why.
    assert frame["status"].isin(["ok", "implausible"]).all(), frame["reason"].tolist()
    assert texts(frame.loc[frame["status"] == "implausible", "reason"]).str.len().gt(0).all()
    # Closed-loop points send at least min_waves x concurrency requests; rate points exactly requests_per_point.
    sent = [e2.requests_for_point(cfg, m, lv) for m, lv in zip(frame["mode"], frame["level"])]
    assert list(frame["n"]) == sent and (frame["n_ok"] == frame["n"]).all()
    assert max(sent) == max(cfg["requests_per_point"], cfg["min_waves"] * max(cfg["concurrency_levels"]))
    for metric in ("ttft", "tpot", "e2e"):
        assert _ordered(frame, metric), metric
    assert (frame["goodput_rps"] <= frame["request_throughput_rps"] + 1e-9).all()
    assert frame["slo_attainment"].between(0, 1).all()
    assert frame["slo_attainment"].to_numpy() == pytest.approx((frame["n_slo_met"] / frame["n"]).to_numpy())
    assert frame["goodput_rps"].to_numpy() == pytest.approx((frame["n_slo_met"] / frame["duration_s"]).to_numpy())
    assert (frame["ttft_slo_ms"] == cfg["ttft_slo_ms"]).all() and (frame["tpot_slo_ms"] == cfg["tpot_slo_ms"]).all()
    assert frame["output_throughput_tok_s"].to_numpy() == pytest.approx(
        (frame["request_throughput_rps"] * cfg["max_tokens"]).to_numpy())
    assert (frame["prompt_tokens_mismatches"] == 0).all() and (frame["local_cache_hit_tokens"] == 0).all()
    assert list(frame["engine_requests"]) == sent
    assert (frame["engine_preemptions"] >= 0).all()
    peak = frame["engine_kv_cache_usage_peak"]
    assert peak.notna().all() and peak.between(0, 1).all() and peak.max() > 0
    assert (frame["backend_mode"] == "real").all()


def test_e2_capacity_is_a_rate_the_engine_sustained(workflow_dir, config):
    """DistServe goodput on the CPU engine: a capacity whose probe passed (attainment's lower bound
    at the target, completions keeping pace), a bracket from probes, every probe a row with its
    verdict. On the 2-core host a search may also stop on probes it cannot judge (late sends);
    then it says so."""
    cfg = config["experiments"]["e2"]
    cap = pd.read_csv(workflow_dir / "results/e2/capacity.csv")
    lengths = cfg["capacity_prompt_tokens"] or [cfg["prompt_tokens"]]
    assert list(cap["prompt_tokens"]) == lengths
    frame = pd.read_csv(workflow_dir / "results/e2/concurrency.csv")
    tol = cfg["capacity_rate_tolerance"]
    for _, c in cap.iterrows():
        probes = frame[(frame["mode"] == "capacity") & (frame["prompt_tokens"] == c["prompt_tokens"])]
        assert len(probes) == c["probes"] <= cfg["capacity_max_probes"]
        assert probes["probe_verdict"].isin(["pass", "fail", "inconclusive", "invalid"]).all()
        # a failed or implausible row is never judged (invalid), except that a probe implausible only for
        # client delivery keeps a pass (its client latencies overstate the engine's)
        not_ok = probes[probes["status"] != "ok"]
        kept_pass = not_ok["client_delivery_only"].astype(bool) & (not_ok["probe_verdict"] == "pass")
        assert ((not_ok["probe_verdict"] == "invalid") | kept_pass).all(), not_ok["probe_verdict_reason"].tolist()
        assert texts(probes["probe_verdict_reason"]).str.len().gt(0).all()
        judged = probes[probes["probe_verdict"] != "invalid"]
        assert (judged["probe_window_s"] >= c["probe_min_window_s"] - 1e-6).all()
        last = judged.groupby("offered_rate_rps")["probe_verdict"].last()  # a rate's verdict: its last probe's
        stop = str(c["stop_reason"])
        assert stop in STOP_REASONS or stop.startswith(INVALID_TWICE), stop
        if pd.isna(c["capacity_rps"]):
            assert (last != "pass").all() and stop in (NONE_PASSED, BUDGET) or stop.startswith(INVALID_TWICE)
            continue
        # the capacity is the highest rate whose verdict is a pass, a rate its probe sustained
        assert c["capacity_rps"] == pytest.approx(last[last == "pass"].index.max())
        assert c["capacity_rps"] <= (1 + tol) * c["capacity_achieved_rps"] + 1e-9
        assert c["attainment_lower_bound"] >= cfg["attainment_target"]
        defining = judged[np.isclose(judged["offered_rate_rps"], c["capacity_rps"], rtol=1e-9)
                          & (judged["probe_verdict"] == "pass")].iloc[-1]
        assert defining["probe_completed_rps"] == pytest.approx(c["capacity_achieved_rps"])
        assert defining["attainment_lower_bound"] == pytest.approx(c["attainment_lower_bound"])
        # the bracket: [capacity_low_rps, capacity_high_rps), its upper end a rate that failed, or open
        assert c["capacity_low_rps"] == c["capacity_rps"]
        if pd.notna(c["capacity_high_rps"]):
            assert c["capacity_low_rps"] < c["capacity_high_rps"]
            assert last[np.isclose(last.index, c["capacity_high_rps"], rtol=1e-9)].tolist() == ["fail"]
        else:
            assert (last[last.index > c["capacity_rps"]] != "fail").all()
        if c["converged"]:
            assert c["confirmed"] and stop == CONVERGED
    # steady-state figures beside the whole-run ones; energy stated as unavailable on CPU
    measured = frame[frame["n_ok"] > 0]
    assert measured["steady_slo_attainment"].notna().any()
    assert measured["energy_j_per_output_token"].isna().all() and texts(measured["energy_note"]).str.len().gt(0).all()
    for name in ("attainment.svg", "timeline.svg", "pareto.svg"):
        assert (workflow_dir / "results/e2" / name).read_text().lstrip().startswith("<?xml")


def test_e2_rate_points_follow_their_seeded_poisson_schedule(workflow_dir, config):
    cfg = config["experiments"]["e2"]
    req = pd.read_csv(workflow_dir / "results/e2/requests.csv")
    assert req["ok"].all() and req["request_id"].is_unique
    assert (req["prompt_tokens"] == cfg["prompt_tokens"]).all() and (req["output_tokens"] == cfg["max_tokens"]).all()
    offset = len(cfg["concurrency_levels"])
    for i, r in enumerate(cfg["request_rates"]):
        sent = req[(req["mode"] == "rate") & (req["level"] == r)]
        expected = poisson_schedule(cfg["requests_per_point"], r, cfg["seed"] + offset + i)
        # a point stopped early (over-saturated) sent a prefix of its schedule
        assert sent["scheduled_offset_s"].to_numpy() == pytest.approx(expected[:len(sent)])
        # Open loop: never sent before its scheduled time (asyncio may wake a hair early).
        assert (sent["start_s"] >= sent["scheduled_offset_s"] - 0.005).all()
    assert req.loc[req["mode"] == "concurrency", "scheduled_offset_s"].isna().all()


def test_figures_carry_provenance(workflow_dir):
    for exp, names in {"e1": ("ttft.svg", "tpot.svg"), "e2": ("throughput.svg", "latency.svg", "goodput.svg",
                                                             "attainment.svg", "timeline.svg", "pareto.svg")}.items():
        meta = json.loads((workflow_dir / f"results/{exp}/run_metadata.json").read_text())
        for name in names:
            text = (workflow_dir / f"results/{exp}/{name}").read_text()
            assert text.lstrip().startswith("<?xml") and "<svg" in text
            assert meta["run_id"] in text and "random-embedded" in text and meta["engine_distribution"] in text
    assert "TTFT p50 (ms)" in (workflow_dir / "results/e1/latency.html").read_text()
    assert "goodput (req/s)" in (workflow_dir / "results/e2/concurrency.html").read_text()


def test_packet_has_e1_and_e2_sections(workflow_dir):
    html = (workflow_dir / "reports/packet.html").read_text()
    for exp in ("e1", "e2"):
        meta = json.loads((workflow_dir / f"results/{exp}/run_metadata.json").read_text())
        section = html[html.index(f'<section id="{exp}">'):]
        section = section[:section.index("</section>")]
        assert meta["run_id"] in section and "random-embedded" in section and "Not run" not in section
        assert re.search(r"(exceeds|is below) engine-side TTFT", section)
        md = (workflow_dir / f"reports/{exp}.md").read_text()
        assert meta["run_id"] in md
    e1 = html[html.index('<section id="e1">'):]
    assert e1[:e1.index("</section>")].count("<svg") >= 2
    e2 = html[html.index('<section id="e2">'):]
    e2 = e2[:e2.index("</section>")]
    assert e2.count("<svg") >= 3 and "DistServe" in e2 and "goodput" in e2


def test_dry_run_builds_both_from_a_fresh_copy(tmp_path):
    fresh = copy_checkout(tmp_path / "fresh")
    proc = run_snakemake(fresh, "-n", "results/e1/latency.csv", "results/e2/concurrency.csv")
    assert proc.returncode == 0, proc.stderr
    jobs = _job_stats(proc.stdout)
    assert {"embedded_model", "e1", "e2"} <= set(jobs), jobs


def test_e2_slo_change_reruns_e2_but_not_e1(workflow_dir, tmp_path):
    """E2's SLOs are run keys: they steer the capacity search (which rates are probed)."""
    overlay = tmp_path / "slo.yaml"
    overlay.write_text("experiments:\n  e2:\n    ttft_slo_ms: 123.0\n")
    proc = run_snakemake(workflow_dir, "-n", "all", "--configfile", str(overlay))
    assert proc.returncode == 0, proc.stderr
    jobs = _job_stats(proc.stdout)
    assert "e2" in jobs and "e2_analysis" not in jobs and "e1" not in jobs and "embedded_model" not in jobs, jobs


def test_e2_run_key_change_reruns_e2_but_not_e1(workflow_dir, tmp_path):
    overlay = tmp_path / "run.yaml"
    overlay.write_text("experiments:\n  e2:\n    requests_per_point: 5\n")
    proc = run_snakemake(workflow_dir, "-n", "all", "--configfile", str(overlay))
    assert proc.returncode == 0, proc.stderr
    jobs = _job_stats(proc.stdout)
    assert "e2" in jobs and "e1" not in jobs and "embedded_model" not in jobs, jobs


def _job_stats(out: str) -> set[str]:
    """Rule names from the 'Job stats' table of a dry run."""
    if "Job stats:" not in out:
        return set()
    block = out.split("Job stats:", 1)[1].strip().splitlines()
    names = set()
    for line in block[2:]:
        parts = line.split()
        if not parts or parts[0] == "total":
            break
        names.add(parts[0])
    return names
