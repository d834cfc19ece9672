"""A capacity probe's verdict (analysis.probe) on samples whose answer is known, rule by rule."""

import numpy as np
import pytest
from scipy.stats import binomtest

from context_research.analysis.probe import (FAIL, INCONCLUSIVE, INVALID, PASS, ProbeRules, ProbeSample,
                                             attainment_bounds, completed_rps, design_effect,
                                             integrated_autocorrelation, probe_requests, probe_schedule,
                                             probe_verdict, requests_to_pass, window_indices)
from context_research.records import RequestRecord

RULES = ProbeRules(ttft_slo_ms=250.0, tpot_slo_ms=50.0)  # E2's CPU defaults: a 5.25 s minimum window


def sample(rate, *, latency=0.1, stretch=1.0, met=None, seed=0, n=None, length=1.0):
    """A probe at ``rate`` whose requests complete ``latency`` s after their send, the completions
    spread ``stretch`` times wider than the sends (1: keeping pace; 1.2: the engine serves 1/1.2 of
    the rate); ``met``: which requests met the SLOs (all by default)."""
    n = n or probe_requests(rate, RULES, length)
    planned = np.asarray(probe_schedule(n, rate, seed, RULES.trim))
    done = planned * stretch + latency
    met = np.ones(n, dtype=bool) if met is None else np.asarray(met, dtype=bool)
    slack = np.where(met, 0.2, 1.5) + 0.01 * np.random.default_rng(seed).random(n)
    return ProbeSample(planned, planned.copy(), done, met, slack)


def test_minimum_window_and_requests_follow_from_the_slo_and_tolerance():
    assert RULES.min_window_s == pytest.approx(0.25 * 1.05 / 0.05)          # 5.25 s
    assert ProbeRules(2000.0, 50.0, rate_tolerance=0.1).min_window_s == pytest.approx(2.0 * 1.1 / 0.1)
    # every request meeting the SLOs: n / (n + z^2) >= 0.9 from n = 25 (z = 1.645)
    assert RULES.min_window_requests == 25
    assert attainment_bounds(1.0, 25, RULES.z)[0] >= 0.9 > attainment_bounds(1.0, 24, RULES.z)[0]


@pytest.mark.parametrize("rate", [0.7, 3.0, 40.0, 333.0])
def test_schedule_window_holds_exactly_the_rate_and_spans_the_minimum_window(rate):
    for length in (1.0, 1.6):
        n = probe_requests(rate, RULES, length)
        offsets = probe_schedule(n, rate, 11, RULES.trim)
        i0, i1 = window_indices(n, RULES.trim)
        assert (i1 - i0) / (offsets[i1] - offsets[i0]) == pytest.approx(rate)
        assert offsets[i1] - offsets[i0] >= length * RULES.min_window_s - 1e-9
        assert i1 - i0 + 1 >= RULES.min_window_requests
        assert offsets == sorted(offsets) and offsets == probe_schedule(n, rate, 11, RULES.trim)  # seeded
    assert probe_requests(0.5, ProbeRules(250.0, 50.0, min_requests=500), 1.0) == 500


def test_wilson_bounds_are_scipys_at_integer_counts():
    for met, n in [(0, 30), (27, 30), (90, 100), (100, 100), (5, 7)]:
        ci = binomtest(met, n).proportion_ci(confidence_level=0.90, method="wilson")   # two 5 % tails
        assert attainment_bounds(met / n, n, RULES.z) == pytest.approx((ci.low, ci.high), abs=1e-9)
    # fewer independent requests, a wider interval around the same share
    assert attainment_bounds(0.95, 25, RULES.z)[0] < attainment_bounds(0.95, 100, RULES.z)[0]
    # the requests a share needs to pass are where its lower bound meets the target
    n = requests_to_pass(0.97, RULES)
    assert attainment_bounds(0.97, n, RULES.z)[0] == pytest.approx(0.9)
    assert requests_to_pass(0.9, RULES) is None


