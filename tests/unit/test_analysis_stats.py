import warnings

import numpy as np
import pytest
import scipy.stats

from context_research.analysis import stats
from context_research.analysis.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MIN_SAMPLES, STATS, _stat_matrix,
                                             bootstrap_ci, small_sample_note, small_sample_part, stated_stats,
                                             summarize, summarize_pooled_with_ci, summarize_with_ci)

RNG = np.random.default_rng(7)
SAMPLE = [float(x) for x in RNG.lognormal(mean=-3.0, sigma=0.4, size=120)]  # seconds, ~50 ms


def test_stat_matrix_is_numpy_mean_and_linear_percentiles_ignoring_padding():
    x = np.array(SAMPLE[:37])
    assert _stat_matrix(x) == pytest.approx([np.mean(x), *np.percentile(x, [50, 95, 99])])
    padded = np.array([list(x) + [np.nan] * 5, list(x[:10]) + [np.nan] * 32])
    got = _stat_matrix(padded, axis=-1)
    assert got[:, 0] == pytest.approx([np.mean(x), *np.percentile(x, [50, 95, 99])])
    assert got[:, 1] == pytest.approx([np.mean(x[:10]), *np.percentile(x[:10], [50, 95, 99])])


def test_min_sample_rule():
    assert MIN_SAMPLES == {"mean": 2, "p50": 3, "p95": 20, "p99": 100}
    assert stated_stats(0) == () and stated_stats(1) == ()
    assert stated_stats(2) == ("mean",)
    assert stated_stats(3) == stated_stats(19) == ("mean", "p50")
    assert stated_stats(20) == stated_stats(99) == ("mean", "p50", "p95")
    assert stated_stats(100) == STATS
    assert stated_stats(500, n_groups=1) == ()  # one request: nothing to resample between requests
    assert stated_stats(500, n_groups=2) == STATS


def test_summarize_with_ci_values_are_summarize_values_with_a_bracketing_ci():
    out = summarize_with_ci(SAMPLE, "ttft_ms", 1000.0)
    plain = summarize(SAMPLE, "ttft_ms", 1000.0)
    assert list(out) == [f"ttft_ms_{s}{b}" for s in STATS for b in ("", "_ci_low", "_ci_high")]
    for s in STATS:
        value, low, high = out[f"ttft_ms_{s}"], out[f"ttft_ms_{s}_ci_low"], out[f"ttft_ms_{s}_ci_high"]
        assert value == pytest.approx(plain[f"ttft_ms_{s}"])
        assert low < value < high, s
    # the tail is less certain than the middle
    width = {s: out[f"ttft_ms_{s}_ci_high"] - out[f"ttft_ms_{s}_ci_low"] for s in STATS}
    assert width["p50"] < width["p95"] < width["p99"]


def test_ci_is_deterministic_and_is_scipys_percentile_bootstrap():
    assert summarize_with_ci(SAMPLE, "x") == summarize_with_ci(SAMPLE, "x")
    data = np.array(SAMPLE[:50])
    for stat, fn in (("mean", np.mean), ("p95", lambda a, axis=-1: np.percentile(a, 95, axis=axis))):
        ref = scipy.stats.bootstrap((data,), fn, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                                    confidence_level=0.95, rng=np.random.default_rng(BOOTSTRAP_SEED),
                                    vectorized=True, batch=BOOTSTRAP_RESAMPLES)
        assert bootstrap_ci(SAMPLE[:50], stat) == pytest.approx(
            (ref.confidence_interval.low, ref.confidence_interval.high))
    assert stats.BOOTSTRAP_METHOD == "percentile" and stats.CI_LEVEL == 0.95


