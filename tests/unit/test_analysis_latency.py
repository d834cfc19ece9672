import math

import numpy as np
import pandas as pd
import pytest

from context_research.analysis.latency import (LATENCY_COLUMNS, THROUGHPUT_CI_METRICS, goodput, histogram_delta_mean,
                                               latency_row, poisson_schedule, throughput_ci)
from context_research.records import RequestRecord, finalize_timing, read_whole


def rec(i, ttft=None, tpot=None, e2e=None, out=None, prompt=100, itl=(), error=None, start=None):
    return RequestRecord(request_id=str(i), prompt_tokens_target=prompt, prompt_tokens=prompt,
                         output_tokens=out, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, itl_s=list(itl), error=error,
                         start_s=start)


RECORDS = [
    rec(0, ttft=0.100, tpot=0.010, e2e=0.190, out=10, itl=[0.01, 0.01]),
    rec(1, ttft=0.300, tpot=0.020, e2e=0.480, out=10, itl=[0.02, 0.04]),
    rec(2, ttft=0.200, tpot=None, e2e=0.200, out=1),
    rec(3, error="timeout"),
]


def test_streams_read_whole_are_counted_and_have_no_tpot():
    """A stream whose 8 tokens arrived within 0.1 ms (a reader that got no CPU while they were made)
    is counted in n_read_whole; a paced stream, a one-token one and a failed request are not."""
    def streamed(i, times):
        r = RequestRecord(request_id=str(i), prompt_tokens_target=100, prompt_tokens=100, output_tokens=len(times))
        return finalize_timing(r, 0.0, times, [1] * len(times))

    whole = streamed(0, [0.050 + 1e-5 * k for k in range(8)])
    paced = streamed(1, [0.050 + 0.004 * k for k in range(8)])
    single = streamed(2, [0.050])
    assert read_whole(whole) and whole.tpot_s is None
    assert not read_whole(paced) and paced.tpot_s == pytest.approx(0.004)
    assert not read_whole(single) and not read_whole(rec(3, error="timeout"))
    # requests.csv rows read back by pandas (an empty error is NaN) are judged alike
    rows = pd.DataFrame([whole.as_row(), paced.as_row(), rec(3, error="timeout").as_row()])
    assert [read_whole(r) for r in rows.itertuples()] == [True, False, False]
    row = latency_row([whole, paced, single, rec(3, error="timeout")])
    assert row["n_read_whole"] == 1 and row["n_ok"] == 3


def test_latency_row():
    row = latency_row(RECORDS, prompt_len=100, config="a")
    assert list(row)[:2] == ["prompt_len", "config"]
    assert list(row)[2:] == LATENCY_COLUMNS
    assert (row["n"], row["n_ok"], row["n_failed"], row["n_read_whole"]) == (4, 3, 1, 0)
    assert row["ttft_ms_p50"] == pytest.approx(200.0)
    assert row["ttft_ms_mean"] == pytest.approx(200.0)
    # 3 requests: no interval of a mean or a median covers there (analysis.stats.MIN_INTERVAL)
    assert row["ttft_ms_mean_ci_low"] is None and row["ttft_ms_p50_ci_low"] is None
    assert row["tpot_ms_mean"] == pytest.approx(15.0)  # the 1-token request has no TPOT
    assert row["tpot_ms_p50"] is None  # two TPOTs: a median needs 3
    assert row["itl_ms_p50"] == pytest.approx(15.0)  # pooled gaps 10, 10, 20, 40
    assert row["itl_ms_mean"] == pytest.approx(20.0)
    assert row["output_tokens_mean"] == pytest.approx(7.0)
    assert row["prompt_tokens_mean"] == pytest.approx(100.0)
    # 3 successful requests: p95 / p99 would only describe the slowest one; left empty, with the reason
    for col in ("ttft_ms_p95", "ttft_ms_p99", "e2e_ms_p99", "tpot_ms_p95", "itl_ms_p99"):
        assert row[col] is None and row[f"{col}_ci_low"] is None and row[f"{col}_ci_high"] is None
    assert "ttft p95, p99 (n=3)" in row["stats_note"]
    assert "tpot p50, p95, p99 (n=2)" in row["stats_note"]
    assert "itl p95, p99 (n=4 gaps from 2 requests)" in row["stats_note"]
    assert "no interval (minimum n for one: mean 60, p50 6, p95 59, p99 299; pooled: requests): " \
           "ttft mean (n=3 < 60), p50 (n=3 < 6)" in row["stats_note"]


