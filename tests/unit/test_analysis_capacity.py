"""Capacity search on synthetic verdicts with a known answer (no engine, no clock).

The search's statistics (how often its bracket holds a server's true capacity) are proven in
test_calibration.py against simulated servers; these tests pin its rules one at a time.
"""

import pytest

from context_research.analysis.capacity import (BUDGET, BUDGET_ALL_PASSED, CONVERGED, INVALID_TWICE, NONE_PASSED,
                                                NOT_BRACKETED, RESOLVED, UNCONFIRMED, CapacitySearch, run_search)
from context_research.analysis.probe import FAIL, INCONCLUSIVE, INVALID, PASS, Verdict


def v(outcome, completed=None, low=None, extend=None):
    return Verdict(outcome, outcome, completed_rps=completed, attainment_low=low, extend=extend)


def step_curve(knee):
    """Pass up to ``knee`` req/s, fail above: the capacity is ``knee``."""
    return lambda rate, length: v(PASS, completed=rate, low=0.95) if rate <= knee else v(FAIL)


@pytest.mark.parametrize("knee,start", [(7.3, 1.0), (7.3, 50.0), (0.4, 4.0), (12.0, 12.0)])
def test_converges_on_the_knee_within_tolerance_and_budget(knee, start):
    s = run_search(CapacitySearch(start_rate_rps=start, rel_tol=0.05, max_probes=14), step_curve(knee))
    r = s.result()
    assert r["stop_reason"] == CONVERGED and r["converged"] and r["confirmed"]
    assert r["capacity_low_rps"] <= knee < r["capacity_high_rps"]
    assert r["capacity_high_rps"] / r["capacity_low_rps"] - 1 <= 0.05
    assert r["capacity_rps"] == r["capacity_low_rps"] and r["probes"] <= 14
    assert len(s.probes) == r["probes"]                       # every probe is kept (a row each)
    # the last probe confirms the capacity: the same rate a second time
    assert s.probes[-1].phase == "confirm" and s.probes[-1].rate_rps == r["capacity_rps"]


def test_capacity_fields_come_from_the_defining_probe():
    r = run_search(CapacitySearch(start_rate_rps=1.0, rel_tol=0.5, max_probes=10),
                   lambda rate, length: v(PASS, completed=rate * 0.97, low=0.93) if rate <= 3 else v(FAIL)).result()
    assert r["capacity_rps"] == pytest.approx(8 ** 0.5)      # 1, 2 pass, 4 fails, 2.83 passes (twice)
    assert r["capacity_achieved_rps"] == pytest.approx(8 ** 0.5 * 0.97)
    assert r["attainment_lower_bound"] == 0.93


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
    # a budget spent on a bracket within rel_tol but before the second pass says so
    r = run_search(CapacitySearch(start_rate_rps=4.0, rel_tol=0.5, max_probes=3), step_curve(5.0)).result()
    assert r["stop_reason"] == UNCONFIRMED and not r["confirmed"] and r["capacity_rps"] == 4.0


def test_budget_spent_while_every_probe_passed_says_capacity_is_a_lower_bound():
    r = run_search(CapacitySearch(start_rate_rps=4.0, max_probes=6), step_curve(1000.0)).result()
    assert r["stop_reason"] == BUDGET_ALL_PASSED and not r["converged"] and r["probes"] == 6
    assert r["capacity_rps"] == r["capacity_low_rps"] == 128.0 and r["capacity_high_rps"] is None
    r = run_search(CapacitySearch(start_rate_rps=4.0, max_probes=6), step_curve(100.0)).result()
    assert r["stop_reason"] == BUDGET and r["capacity_high_rps"] == 128.0


def test_not_bracketed_above_and_none_passed():
    r = run_search(CapacitySearch(start_rate_rps=1.0, max_rate_rps=16.0, max_probes=10),
                   lambda rate, length: v(PASS)).result()
    assert r["stop_reason"] == NOT_BRACKETED and r["capacity_rps"] == 16.0 and r["capacity_high_rps"] is None
    r = run_search(CapacitySearch(start_rate_rps=1.0, min_rate_rps=0.25, max_probes=10),
                   lambda rate, length: v(FAIL)).result()
    assert r["stop_reason"] == NONE_PASSED and r["capacity_rps"] is None
    assert r["capacity_low_rps"] == 0.0 and r["capacity_high_rps"] == 0.25


