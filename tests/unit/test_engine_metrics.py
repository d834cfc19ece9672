import pytest

from context_research.engine_metrics import (MetricsSnapshot, engine_summary,
                                             per_request_summary)
from context_research.records import RequestRecord
from context_research.workload.columns import engine_columns

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
    assert s["engine_ttft_sum_s"] == pytest.approx(1.2)
    # A histogram serves its count, sum and exact mean only: no bucket-interpolated percentile.
    assert not [k for k in s if k.startswith("engine_ttft_p")]
    assert s["engine_preemptions"] == 2
    assert s["measured_on"] == "engine"


def test_a_histogram_new_since_before_counts_from_zero():
    empty = MetricsSnapshot.parse("# TYPE vllm:num_preemptions counter\nvllm:num_preemptions_total 0.0\n")
    s = engine_summary(empty, MetricsSnapshot.parse(AFTER))
    assert s["engine_ttft_count"] == 6 and s["engine_ttft_mean_s"] == pytest.approx(1.5 / 6)
    assert s["engine_itl_count"] is None                 # not exported at all
    assert engine_summary(MetricsSnapshot.parse(AFTER), MetricsSnapshot.parse(AFTER))["engine_ttft_count"] == 0


def test_a_scrape_of_a_dead_engine_is_none_and_says_why():
    """A point whose engine died must become a recorded row, not crash the run."""
    import urllib.error

    from context_research.backends.session import EngineSession

    class Backend:
        mode = "real"

        def __init__(self, text):
            self.text = text

        def metrics_text(self):
            if self.text is None:
                raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
            return self.text

    dead = EngineSession(Backend(None), {})
    assert dead.snapshot() is None and "Connection refused" in dead.scrape_error
    alive = EngineSession(Backend(AFTER), {})
    assert alive.snapshot().total("vllm:num_preemptions_total") == 3.0 and alive.scrape_error is None


def _rec(i, ttft_ms=None, queue_ms=None, itl_ms=None, error=None):
    return RequestRecord(request_id=f"r{i}", prompt_tokens_target=16, prompt_tokens=16, output_tokens=4,
                         ttft_s=0.01, e2e_s=0.04, tpot_s=0.01, error=error, engine_ttft_ms=ttft_ms,
                         engine_queue_ms=queue_ms, engine_generation_ms=None if itl_ms is None else 3 * itl_ms,
                         engine_itl_ms=itl_ms)


def test_engine_percentiles_come_from_the_requests_own_metrics_under_the_clients_rules():
    # Ten requests whose engine TTFTs are 10, 20, ..., 100 ms, one failed request (left out) and
    # a histogram whose buckets would have interpolated to something else entirely.
    records = [_rec(i, ttft_ms=10.0 * (i + 1), queue_ms=1.0, itl_ms=2.0) for i in range(10)]
    records.append(_rec(99, ttft_ms=5000.0, error="HTTP 500: boom"))
    engine = engine_summary(MetricsSnapshot.parse(BEFORE), MetricsSnapshot.parse(AFTER))
    cols = engine_columns(engine, records)
    assert cols["engine_per_request_metrics"] == 10
    assert cols["engine_ttft_ms_p50"] == pytest.approx(55.0)          # numpy linear, between requests
    assert cols["engine_ttft_ms_p50_ci_low"] < 55.0 < cols["engine_ttft_ms_p50_ci_high"]
    # p95 / p99 of 10 requests are the maximum, not a tail: not stated (analysis.stats.MIN_SAMPLES)
    assert cols["engine_ttft_ms_p95"] is None and cols["engine_ttft_ms_p99"] is None
    assert cols["engine_percentile_note"] == ("not stated, too few samples (minimum n: mean 2, p50 3, p95 20, "
                                              "p99 100; pooled: 2 requests): engine ttft p95, p99 (n=10)")
    assert cols["engine_ttft_ms_mean"] == pytest.approx(300.0)         # the histogram: a mean only
    many = engine_columns(engine, [_rec(i, ttft_ms=10.0 + i % 37) for i in range(120)])
    assert many["engine_ttft_ms_p95"] is not None and many["engine_ttft_ms_p95_ci_low"] is not None
    assert many["engine_ttft_ms_p99"] is not None and many["engine_ttft_ms_p99_ci_low"] is None
    assert "no interval" in many["engine_percentile_note"] and "p99 (n=120 < 299)" in many["engine_percentile_note"]


def test_without_per_request_metrics_the_percentiles_are_empty_and_say_why():
    engine = engine_summary(MetricsSnapshot.parse(BEFORE), MetricsSnapshot.parse(AFTER))
    cols = engine_columns(engine, [_rec(0), _rec(1)])                 # an old server / simulated backend
    assert cols["engine_per_request_metrics"] == 0
    assert cols["engine_ttft_ms_p50"] is None and cols["engine_ttft_ms_p99"] is None
    assert "per-request" in cols["engine_percentile_note"]
    assert cols["engine_ttft_ms_mean"] == pytest.approx(300.0)         # the histogram mean stays
    assert "not given" in engine_columns(engine)["engine_percentile_note"]