def test_integrated_autocorrelation_of_known_series():
    rng = np.random.default_rng(1)
    iid = [integrated_autocorrelation(rng.normal(size=400)) for _ in range(200)]
    assert 0.5 <= np.mean(iid) < 0.8                                  # independent: 1/2
    phi, x = 0.8, np.zeros(20000)
    noise = rng.normal(size=x.size)
    for i in range(1, x.size):
        x[i] = phi * x[i - 1] + noise[i]
    assert integrated_autocorrelation(x) == pytest.approx((1 + phi) / (2 * (1 - phi)), rel=0.2)   # AR(1): 4.5
    assert integrated_autocorrelation(np.full(50, 3.0)) == 0.5        # constant: nothing moves together
    # misses in one burst count as fewer independent requests than the same misses spread out
    burst = np.r_[np.ones(90), np.zeros(10), np.ones(100)].astype(bool)
    spread = np.ones(200, dtype=bool)
    spread[::20] = False
    assert design_effect(np.where(burst, 0.2, 1.5), burst) > 3 * design_effect(np.where(spread, 0.2, 1.5), spread)


def test_a_probe_that_keeps_pace_with_every_request_meeting_the_slos_passes():
    v = probe_verdict(sample(20.0), 20.0, RULES)
    assert v.outcome == PASS and v.completed_rps == pytest.approx(20.0)
    assert v.attainment_low >= 0.9 and v.window_s >= RULES.min_window_s
    assert v.columns()["probe_verdict"] == PASS and v.columns()["attainment_lower_bound"] == v.attainment_low


def test_completions_falling_behind_the_rate_cannot_pass():
    """Every request met the SLOs, but they completed at 1/1.1 of the rate: the rate rule (MLPerf's
    achieved = scheduled) keeps it from passing; 1.04 is within the 5 % tolerance."""
    v = probe_verdict(sample(20.0, stretch=1.1), 20.0, RULES)
    assert v.outcome == INCONCLUSIVE and "completed" in v.reason and v.completed_rps == pytest.approx(20 / 1.1)
    assert probe_verdict(sample(20.0, stretch=1.04), 20.0, RULES).outcome == PASS


