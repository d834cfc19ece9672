"""Calibration: the project's statistics driven with simulated samples, queues and comparisons of
known truth (``analysis.calibration``), in seconds, no engine. Each section proves one kind of
statistic: its coverage, false-call rate or power (docs/statistics.md states the numbers; the
evidence tables run the same functions with more simulations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from context_research.analysis.calibration import (COVERAGE_BAND, DISTRIBUTIONS, NEAR_CAPACITY, QUEUE_MODELS,
                                                   ComparisonModel, comparison_calibration, config_sample_sizes,
                                                   in_band, interval_coverage, pooled_coverage, rate_coverage)
from context_research.analysis import queue_sim
from context_research.analysis.queue_sim import (SimServer, calibrate, calibration_servers, coverage,
                                                 long_run_attainment, true_capacity)
from context_research.config import load_config
from context_research.experiments.catalog import EXPERIMENTS

# -- intervals -------------------------------------------------------------------------------------

SIMULATIONS = 1000


def test_the_sample_sizes_are_the_configs():
    sizes = config_sample_sizes(experiments=EXPERIMENTS)
    # E1's trials (3 on qwen3-8b, 5 on the CPU default and the H200 comparison), E3's 4, CPU E2's
    # 16 and 32, E0's 20 per start on the CPU, 64 / 256 / 320 on qwen3-8b
    assert {3, 4, 5, 16, 20, 32, 64, 256, 320} == set(sizes)
    assert "qwen3-8b: E1 trials" in sizes[3] and "cpu: E0 requests per start" in sizes[20]


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name)
@pytest.mark.parametrize("n", sorted(config_sample_sizes(experiments=EXPERIMENTS)))
def test_intervals_cover_the_truth_at_the_configs_sample_sizes_or_are_withheld(dist, n):
    """The 95 % intervals of the mean, median, p95 and p99 of ``n`` lognormal (log-SD 1) or bimodal
    values, from ``analysis.stats.sample_intervals`` (what every report prints), cover the truth
    in 92-98 % of 1,000 samples, or are withheld at that n for every sample."""
    rows = interval_coverage(dist, n, SIMULATIONS, seed=n)
    assert [r["statistic"] for r in rows] == ["mean", "p50", "p95", "p99"]
    for row in rows:
        assert in_band(row), f"{dist.describe()}, n={n}, {row['statistic']}: {row}"
    stated = {r["statistic"] for r in rows if r["stated"]}
    # the rule depends on n alone: from 6 values a median, 59 a p95, 60 a mean, 299 a p99
    assert stated == {s for s, k in (("p50", 6), ("p95", 59), ("mean", 60), ("p99", 299)) if n >= k}


def test_pooled_itl_intervals_count_requests_and_cover():
    """ITL pools the gaps of every request; a request's gaps share its level. 64 requests of 31
    gaps (E2's 64-request point): the mean, median and p95 intervals (requests as the unit) cover
    the pooled truth; p99 is withheld (64 requests < 299)."""
    rows = {r["statistic"]: r for r in pooled_coverage(64, gaps=31, sims=400, seed=5)}
    assert rows["p99"]["stated"] == 0
    for s in ("mean", "p50", "p95"):
        assert rows[s]["withheld"] == 0.0 and COVERAGE_BAND[0] <= rows[s]["coverage"] <= COVERAGE_BAND[1], rows[s]


def test_the_band_is_two_sided():
    assert COVERAGE_BAND == (0.92, 0.98)
    assert not in_band({"stated": 1000, "simulations": 1000, "coverage": 0.99})  # too wide is not calibrated
    assert not in_band({"stated": 500, "simulations": 1000, "coverage": 0.95})   # stated depending on the data


@pytest.mark.parametrize("model", QUEUE_MODELS, ids=lambda m: m.describe())
def test_rate_intervals_cover_a_queues_long_run_throughput(model):
    """``analysis.latency.throughput_ci`` on simulated points of queues of known long-run rate:
    covered in >= 92 % of 1,000 points where stated; withheld for every point over capacity (its
    queue grows: fewer than 4 waves of its peak in flight). Above 85 % of capacity it under-covers
    (the queue relaxes more slowly than the point lasts): stated, and bounded loosely."""
    row = rate_coverage(model, SIMULATIONS, seed=11)
    load = None if model.rate_rps is None else model.rate_rps / model.capacity_rps
    if load is not None and load > 1:
        assert row["withheld"] == 1.0
    elif load is not None and load > NEAR_CAPACITY:
        assert row["coverage"] > 0.8
    else:
        assert row["withheld"] == 0.0 and row["coverage"] >= COVERAGE_BAND[0], row


# -- comparisons -----------------------------------------------------------------------------------

def test_comparisons_call_no_drift_a_change_and_see_twice_their_stated_mde():
    """E1's CPU comparison (config/compare-cpu.yaml's 5 lengths x 5 metrics), 2 runs per side of 5
    requests, every run drifting by log-SD 0.1. Through ``compare_stats.judge``: A/A calls anything
    in <= 5 % of comparisons (family-wise, Holm over 25 tests), and a change of 2 x the mde_pct a
    row states is called in >= 80 %; at 1 x mde_pct, near the promised 80 %."""
    row = comparison_calibration(ComparisonModel(), sims=200, seed=1)
    assert row["false_call_rate"] <= 0.05, row
    assert row["power_at_2x_mde"] >= 0.8, row
    assert row["power_at_1x_mde"] >= 0.7, row


def test_more_runs_per_side_shrink_what_a_comparison_cannot_see():
    three = comparison_calibration(ComparisonModel(runs=3), sims=100, seed=2)
    two = comparison_calibration(ComparisonModel(runs=2), sims=100, seed=2)
    assert three["false_call_rate"] <= 0.05 and three["power_at_2x_mde"] >= 0.8
    # two runs per side leave the drift 2 degrees of freedom: a t quantile of 22 at Holm's alpha / 25
    assert three["median_mde_pct"] < two["median_mde_pct"] / 5


def test_the_evidence_entry_writes_its_tables_and_figure(tmp_path):
    import pandas as pd

    from context_research.analysis.calibration_report import COMPARISON_COLUMNS, INTERVAL_COLUMNS, main

    assert main(["--out", str(tmp_path), "--sims", "20", "--comparison-sims", "2"]) == 0
    cov = pd.read_csv(tmp_path / "interval_coverage.csv")
    assert tuple(cov.columns) == INTERVAL_COLUMNS and INTERVAL_COLUMNS[:6] == (
        "method", "statistic", "distribution", "n", "coverage", "withheld")
    assert {"order statistic", "bootstrap-t", "batch means (5 windows)"} <= set(cov["method"])
    comp = pd.read_csv(tmp_path / "comparison_calibration.csv")
    assert tuple(comp.columns) == COMPARISON_COLUMNS
    assert (tmp_path / "interval_coverage.svg").read_text().lstrip().startswith("<?xml")
    # the committed evidence is this entry's output
    evidence = Path(__file__).resolve().parents[2] / "docs" / "evidence" / "2026-12-07-cpu-calibration"
    assert tuple(pd.read_csv(evidence / "interval_coverage.csv", nrows=0).columns) == INTERVAL_COLUMNS
    assert tuple(pd.read_csv(evidence / "comparison_calibration.csv", nrows=0).columns) == COMPARISON_COLUMNS


# -- capacity --------------------------------------------------------------------------------------
#
# The capacity search (analysis.capacity + analysis.probe), with E2's settings, against simulated
# servers of known capacity (analysis.queue_sim: M/D/1, M/M/4 and an M/D/1 whose service time
# drifts up during each probe). The truth is the highest Poisson rate whose long-run share of
# requests meeting both SLOs reaches attainment_target, computed analytically (Erlang's M/D/1
# waiting time, Erlang C) and checked here against a long simulation. Over 200 seeds per server,
# whose speeds spread over one doubling: the capacity is at most truth x (1 + rel_tol) in >= 95 %
# and the bracket [capacity_low_rps, capacity_high_rps) holds the truth in >= 90 %. bf77132's
# search fails the same test (the last test here; the numbers are in docs/statistics.md).

SEEDS = 200
CONFIGS = {"default": [], "qwen3-8b": ["config/qwen3-8b.yaml"]}


def e2_settings(name):
    return load_config("config/config.yaml", CONFIGS[name], experiments=EXPERIMENTS)["experiments"]["e2"]


def _cases():
    return [(name, i) for name in CONFIGS for i in range(3)]


@pytest.mark.parametrize("config,server", _cases(), ids=lambda x: str(x))
def test_capacity_search_holds_the_true_capacity(config, server):
    cfg = e2_settings(config)
    srv = calibration_servers(cfg)[server]
    rows = calibrate(srv, cfg, SEEDS)
    c = coverage(rows)
    where = f"{config} settings, {srv.label()}: {c}"
    assert c["seeds"] == SEEDS and len({r["truth_rps"] for r in rows}) == queue_sim.SPREAD   # a truth per speed
    assert c["share_within_tolerance"] >= 0.95, where
    assert c["share_bracket_holds"] >= 0.90, where
    # and every capacity reported is a rate its probe sustained: at most (1 + tolerance) x completed
    for r in rows:
        if r["capacity_rps"] is not None:
            assert r["capacity_rps"] <= (1 + cfg["capacity_rate_tolerance"]) * r["capacity_achieved_rps"] + 1e-9


@pytest.mark.parametrize("config", CONFIGS)
def test_the_old_search_fails_the_same_test(config):
    """bf77132's rule (pass when the share of a probe's requests meeting the SLOs reaches the
    target, probes of max(requests_per_probe, rate x TTFT SLO / rel_tol) requests), driven by the
    same servers: its bracket misses the truth in most seeds. The test above can fail."""
    cfg = e2_settings(config)
    for srv in calibration_servers(cfg):
        c = coverage(calibrate(srv, cfg, SEEDS, rule="old"))
        assert c["share_bracket_holds"] < 0.5 and c["median_capacity_over_truth"] > 1.0, (srv.name, c)


@pytest.mark.parametrize("server,rate", [(SimServer("M/D/1", 0.025), 30.0),
                                         (SimServer("M/M/4", 0.1, slots=4, exponential=True), 25.0),
                                         (SimServer("M/M/4", 0.1, slots=4, exponential=True), 36.0)])
def test_the_analytic_truth_is_what_a_long_simulation_measures(server, rate):
    """Long-run attainment from Erlang's formulas against 40 simulated runs of 6,000 Poisson
    arrivals each (the first 1,000 of each dropped: the queue starts empty)."""
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(1 / rate, size=(40, 6000)), axis=1)
    out = queue_sim.simulate(server, arrivals, rng)
    met = (out["ttft"] <= 0.25) & (out["tpot"] <= 0.05)
    assert met[:, 1000:].mean() == pytest.approx(long_run_attainment(server, rate, 250.0, 50.0), abs=0.01)


def test_the_truth_is_where_long_run_attainment_crosses_the_target():
    srv = SimServer("M/M/4", 0.1, slots=4, exponential=True)
    truth = true_capacity(srv, 250.0, 50.0, 0.9)
    assert long_run_attainment(srv, truth, 250.0, 50.0) == pytest.approx(0.9, abs=1e-6)
    assert long_run_attainment(srv, truth * 0.98, 250.0, 50.0) > 0.9 > long_run_attainment(srv, truth * 1.02,
                                                                                           250.0, 50.0)
    assert truth < srv.service_rate_rps and long_run_attainment(srv, srv.service_rate_rps, 250.0, 50.0) == 0.0
    # a drifting server's long run is the server it settles to
    drift = SimServer("drift", 0.025, boost=1.5, settle_s=2.0)
    assert true_capacity(drift, 250.0, 50.0, 0.9) == true_capacity(SimServer("M/D/1", 0.025), 250.0, 50.0, 0.9)


def test_the_evidence_entry_writes_the_coverage_table_and_figure(tmp_path):
    from context_research.analysis import capacity_evidence

    assert capacity_evidence.main(["--seeds", "16", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "capacity_coverage.csv")
    assert len(table) == 2 * 3 * 2 and set(table["server"]) == {"M/D/1", "M/M/4", "drift"}
    assert (table["seeds"] == 16).all() and table["share_bracket_holds_truth"].between(0, 1).all()
    assert (tmp_path / "capacity_coverage.svg").read_text().lstrip().startswith("<?xml")