def test_per_request_summary_of_e0():
    s = per_request_summary([_rec(i, ttft_ms=10.0 * (i + 1), queue_ms=0.5, itl_ms=2.0) for i in range(4)])
    assert s["requests_with_metrics"] == 4 and "note" not in s
    assert s["engine_ttft_ms_mean"] == pytest.approx(25.0) and s["engine_ttft_ms_p50"] == pytest.approx(25.0)
    assert s["engine_generation_ms_mean"] == pytest.approx(6.0)
    # four requests: no p95 / p99, no interval (the client's rules), and the note says so
    assert s["engine_itl_ms_p99"] is None and s["engine_ttft_ms_mean_ci_low"] is None
    assert "engine_ttft_ms p95, p99 (n=4)" in s["stats_note"]
    empty = per_request_summary([_rec(0)])
    assert empty["requests_with_metrics"] == 0 and empty["engine_ttft_ms_p50"] is None and empty["note"]


# What vLLM 0.32's /metrics/?name[]=... returns for E2's two gauges (2-core CPU host), plus label
# values a line scan must not trip on (a space, a brace) and a sample of a longer-named metric.
GAUGES_TEXT = """# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="embedded"} 0.125
vllm:kv_cache_usage_perc{engine="1",model_name="a }b c"} 0.25
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="embedded"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 7.0
vllm:num_requests_waiting 2 1712000000000
"""


def test_parse_gauges_reads_what_the_full_parser_reads():
    from context_research.engine_metrics import WATCHED_GAUGES, parse_gauges

    full = MetricsSnapshot.parse(GAUGES_TEXT)
    got = parse_gauges(GAUGES_TEXT)
    assert got == {name: full.total(name) for name in WATCHED_GAUGES}
    assert got == {"vllm:kv_cache_usage_perc": 0.375, "vllm:num_requests_waiting": 5.0}
    # the whole exposition (a server that ignores name[]): the same values, other metrics skipped
    assert parse_gauges(AFTER) == {"vllm:kv_cache_usage_perc": 0.25}
    assert parse_gauges("", WATCHED_GAUGES) == {}


def test_the_gauge_path_reaches_prometheus_clients_filtered_app():
    """vLLM answers /metrics from prometheus-fastapi-instrumentator (every metric, query ignored);
    /metrics/ reaches prometheus_client's app, which honours name[]."""
    from urllib.parse import parse_qs, urlsplit

    from context_research.engine_metrics import WATCHED_GAUGES, gauge_path

    url = urlsplit(gauge_path())
    assert url.path == "/metrics/"
    assert parse_qs(url.query) == {"name[]": list(WATCHED_GAUGES)}


def test_the_vllm_backend_asks_for_the_gauges_alone(monkeypatch, tmp_path):
    import io
    import urllib.request

    from context_research.backends import vllm_server
    from context_research.engine_metrics import gauge_path

    asked = []

    def urlopen(request, timeout=None):
        asked.append(request.full_url)
        return io.BytesIO(GAUGES_TEXT.encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    backend = vllm_server.VllmServerBackend({"name": "m", "path": "m", "max_model_len": 64},
                                            {"device": "cpu"}, tmp_path / "engine.log")
    backend.port = 1234
    assert backend.gauges(("vllm:num_requests_waiting",)) == {"vllm:num_requests_waiting": 5.0}
    assert asked == [backend.base_url + gauge_path(("vllm:num_requests_waiting",))]


def test_the_session_watches_gauges_without_a_full_scrape():
    """While a point runs, E2's sampler reads the two gauges (KV peak, the monitor's waiting queue)
    and never the full /metrics text, whose render and parse slowed the measured requests."""
    import asyncio

    from context_research.backends.session import EngineSession
    from context_research.records import GenerationRequest

    class Backend:
        mode = "real"
        sampled = 0

        def metrics_text(self):
            raise AssertionError("a full /metrics scrape while requests run")

        def gauges(self, names):
            self.sampled += 1
            return {"vllm:kv_cache_usage_perc": 0.1 * self.sampled, "vllm:num_requests_waiting": 2.0}

        async def generate(self, req, t0):
            await asyncio.sleep(0.3)  # long enough for the sampler's first two looks
            return RequestRecord(request_id=req.request_id, prompt_tokens_target=4)

    class Monitor:
        def __init__(self):
            self.samples = []

        def on_sample(self, t, in_flight, waiting):
            self.samples.append((in_flight, waiting))

        def on_completion(self, record):
            pass

        def stop_reason(self):
            return None

    backend, monitor = Backend(), Monitor()
    session = EngineSession(backend, {}, progress=False)
    reqs = [GenerationRequest(request_id=f"q{i}", prompt=[5] * 4, max_tokens=2) for i in range(2)]
    asyncio.run(session.run_requests(reqs, max_concurrency=2, monitor=monitor))
    assert backend.sampled >= 2 and session._kv_peak == pytest.approx(0.1 * backend.sampled)
    assert monitor.samples[0] == (2, 2.0)
    # a backend with only the text (the base class's gauges) is read the same way
    from context_research.backends.base import ServingBackend

    class TextOnly(ServingBackend):
        start = stop = generate = None

        def metrics_text(self):
            return GAUGES_TEXT

    assert TextOnly({}, {}, "x").gauges(("vllm:num_requests_waiting",)) == {"vllm:num_requests_waiting": 5.0}
