import warnings

import numpy as np
import pytest
import scipy.stats

from context_research.analysis import intervals
from context_research.analysis.intervals import mean_interval, order_statistic_plan, quantile_interval
from context_research.analysis.stats import (MIN_INTERVAL, MIN_SAMPLES, STATS, interval_part, interval_stats,
                                             sample_intervals, small_sample_note, small_sample_part, stated_stats,
                                             summarize, summarize_pooled_with_ci, summarize_with_ci)

RNG = np.random.default_rng(7)
SAMPLE = [float(x) for x in RNG.lognormal(mean=-3.0, sigma=0.4, size=400)]  # seconds, ~50 ms


def test_min_sample_rules():
    assert MIN_SAMPLES == {"mean": 2, "p50": 3, "p95": 20, "p99": 100}
    # a quantile's interval from where [min, max] first covers 95 %: 1 - q^n - (1 - q)^n >= 0.95
    assert MIN_INTERVAL == {"mean": 60, "p50": 6, "p95": 59, "p99": 299}
    for q, n in ((0.5, 6), (0.95, 59), (0.99, 299)):
        assert 1 - q ** n - (1 - q) ** n >= 0.95 > 1 - q ** (n - 1) - (1 - q) ** (n - 1)
    assert stated_stats(0) == () and stated_stats(1) == ()
    assert stated_stats(2) == ("mean",)
    assert stated_stats(3) == stated_stats(19) == ("mean", "p50")
    assert stated_stats(20) == stated_stats(99) == ("mean", "p50", "p95")
    assert stated_stats(100) == STATS
    assert stated_stats(500, n_groups=1) == ()  # one request: nothing between requests
    assert stated_stats(500, n_groups=2) == STATS
    assert interval_stats(5) == () and interval_stats(6) == ("p50",) and interval_stats(59) == ("p50", "p95")
    assert interval_stats(60) == ("mean", "p50", "p95") and interval_stats(299) == STATS
    assert interval_stats(5000, n_groups=10) == ("p50",)  # pooled: requests count, not gaps


def test_summarize_with_ci_values_are_summarize_values_inside_their_ci():
    out = summarize_with_ci(SAMPLE, "ttft_ms", 1000.0)
    plain = summarize(SAMPLE, "ttft_ms", 1000.0)
    assert list(out) == [f"ttft_ms_{s}{b}" for s in STATS for b in ("", "_ci_low", "_ci_high")]
    for s in STATS:
        value, low, high = out[f"ttft_ms_{s}"], out[f"ttft_ms_{s}_ci_low"], out[f"ttft_ms_{s}_ci_high"]
        assert value == pytest.approx(plain[f"ttft_ms_{s}"])
        assert low < value < high, s
    width = {s: out[f"ttft_ms_{s}_ci_high"] - out[f"ttft_ms_{s}_ci_low"] for s in STATS}
    assert width["p50"] < width["p95"] < width["p99"]  # the tail is less certain than the middle
    assert summarize_with_ci(SAMPLE, "x") == summarize_with_ci(SAMPLE, "x")  # deterministic


def test_the_order_statistic_plan_is_the_binomial_law_of_ranks():
    # n = 6, median: only [min, max] reaches 95 % (1 - 2 / 64 = 0.969); nothing to interpolate inwards
    # without dropping below 97.5 % on a side
    assert order_statistic_plan(6, 0.5) == (0, pytest.approx(0.0, abs=0.3), 5, pytest.approx(0.0, abs=0.3))
    assert order_statistic_plan(5, 0.5) is None and order_statistic_plan(58, 0.95) is None
    # p95 at n = 59: the maximum is the upper end (its 0.95^59 miss is all the upper tail gets)
    lo, lo_frac, hi, hi_frac = order_statistic_plan(59, 0.95)
    assert hi == 58 and hi_frac == 0.0
    # the conservative order statistics before interpolation keep each tail at or under its share
    for n, q in ((20, 0.5), (64, 0.5), (100, 0.95), (400, 0.99)):
        lo, _, hi, _ = order_statistic_plan(n, q)
        miss_low = scipy.stats.binom.cdf(lo, n, q)          # P(X_(lo+1) > quantile)
        miss_high = scipy.stats.binom.sf(hi, n, q)          # P(X_(hi+1) < quantile)
        assert miss_low + miss_high <= 0.05 + 1e-9
    x = np.sort(np.asarray(SAMPLE[:64]))
    low, high = quantile_interval(x, 0.5, is_sorted=True)
    lo, lo_frac, hi, hi_frac = order_statistic_plan(64, 0.5)
    assert low == pytest.approx(x[lo] + lo_frac * (x[lo + 1] - x[lo]))
    assert high == pytest.approx(x[hi] - hi_frac * (x[hi] - x[hi - 1]))


