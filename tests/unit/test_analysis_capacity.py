"""Capacity search on synthetic attainment curves with a known answer (no engine, no clock)."""

import pytest

from context_research.analysis.capacity import (BUDGET, BUDGET_ALL_PASSED, CONVERGED, NONE_PASSED, NOT_BRACKETED,
                                                CapacitySearch, run_search)


def step_curve(knee):
    """Attainment 1 up to ``knee`` req/s, 0.5 above: the capacity at target 0.9 is ``knee``."""
    return lambda rate: 1.0 if rate <= knee else 0.5


def linear_curve(rate):
    """Attainment falls linearly from 1 at 0 req/s to 0 at 10 req/s: 0.9 is reached at 1 req/s."""
    return max(0.0, 1.0 - rate / 10.0)


@pytest.mark.parametrize("knee,start", [(7.3, 1.0), (7.3, 50.0), (0.4, 4.0), (12.0, 12.0)])
def test_converges_on_the_knee_within_tolerance_and_budget(knee, start):
    s = run_search(CapacitySearch(start_rate_rps=start, rel_tol=0.05, max_probes=12), step_curve(knee))
    r = s.result()
    assert r["stop_reason"] == CONVERGED and r["converged"]
    assert r["capacity_low_rps"] <= knee < r["capacity_high_rps"]
    assert r["capacity_high_rps"] / r["capacity_low_rps"] - 1 <= 0.05
    assert r["capacity_rps"] == r["capacity_low_rps"] and r["probes"] <= 12
    assert len(s.probes) == r["probes"]                       # every probe is kept (a row each)


def test_linear_curve_answer_is_one_request_per_second():
    r = run_search(CapacitySearch(start_rate_rps=2.0, rel_tol=0.02, max_probes=20), linear_curve).result()
    assert r["capacity_low_rps"] <= 1.0 + 1e-9 < r["capacity_high_rps"]   # attainment(1.0) = 0.9 passes
    assert r["capacity_low_rps"] == pytest.approx(1.0, rel=0.02)


def test_bracketing_grows_then_bisects_geometrically():
    s = run_search(CapacitySearch(start_rate_rps=1.0, rel_tol=0.1, max_probes=10), step_curve(5.0))
    rates = [p.rate_rps for p in s.probes]
    assert rates[:4] == [1.0, 2.0, 4.0, 8.0]                  # doubling until the first failure
    assert rates[4] == pytest.approx((4.0 * 8.0) ** 0.5)      # then the geometric midpoint
    assert [p.phase for p in s.probes[:4]] == ["bracket"] * 4 and s.probes[4].phase == "bisect"


def test_budget_stops_the_search_with_the_bracket_so_far():
    r = run_search(CapacitySearch(start_rate_rps=1.0, rel_tol=0.001, max_probes=5), step_curve(5.0)).result()
    assert r["stop_reason"] == BUDGET and not r["converged"] and r["probes"] == 5
    assert r["capacity_low_rps"] <= 5.0 < r["capacity_high_rps"]


def test_budget_spent_while_every_probe_passed_says_capacity_is_a_lower_bound():
    r = run_search(CapacitySearch(start_rate_rps=4.0, max_probes=6), step_curve(1000.0)).result()
    assert r["stop_reason"] == BUDGET_ALL_PASSED and not r["converged"] and r["probes"] == 6
    assert r["capacity_rps"] == r["capacity_low_rps"] == 128.0 and r["capacity_high_rps"] is None
    # a budget spent with a failing rate seen is the plain budget stop
    r = run_search(CapacitySearch(start_rate_rps=4.0, max_probes=6), step_curve(100.0)).result()
    assert r["stop_reason"] == BUDGET and r["capacity_high_rps"] == 128.0


def test_not_bracketed_above_and_none_passed():
    r = run_search(CapacitySearch(start_rate_rps=1.0, max_rate_rps=16.0, max_probes=10), lambda _: 1.0).result()
    assert r["stop_reason"] == NOT_BRACKETED and r["capacity_rps"] == 16.0 and r["capacity_high_rps"] is None
    r = run_search(CapacitySearch(start_rate_rps=1.0, min_rate_rps=0.25, max_probes=10), lambda _: 0.0).result()
    assert r["stop_reason"] == NONE_PASSED and r["capacity_rps"] is None
    assert r["capacity_low_rps"] == 0.0 and r["capacity_high_rps"] == 0.25


def test_unmeasured_probe_is_a_failure_and_non_monotonic_is_noted():
    s = CapacitySearch(start_rate_rps=4.0, max_probes=6)
    assert not s.record(4.0, None).passed
    s.record(2.0, 1.0)
    s.record(8.0, 0.95)                                       # passes above a failure
    assert "8 req/s" in s.result()["non_monotonic_note"]


def test_attainment_exactly_at_target_passes():
    s = CapacitySearch(start_rate_rps=1.0, attainment_target=0.9)
    assert s.record(1.0, 0.9).passed and not s.record(2.0, 0.8999).passed


def test_invalid_settings_refused():
    with pytest.raises(ValueError):
        CapacitySearch(start_rate_rps=1.0, growth_factor=1.0)