def test_latency_row_states_every_percentile_with_enough_requests():
    # 320 requests (E0 on the qwen3-8b profile): every statistic and every interval is stated
    rng = np.random.default_rng(3)
    records = [rec(i, ttft=float(t), tpot=float(p), e2e=float(t + 9 * p), out=10,
                   itl=list(float(p) * rng.uniform(0.8, 1.2, 9)))
               for i, (t, p) in enumerate(zip(rng.uniform(0.05, 0.15, 320), rng.uniform(0.004, 0.006, 320)))]
    row = latency_row(records)
    assert row["stats_note"] is None
    ttft_ms = [r.ttft_s * 1000 for r in records]
    for q in (50, 95, 99):
        value = row[f"ttft_ms_p{q}"]
        assert value == pytest.approx(np.percentile(ttft_ms, q))
        assert row[f"ttft_ms_p{q}_ci_low"] <= value <= row[f"ttft_ms_p{q}_ci_high"]
    assert latency_row(records) == row  # fixed seed: the same CIs every time


def test_latency_row_all_failed():
    row = latency_row([rec(0, error="x")])
    assert row["n_ok"] == 0 and row["ttft_ms_p50"] is None and row["output_tokens_mean"] is None
    assert row["ttft_ms_mean_ci_low"] is None
    assert "ttft mean, p50, p95, p99 (n=0)" in row["stats_note"]


def test_goodput_hand_made():
    g = goodput(RECORDS, duration_s=2.0, ttft_slo_ms=250, tpot_slo_ms=15)
    # 0: meets both; 1: TTFT 300 > 250; 2: 1 output token -> TPOT counts as met, TTFT 200 ok; 3 failed
    assert g["n_slo_met"] == 2
    assert g["goodput_rps"] == pytest.approx(1.0)
    assert g["slo_attainment"] == pytest.approx(0.5)
    assert g["request_throughput_rps"] == pytest.approx(1.5)
    assert g["output_throughput_tok_s"] == pytest.approx(21 / 2.0)
    assert g["total_token_throughput_tok_s"] == pytest.approx((21 + 300) / 2.0)
    strict = goodput(RECORDS, duration_s=2.0, ttft_slo_ms=150, tpot_slo_ms=15)
    assert strict["n_slo_met"] == 1
    # boundary is inclusive; a multi-token request without TPOT does not meet
    assert goodput([rec(0, ttft=0.25, tpot=0.015, out=5)], 1.0, 250, 15)["n_slo_met"] == 1
    assert goodput([rec(0, ttft=0.1, tpot=None, out=5)], 1.0, 250, 15)["n_slo_met"] == 0
    with pytest.raises(ValueError):
        goodput(RECORDS, 0.0, 1, 1)


def _poisson_point(n=200, rate=5.0, e2e=0.5, seed=4):
    """n requests sent at Poisson times (rate/s), each taking ``e2e`` s, 10-16 output tokens; every
    fifth misses the TTFT SLO of 130 ms."""
    rng = np.random.default_rng(seed)
    starts = np.cumsum(rng.exponential(1.0 / rate, n))
    records = [rec(i, ttft=0.1 + 0.04 * (i % 5 == 0), tpot=0.01, e2e=e2e, out=10 + i % 7, start=float(t))
               for i, t in enumerate(starts)]
    return records, float(starts[-1] + e2e)


def test_throughput_ci_is_batch_means_over_the_points_duration():
    records, duration = _poisson_point()
    records.append(rec(999, error="timeout", start=1.0))  # a failed request contributes nothing
    g = goodput(records, duration_s=duration, ttft_slo_ms=130, tpot_slo_ms=14)
    assert g["throughput_ci_windows"] == 5 and g["throughput_ci_note"] is None
    for m in THROUGHPUT_CI_METRICS:
        assert g[f"{m}_ci_low"] < g[m] < g[f"{m}_ci_high"], m
        # the windows' mean is the point's rate: the CI is centred on it
        assert (g[f"{m}_ci_low"] + g[f"{m}_ci_high"]) / 2 == pytest.approx(g[m]), m
    # Poisson arrivals: the window counts vary like sqrt(rate x window); the CI is about
    # +/- t(4) sqrt(rate / duration) = +/- 2.78 x 0.16 req/s, not zero
    assert 0.15 < (g["request_throughput_rps_ci_high"] - g["request_throughput_rps"]) < 1.0
    assert throughput_ci(records, duration, 130, 14) == {k: g[k] for k in g if "_ci_" in k}