def test_the_bootstrap_t_of_the_mean_is_the_studentised_resampling_written_out():
    x = np.asarray(SAMPLE[:80])
    low, high = mean_interval(x)
    weights = intervals._boot_weights(80, intervals.BOOT_RESAMPLES, intervals.BOOT_SEED)
    counts = np.rint(weights * 80).astype(int)
    t = []
    for row in counts:
        resample = np.repeat(x, row)
        t.append((resample.mean() - x.mean()) / (resample.std(ddof=1) / np.sqrt(80)))
    t_lo, t_hi = np.quantile(t, [0.025, 0.975])
    se = x.std(ddof=1) / np.sqrt(80)
    assert low == pytest.approx(x.mean() - t_hi * se) and high == pytest.approx(x.mean() - t_lo * se)


def test_below_min_interval_the_value_stays_and_the_ci_goes():
    three = summarize_with_ci([0.010, 0.012, 0.011], "tpot_ms", 1000.0)
    assert three["tpot_ms_mean"] == pytest.approx(11.0) and three["tpot_ms_p50"] == pytest.approx(11.0)
    assert three["tpot_ms_mean_ci_low"] is None and three["tpot_ms_p50_ci_low"] is None
    for s in ("p95", "p99"):
        assert three[f"tpot_ms_{s}"] is None and three[f"tpot_ms_{s}_ci_low"] is None
    assert all(v is None for v in summarize_with_ci([0.5, None, float("nan")], "e2e_ms").values())
    assert all(v is None for v in summarize_with_ci([], "e2e_ms").values())
    twenty = summarize_with_ci(SAMPLE[:20], "x")
    assert twenty["x_p95"] == pytest.approx(np.percentile(SAMPLE[:20], 95)) and twenty["x_p95_ci_low"] is None
    assert twenty["x_p50_ci_low"] is not None and twenty["x_mean_ci_low"] is None
    assert summarize_with_ci(SAMPLE[:59], "x")["x_p95_ci_low"] is not None
    assert summarize_with_ci(SAMPLE[:298], "x")["x_p99_ci_low"] is None
    assert summarize_with_ci(SAMPLE[:299], "x")["x_p99_ci_low"] is not None


def test_constant_data_give_no_interval_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = summarize_with_ci([0.005] * 400, "x", 1000.0)
    assert out["x_p50"] == pytest.approx(5.0)
    assert all(out[f"x_{s}_ci_low"] is None and out[f"x_{s}_ci_high"] is None for s in STATS)
    assert interval_part("x", out, "x", 400) == "x " + ", ".join(
        f"{s} (none valid: no spread, or wider than the data)" for s in STATS)


def test_sample_intervals_is_what_summarize_with_ci_prints():
    x = np.asarray(SAMPLE[:64])
    out = summarize_with_ci(x, "x")
    for s, (low, high) in sample_intervals(x[None, :]).items():
        if np.isnan(low[0]):
            assert out[f"x_{s}_ci_low"] is None
        else:
            assert (out[f"x_{s}_ci_low"], out[f"x_{s}_ci_high"]) == pytest.approx((low[0], high[0]))


def _requests(k, gaps, seed, between=0.5, within=0.05):
    rng = np.random.default_rng(seed)
    return [list(np.exp(rng.normal(0, between) + rng.normal(0, within, gaps)) * 0.01) for _ in range(k)]


