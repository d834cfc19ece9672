"""Calibration: E2's statistics driven through their real code by simulated truths (no engine).

Each section proves one statistic against samples or simulated servers whose answer is known.
"""

import numpy as np
import pandas as pd
import pytest

from context_research.analysis import queue_sim
from context_research.analysis.queue_sim import (SimServer, calibrate, calibration_servers, coverage,
                                                 long_run_attainment, true_capacity)
from context_research.config import load_config

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
    return load_config("config/config.yaml", CONFIGS[name])["experiments"]["e2"]


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
