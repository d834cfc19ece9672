import pytest

from context_research.engine_metrics import MetricsSnapshot, engine_summary, safe_snapshot

BEFORE = """
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 2.0
vllm:time_to_first_token_seconds_count{model_name="m"} 2.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 0.3
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.0
"""
AFTER = """
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{le="0.5",model_name="m"} 6.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 6.0
vllm:time_to_first_token_seconds_count{model_name="m"} 6.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 1.5
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.25
"""


def test_engine_summary_is_the_delta_between_snapshots():
    s = engine_summary(MetricsSnapshot.parse(BEFORE), MetricsSnapshot.parse(AFTER))
    assert s["engine_ttft_count"] == 4
    assert s["engine_ttft_mean_s"] == pytest.approx(1.2 / 4)
    # All 4 new observations fall in (0.1, 0.5]: the median interpolates to 0.1 + 0.4 * 2/4.
    assert s["engine_ttft_p50_s"] == pytest.approx(0.3)
    assert s["engine_preemptions"] == 2
    assert s["measured_on"] == "engine"


def test_a_histogram_new_since_before_counts_from_zero():
    empty = MetricsSnapshot.parse("# TYPE vllm:num_preemptions counter\nvllm:num_preemptions_total 0.0\n")
    s = engine_summary(empty, MetricsSnapshot.parse(AFTER))
    assert s["engine_ttft_count"] == 6 and s["engine_ttft_mean_s"] == pytest.approx(1.5 / 6)
    assert s["engine_itl_count"] is None                 # not exported at all
    assert engine_summary(MetricsSnapshot.parse(AFTER), MetricsSnapshot.parse(AFTER))["engine_ttft_count"] == 0


def test_safe_snapshot_is_none_when_the_engine_does_not_answer():
    class Dead:
        def snapshot(self):
            raise ConnectionError("refused")

    class Alive:
        def snapshot(self):
            return MetricsSnapshot.parse(AFTER)

    assert safe_snapshot(Dead()) is None
    assert safe_snapshot(Alive()).total("vllm:num_preemptions_total") == 3.0