def test_pooled_ci_counts_requests_not_gaps():
    # 80 requests of 50 gaps, each request's gaps alike: the pooled mean is as uncertain as 80
    # requests' means, not 4,000 independent gaps
    groups = _requests(80, 50, seed=1)
    out = summarize_pooled_with_ci(groups, "itl_ms", 1000.0)
    pooled = [x for g in groups for x in g]
    assert out["itl_ms_mean"] == pytest.approx(1000 * np.mean(pooled))
    assert out["itl_ms_p95"] == pytest.approx(1000 * np.percentile(pooled, 95))
    naive = summarize_with_ci(pooled, "itl_ms", 1000.0)
    by_request = out["itl_ms_mean_ci_high"] - out["itl_ms_mean_ci_low"]
    by_gap = naive["itl_ms_mean_ci_high"] - naive["itl_ms_mean_ci_low"]
    assert by_request > 3 * by_gap
    for s in ("mean", "p50", "p95"):
        assert out[f"itl_ms_{s}_ci_low"] < out[f"itl_ms_{s}"] < out[f"itl_ms_{s}_ci_high"]
    assert out["itl_ms_p99"] is not None and out["itl_ms_p99_ci_low"] is None  # 80 requests < 299
    few = summarize_pooled_with_ci(groups[:6], "itl_ms")
    assert few["itl_ms_p99"] is not None and few["itl_ms_mean_ci_low"] is None
    # six requests that differ by 50 %: the share below the pooled median is too uncertain for an
    # interval inside the data (Woodruff's ends fall outside (0, 1)); six alike requests give one
    assert few["itl_ms_p50_ci_low"] is None
    alike = summarize_pooled_with_ci(_requests(6, 50, seed=3, between=0.02, within=0.3), "itl_ms")
    assert alike["itl_ms_p50_ci_low"] < alike["itl_ms_p50"] < alike["itl_ms_p50_ci_high"]
    assert all(v is None for v in summarize_pooled_with_ci(groups[:1], "itl_ms").values())
    assert all(v is None for v in summarize_pooled_with_ci([[], [None]], "itl_ms").values())


def test_notes_name_what_was_left_out_and_each_rule():
    assert small_sample_part("ttft", 500) is None
    assert small_sample_part("ttft", 3) == "ttft p95, p99 (n=3)"
    assert small_sample_part("itl", 127, 1, "gaps") == "itl mean, p50, p95, p99 (n=127 gaps from 1 request)"
    assert small_sample_part("engine ttft", 3, only=("p50", "p95", "p99")) == "engine ttft p95, p99 (n=3)"
    assert small_sample_note([None, None]) is None
    twenty = summarize_with_ci(SAMPLE[:20], "ttft_ms")
    assert interval_part("ttft", twenty, "ttft_ms", 20) == "ttft mean (n=20 < 60), p95 (n=20 < 59)"
    note = small_sample_note([small_sample_part("ttft", 20), None], [interval_part("ttft", twenty, "ttft_ms", 20)],
                             ["throughput: no interval (too short)"])
    assert note.startswith("not stated, too few samples (minimum n: mean 2, p50 3, p95 20, p99 100")
    assert "ttft p99 (n=20) | no interval (minimum n for one: mean 60, p50 6, p95 59, p99 299" in note
    assert note.endswith("ttft mean (n=20 < 60), p95 (n=20 < 59) | throughput: no interval (too short)")
    itl = summarize_pooled_with_ci(_requests(10, 50, seed=2), "itl_ms")
    assert interval_part("itl", itl, "itl_ms", 500, 10) == \
        "itl mean (requests=10 < 60), p95 (requests=10 < 59), p99 (requests=10 < 299)"


def test_format_with_ci_for_reports():
    from context_research.analysis.stats import format_with_ci

    row = {"ttft_ms_p50": 41.619, "ttft_ms_p50_ci_low": 40.1, "ttft_ms_p50_ci_high": 43.05, "ttft_ms_p95": None,
           "stats_note": "not stated, too few samples ...: ttft p95, p99 (n=3)", "engine_ttft_ms_mean": 37.57,
           "tpot_ms_p50": float("nan"), "goodput_rps": 5.0, "goodput_rps_ci_low": 5.0, "goodput_rps_ci_high": 5.0}
    assert format_with_ci(row, "ttft_ms_p50") == "41.62 [40.10, 43.05]"
    assert format_with_ci(row, "ttft_ms_p95") == "not stated (n < 20)"
    assert format_with_ci(row, "engine_ttft_ms_mean", 1) == "37.6"
    assert format_with_ci({"ttft_ms_p50": None}, "ttft_ms_p50") == "n/a"
    assert format_with_ci(row, "goodput_rps") == "5.00"  # an interval of width zero is not printed