def test_inconclusive_steers_down_but_is_never_a_bracket_end():
    """Near the capacity a probe often cannot tell: the search looks below it, the bracket's upper
    end stays the lowest rate that FAILED."""
    def curve(rate, length):
        return v(PASS) if rate <= 5 else v(INCONCLUSIVE) if rate <= 12 else v(FAIL)

    s = run_search(CapacitySearch(start_rate_rps=4.0, rel_tol=0.25, max_probes=10), curve)
    r = s.result()
    assert [p.rate_rps for p in s.probes][:3] == [4.0, 8.0, pytest.approx(32 ** 0.5)]   # 8 inconclusive: look below
    assert r["capacity_high_rps"] is None and r["stop_reason"] == RESOLVED and r["confirmed"]
    assert r["capacity_low_rps"] <= 5.0 and r["inconclusive_probes"] >= 1
    assert s.ceiling / s.low - 1 <= 0.25


def test_invalid_probe_is_probed_again_once_and_twice_in_a_row_stops():
    seen = []

    def curve(rate, length):
        seen.append(rate)
        return v(INVALID) if rate == 8.0 else step_curve(5.0)(rate, length)

    s = run_search(CapacitySearch(start_rate_rps=4.0, rel_tol=0.1, max_probes=10), curve)
    assert seen == [4.0, 8.0, 8.0] and [p.phase for p in s.probes] == ["bracket", "bracket", "repeat"]
    assert s.result()["stop_reason"].startswith(INVALID_TWICE) and s.result()["invalid_probes"] == 2
    assert s.result()["capacity_rps"] == 4.0                  # the invalid probes neither passed nor failed
    # an invalid probe followed by a judged one: the search goes on as if only the judged one was run
    flaky = iter([v(INVALID), v(FAIL)])
    s = run_search(CapacitySearch(start_rate_rps=4.0, rel_tol=0.1, max_probes=10),
                   lambda rate, length: next(flaky) if rate == 8.0 else step_curve(5.0)(rate, length))
    assert s.result()["stop_reason"] == CONVERGED and s.high is not None and s.high <= 8.0


def test_inconclusive_probe_that_asks_for_more_is_probed_longer_once():
    lengths = []

    def curve(rate, length):
        lengths.append((rate, length))
        if rate == 8.0:
            return v(INCONCLUSIVE, extend=1.8) if length == 1.0 else v(PASS)
        return step_curve(10.0)(rate, length)

    s = run_search(CapacitySearch(start_rate_rps=4.0, rel_tol=0.5, max_probes=10), curve)
    assert lengths[:3] == [(4.0, 1.0), (8.0, 1.0), (8.0, 1.8)] and s.probes[2].phase == "extend"
    assert s.outcomes()[8.0] == PASS                          # a rate's verdict is its last judged probe's
    # the confirmation of a rate that passed on a longer probe runs that long too
    assert (8.0, 1.8) in lengths[3:] or s.low != 8.0


def test_a_confirmation_that_does_not_pass_takes_the_rate_out_of_the_capacity():
    tries = {}

    def curve(rate, length):
        tries[rate] = tries.get(rate, 0) + 1
        if rate == 8.0:
            return v(PASS) if tries[rate] == 1 else v(INCONCLUSIVE)
        return step_curve(8.5)(rate, length)

    s = run_search(CapacitySearch(start_rate_rps=4.0, rel_tol=0.5, max_probes=12), curve)
    r = s.result()
    assert tries[8.0] == 2 and r["capacity_rps"] < 8.0 and r["confirmed"]
    assert s.outcomes()[8.0] == INCONCLUSIVE


def test_non_monotonic_is_noted():
    s = CapacitySearch(start_rate_rps=4.0, max_probes=6)
    s.record(4.0, v(FAIL))
    s.record(2.0, v(PASS))
    s.record(8.0, v(PASS))                                    # passes above a failure
    assert "8 req/s" in s.result()["non_monotonic_note"]


def test_invalid_settings_refused():
    with pytest.raises(ValueError):
        CapacitySearch(start_rate_rps=1.0, growth_factor=1.0)