def test_too_few_samples_leave_value_and_ci_empty():
    three = summarize_with_ci([0.010, 0.012, 0.011], "tpot_ms", 1000.0)
    assert three["tpot_ms_mean"] == pytest.approx(11.0) and three["tpot_ms_p50"] == pytest.approx(11.0)
    assert three["tpot_ms_mean_ci_low"] <= 11.0 <= three["tpot_ms_mean_ci_high"]
    for s in ("p95", "p99"):
        assert three[f"tpot_ms_{s}"] is None
        assert three[f"tpot_ms_{s}_ci_low"] is None and three[f"tpot_ms_{s}_ci_high"] is None
    one = summarize_with_ci([0.5, None, float("nan")], "e2e_ms")
    assert all(v is None for v in one.values())
    assert all(v is None for v in summarize_with_ci([], "e2e_ms").values())
    nineteen, twenty = summarize_with_ci(SAMPLE[:19], "x"), summarize_with_ci(SAMPLE[:20], "x")
    assert nineteen["x_p95"] is None and twenty["x_p95"] == pytest.approx(np.percentile(SAMPLE[:20], 95))
    assert summarize_with_ci(SAMPLE[:99], "x")["x_p99"] is None
    assert summarize_with_ci(SAMPLE[:100], "x")["x_p99"] is not None
    assert bootstrap_ci(SAMPLE[:19], "p95") is None


def test_constant_data_give_a_zero_width_ci_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = summarize_with_ci([0.005] * 30, "x", 1000.0)
    assert out["x_p50_ci_low"] == pytest.approx(5.0) and out["x_p50_ci_high"] == pytest.approx(5.0)


def test_pooled_ci_resamples_whole_requests():
    # Three slow requests and three fast ones, 50 gaps each: the gaps of one request are alike, so
    # the uncertainty of the pooled mean is that of six requests, not of 300 independent gaps.
    groups = [[0.010 + 0.0001 * (i % 3)] * 50 for i in range(3)] + [[0.020 + 0.0001 * (i % 3)] * 50 for i in range(3)]
    out = summarize_pooled_with_ci(groups, "itl_ms", 1000.0)
    pooled = [x for g in groups for x in g]
    assert out["itl_ms_mean"] == pytest.approx(1000 * np.mean(pooled))
    assert out["itl_ms_p99"] == pytest.approx(1000 * np.percentile(pooled, 99))
    naive = summarize_with_ci(pooled, "itl_ms", 1000.0)
    by_request = out["itl_ms_mean_ci_high"] - out["itl_ms_mean_ci_low"]
    by_gap = naive["itl_ms_mean_ci_high"] - naive["itl_ms_mean_ci_low"]
    assert by_request > 3 * by_gap
    assert all(v is None for v in summarize_pooled_with_ci(groups[:1], "itl_ms").values())
    assert all(v is None for v in summarize_pooled_with_ci([[], [None]], "itl_ms").values())


def test_small_sample_note_names_what_was_left_out_and_the_rule():
    assert small_sample_part("ttft", 500) is None
    assert small_sample_part("ttft", 3) == "ttft p95, p99 (n=3)"
    assert small_sample_part("itl", 127, 1, "gaps") == "itl mean, p50, p95, p99 (n=127 gaps from 1 request)"
    assert small_sample_note([None, None]) is None
    note = small_sample_note([small_sample_part("ttft", 3), None, small_sample_part("e2e", 0)])
    assert note.startswith("not stated, too few samples (minimum n: mean 2, p50 3, p95 20, p99 100")
    assert note.endswith("ttft p95, p99 (n=3); e2e mean, p50, p95, p99 (n=0)")


def test_format_with_ci_for_reports():
    from context_research.analysis.stats import format_with_ci

    row = {"ttft_ms_p50": 41.619, "ttft_ms_p50_ci_low": 40.1, "ttft_ms_p50_ci_high": 43.05, "ttft_ms_p95": None,
           "stats_note": "not stated, too few samples ...: ttft p95, p99 (n=3)", "engine_ttft_ms_mean": 37.57,
           "tpot_ms_p50": float("nan")}
    assert format_with_ci(row, "ttft_ms_p50") == "41.62 [40.10, 43.05]"
    assert format_with_ci(row, "ttft_ms_p95") == "not stated (n < 20)"
    assert format_with_ci(row, "engine_ttft_ms_mean", 1) == "37.6"
    assert format_with_ci({"ttft_ms_p50": None}, "ttft_ms_p50") == "n/a"