def test_a_backlog_that_grows_cannot_pass():
    s = sample(20.0)
    # a third of the window's requests still in flight at its end, more each second
    lag = np.clip(s.planned_s - s.planned_s[len(s.planned_s) // 3], 0, None) * 0.5
    grown = ProbeSample(s.planned_s, s.sent_s, s.done_s + lag * (1 + np.arange(len(lag)) / len(lag)), s.met, s.slack)
    v = probe_verdict(grown, 20.0, RULES)
    assert v.outcome != PASS and "backlog grew" in v.reason and v.backlog_rise > 0


def test_attainment_decides_fail_pass_and_inconclusive():
    n = probe_requests(20.0, RULES)
    rng = np.random.default_rng(4)
    half = rng.random(n) < 0.5
    assert probe_verdict(sample(20.0, met=half), 20.0, RULES).outcome == FAIL            # upper bound < 0.9
    most = rng.random(n) < 0.93
    v = probe_verdict(sample(20.0, met=most), 20.0, RULES)
    assert v.outcome == INCONCLUSIVE and v.attainment_low < 0.9 <= v.attainment_high
    assert v.extend is None or 1.25 <= v.extend <= RULES.max_extend
    # a share above the target on too few independent requests asks for a longer probe
    few = np.ones(n, dtype=bool)
    few[n // 2: n // 2 + 3] = False                                # 3 misses in a row
    v = probe_verdict(sample(20.0, met=few), 20.0, RULES)
    assert v.outcome == INCONCLUSIVE and v.extend is not None and v.design_effect > 1


def test_probes_that_cannot_be_judged_are_invalid():
    s = sample(20.0)
    assert probe_verdict(s, 20.0, RULES, not_judged="implausible: send lag").outcome == INVALID
    v = probe_verdict(s, 20.0, RULES, planned_requests=len(s.planned_s) + 5)
    assert v.outcome == INVALID and v.reason.startswith("stopped early")
    short = sample(20.0, n=40)                                     # 2 s of window, 5.25 s needed
    assert probe_verdict(short, 20.0, RULES).outcome == INVALID


def test_a_pass_never_names_more_than_1_plus_tolerance_times_what_it_completed():
    rng = np.random.default_rng(7)
    for _ in range(300):
        rate = float(rng.uniform(1, 200))
        v = probe_verdict(sample(rate, stretch=float(rng.uniform(0.9, 1.2)), latency=float(rng.uniform(0, 1)),
                                 seed=int(rng.integers(1e6))), rate, RULES)
        if v.outcome == PASS:
            assert rate <= (1 + RULES.rate_tolerance) * v.completed_rps + 1e-9


def test_from_records_reads_sends_completions_and_slos():
    recs = [RequestRecord("a", 16, 16, 8, 8, start_s=0.01, ttft_s=0.1, e2e_s=0.3, tpot_s=0.02, scheduled_offset_s=0.0),
            RequestRecord("b", 16, 16, 8, 8, start_s=0.52, ttft_s=0.4, e2e_s=0.6, tpot_s=0.02, scheduled_offset_s=0.5),
            RequestRecord("c", 16, error="HTTP 500", start_s=1.0, scheduled_offset_s=1.0)]
    s = ProbeSample.from_records(recs, 250.0, 50.0)
    assert list(s.planned_s) == [0.0, 0.5, 1.0] and list(s.sent_s) == [0.01, 0.52, 1.0]
    assert s.done_s[:2] == pytest.approx([0.31, 1.12]) and np.isnan(s.done_s[2])
    assert list(s.met) == [True, False, False] and s.slack[1] == pytest.approx(0.4 / 0.25)
    assert completed_rps(np.arange(10.0), np.arange(10.0) * 2 + 1, 1.0) == pytest.approx(0.5)


def _records(rate, ttft_s):
    """A probe's records at ``rate``: each request sent on time, first token after ``ttft_s``,
    8 tokens 10 ms apart."""
    n = probe_requests(rate, RULES)
    planned = probe_schedule(n, rate, 0, RULES.trim)
    return [RequestRecord(f"r{i}", 16, 16, 8, 8, start_s=t, ttft_s=ttft_s, e2e_s=ttft_s + 0.07, tpot_s=0.01,
                          scheduled_offset_s=t) for i, t in enumerate(planned)]


@pytest.mark.parametrize("delivery_only", [True, False])
def test_a_probe_implausible_only_for_client_delivery_keeps_a_pass_and_nothing_else(delivery_only):
    """Client delivery delays inflate the client's latencies: a pass on them stands, a fail may be
    the client's and is invalid; any other implausible reason makes the probe invalid."""
    from context_research.experiments.e2_points import capacity_verdict

    rate = 20.0
    row = {"status": "implausible", "reason": "client delivery: 3 of 100 streams arrived whole",
           "client_delivery_only": delivery_only}
    good, slow = _records(rate, 0.05), _records(rate, 0.40)     # TTFT SLO 250 ms: all met, none met
    n = len(good)
    passed = capacity_verdict(row, good, rate, RULES, n)
    failed = capacity_verdict(row, slow, rate, RULES, n)
    assert capacity_verdict({**row, "status": "ok"}, good, rate, RULES, n).outcome == PASS
    assert capacity_verdict({**row, "status": "ok"}, slow, rate, RULES, n).outcome == FAIL
    if delivery_only:
        assert passed.outcome == PASS and "the pass stands" in passed.reason
        assert failed.outcome == INVALID and "would be 'fail'" in failed.reason
    else:
        assert passed.outcome == INVALID and failed.outcome == INVALID