def test_a_rate_interval_never_goes_below_zero():
    # 40 completions in the first 4 s of 10 and none after: the 5 windows' rates are 10, 10, 0, 0,
    # 0 req/s and the t interval would reach below 0 req/s; a rate cannot
    burst = [rec(i, ttft=0.01, tpot=0.001, e2e=0.05, out=10, start=0.1 * i) for i in range(40)]
    g = throughput_ci(burst, 10.0, 1000, 1000)
    assert g["request_throughput_rps_ci_low"] == 0.0 < 4.0 < g["request_throughput_rps_ci_high"]


def test_a_rate_gets_no_interval_where_windows_cannot_be_valid_and_says_why():
    records, duration = _poisson_point(n=12, rate=5.0, e2e=0.5)   # 12 completions for 5 windows
    g = throughput_ci(records, duration, 130, 14)
    assert all(g[f"{m}_{b}"] is None for m in THROUGHPUT_CI_METRICS for b in ("ci_low", "ci_high"))
    assert g["throughput_ci_windows"] is None
    assert g["throughput_ci_note"] == "throughput: no interval (12 completions: fewer than 3 per window of 5)"
    # 16 requests sent at once (a closed loop of 16): one wave, all ramp-up and drain
    wave = [rec(i, ttft=0.1, tpot=0.01, e2e=1.0 + 0.01 * i, out=10, start=0.0) for i in range(16)]
    assert "up to 16 in flight: fewer than 4 waves" in throughput_ci(wave, 1.2, 130, 14)["throughput_ci_note"]
    # completions exactly alike in every window: no spread, no interval (never a zero-width one)
    even = [rec(i, ttft=0.1, tpot=0.01, e2e=0.1, out=10, start=0.25 * i) for i in range(200)]
    g = throughput_ci(even, 50.0, 1000, 1000)
    assert g["request_throughput_rps_ci_low"] is None and "every window alike" in g["throughput_ci_note"]
    assert all(v is None for k, v in throughput_ci(records[:1], 1.0, 100, 10).items() if k.endswith(("_low", "_high")))


def test_poisson_schedule():
    a = poisson_schedule(5, 2.0, seed=7)
    assert a == poisson_schedule(5, 2.0, seed=7)
    assert a != poisson_schedule(5, 2.0, seed=8)
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:]))
    gaps = np.random.default_rng(7).exponential(0.5, size=4)
    assert a[1:] == pytest.approx(np.cumsum(gaps).tolist())
    big = poisson_schedule(20_001, 4.0, seed=0)
    assert big[-1] / 20_000 == pytest.approx(0.25, rel=0.03)
    assert poisson_schedule(3, math.inf, seed=0) == [0.0, 0.0, 0.0]
    assert poisson_schedule(0, 1.0, seed=0) == []
    with pytest.raises(ValueError):
        poisson_schedule(3, 0.0, seed=0)


def test_histogram_delta_mean():
    assert histogram_delta_mean(1.0, 4.0, 10, 16) == pytest.approx(0.5)
    assert histogram_delta_mean(None, 4.0, None, 8) == pytest.approx(0.5)
    assert histogram_delta_mean(1.0, 1.0, 5, 5) is None


def test_a_burst_stream_meets_the_tpot_slo_by_its_delivery_pace():
    from context_research.analysis.latency import meets_slo
    from context_research.records import RequestRecord

    # 16 tokens, the 15 after the first in one burst 3 ms later: no client TPOT, delivery 0.2 ms/token.
    burst = RequestRecord("r", 256, prompt_tokens=256, output_tokens=16, ttft_s=0.020, e2e_s=0.023, tpot_s=None)
    assert meets_slo(burst, ttft_slo_ms=250, tpot_slo_ms=50)
    # The same tokens delivered over 1.5 s: 100 ms per token misses a 50 ms SLO.
    slow = RequestRecord("r", 256, prompt_tokens=256, output_tokens=16, ttft_s=0.020, e2e_s=1.520, tpot_s=None)
    assert not meets_slo(slow, ttft_slo_ms=250, tpot_slo_ms=50)
    assert not meets_slo(RequestRecord("r", 256, output_tokens=16, ttft_s=0.02, e2e_s=None), 250, 50)
