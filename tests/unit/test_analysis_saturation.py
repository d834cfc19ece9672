"""Over-saturation on recorded load series, and the steady-state window (no engine, no clock)."""

import pytest

from context_research.analysis.saturation import SaturationMonitor, growing, steady_state, steady_state_columns
from context_research.records import RequestRecord

T = [i * 0.25 for i in range(40)]                    # 10 s sampled every 0.25 s, as the session does
STABLE = [3, 4, 3, 5, 4, 3] * 6 + [4, 3, 4, 4]         # a loaded but keeping-up engine
RAMP_THEN_FLAT = [min(i, 6) for i in range(40)]        # fills to 6 in flight in 1.5 s, then steady
GROWING = [int(i * 1.2) for i in range(40)]            # arrivals outpace service: +4.8 req/s


def test_growing_series():
    assert growing(T, GROWING)
    assert not growing(T, STABLE)
    assert not growing(T, RAMP_THEN_FLAT)               # a ramp-up is not saturation
    assert not growing(T[:5], GROWING[:5])              # too few samples to say


def monitor(in_flight, waiting, met):
    m = SaturationMonitor(ttft_slo_ms=100, tpot_slo_ms=10, attainment_target=0.9, recent=8)
    for t, f, w in zip(T, in_flight, waiting):
        m.on_sample(t, f, w)
    for ok in met:
        m.on_completion(rec(0, 0.01, 0.005 if ok else 0.05))
    return m


def test_plainly_saturated_needs_growth_on_both_sides_and_collapsed_attainment():
    m = monitor(GROWING, [max(0, g - 4) for g in GROWING], [True] * 4 + [False] * 8)
    assert m.saturated() and "over-saturated" in m.stop_reason()
    cols = m.columns()
    assert cols["saturated"] and cols["stopped_early"] and cols["in_flight_peak"] == GROWING[-1]
    assert cols["engine_waiting_peak"] == GROWING[-1] - 4
    # Queue grows but the last completions still meet the SLOs: flagged, not stopped.
    m = monitor(GROWING, GROWING, [True] * 12)
    assert m.saturated() and m.stop_reason() is None and m.columns()["saturation_note"]
    # The client queue grows but the engine's waiting queue does not: the backlog is not the engine's.
    m = monitor(GROWING, [0.0] * 40, [False] * 12)
    assert m.engine_growing() is False and not m.saturated() and m.stop_reason() is None


def test_without_engine_gauge_the_client_series_decides():
    m = monitor(GROWING, [None] * 40, [False] * 12)
    assert m.engine_growing() is None and m.stop_reason() is not None
    assert "no engine waiting gauge" in m.stop_reason()
    assert monitor(STABLE, [None] * 40, [False] * 12).stop_reason() is None


def rec(start, ttft, tpot, out=8):
    return RequestRecord(
        request_id=f"r{start}", prompt_tokens_target=16, prompt_tokens=16, output_tokens=out, start_s=start, ttft_s=ttft, tpot_s=tpot,
        e2e_s=ttft + tpot * (out - 1))


def test_steady_state_drops_ramp_up_and_drain():
    records = [rec(float(i), 0.05, 0.005) for i in range(20)]
    t0, t1, kept = steady_state(records, 0.1)
    assert (t0, t1) == (2.0, 17.0) and len(kept) == 16    # 2 sends dropped at each end
    cols = steady_state_columns(records, 0.1, 100, 10)
    assert cols["steady_window_s"] == 15.0 and cols["steady_requests"] == 16
    assert cols["steady_slo_attainment"] == 1.0 and cols["steady_ttft_ms_p50"] == pytest.approx(50)
    # completions inside [2, 17]: requests sent at 2..16 (each takes 0.085 s)
    assert cols["steady_request_throughput_rps"] == pytest.approx(15 / 15.0)
    assert cols["steady_output_throughput_tok_s"] == pytest.approx(15 * 8 / 15.0)


def test_steady_state_too_few_requests_is_stated():
    cols = steady_state_columns([rec(0.0, 0.05, 0.005), rec(1.0, 0.05, 0.005)], 0.1, 100, 10)
    assert cols["steady_requests"] is None and "at least 4" in cols["steady_note"]


def test_stop_disabled_flags_but_never_stops():
    m = SaturationMonitor(ttft_slo_ms=100, tpot_slo_ms=10, stop_enabled=False)
    for t, f in zip(T, GROWING):
        m.on_sample(t, f, None)
    for _ in range(8):
        m.on_completion(rec(0, 0.5, 0.05))
    assert m.saturated() and m.stop_reason() is None
    assert m.columns()["saturated"] and not m.columns()["stopped_early"]
