"""E3 sweep points: refusals (chunked prefill, context, ExampleConnector blocks), rows, deltas, engine settings."""

import pytest

from context_research.disagg.broker import Handoff
from context_research.disagg.gpus import assign_gpus
from context_research.disagg.ledger import KvTiming
from context_research.disagg.phases import engine_servings
from context_research.disagg.plan import (Point, PromptIds, batched_tokens_budget, build_requests, refusal_reason,
                                          sweep_points)
from context_research.disagg.rows import (MODES, POINT_COLUMNS, add_deltas, combine_agreement, empty_row, nixl_counter,
                                          latency_columns, transfer_columns)
from context_research.records import RequestRecord

CFG = {"seed": 0, "prompt_tokens": [256, 1024], "concurrency_levels": [1, 2], "requests_per_point": 2,
       "max_tokens": 16, "warmup_requests": 1, "ttft_slo_ms": 1000, "tpot_slo_ms": 100,
       "connector": "ExampleConnector", "kv_connector_extra_config": {}, "max_num_batched_tokens": None,
       "block_size": None, "bytes_tolerance": 0.02, "prefill_visible_devices": None, "decode_visible_devices": None,
       "shared_gpu_memory_utilization": 0.4, "p2p_kv_ports": [21001, 22001], "p2p_send_type": "PUT_ASYNC",
       "p2p_kv_buffer_bytes": 8e9, "nixl_side_channel_port": 5600, "connector_host": "127.0.0.1"}


def refuse(n, c=1, mode="disaggregated", budget=2048, max_model_len=2048, block=128, connector="ExampleConnector"):
    return refusal_reason(Point(0, n, c), mode, max_tokens=16, max_model_len=max_model_len, budget=budget,
                             connector=connector, block_size=block)


def test_sweep_is_lengths_times_concurrency():
    pts = sweep_points(CFG)
    assert [(p.prompt_tokens, p.concurrency) for p in pts] == [(256, 1), (256, 2), (1024, 1), (1024, 2)]
    assert [p.index for p in pts] == [0, 1, 2, 3]


def test_default_points_are_accepted():
    assert all(refuse(p.prompt_tokens, p.concurrency) is None for p in sweep_points(CFG))


def test_prompt_longer_than_the_token_budget_is_refused_for_disaggregation_only():
    reason = refuse(1024, budget=512)
    assert "max_num_batched_tokens 512" in reason and "first chunk" in reason
    assert "experiments.e3.max_num_batched_tokens" in reason
    assert refuse(1024, budget=512, mode="aggregated") is None


def test_concurrent_prompts_sharing_the_budget_are_refused():
    assert refuse(1024, c=2, budget=2048) is None
    reason = refuse(1024, c=4, budget=2048)
    assert "4 concurrent prompts" in reason and "chunked" in reason


def test_too_long_for_the_context_is_refused_in_both_modes():
    for mode in MODES:
        assert "max_model_len 2048" in refuse(2040, mode=mode)


@pytest.mark.parametrize("n,block,fragment", [
    (129, 128, "multiple of the KV block size"),
    (257, 128, "multiple of the KV block size"),
    (100, 128, "transfer nothing"),
    (17, 16, "multiple of the KV block size"),
])
def test_example_connector_lengths_it_cannot_hand_over(n, block, fragment):
    assert fragment in refuse(n, block=block)
    assert refuse(n, block=block, connector="NixlConnector") is None


def test_budget_defaults_to_max_model_len():
    assert batched_tokens_budget(CFG, 2048) == 2048
    assert batched_tokens_budget({**CFG, "max_num_batched_tokens": 4096}, 2048) == 4096


def rec(i, ttft, tpot, e2e, out=16, error=None):
    return RequestRecord(request_id=f"r{i}", prompt_tokens_target=256, prompt_tokens=256, output_tokens=out,
                         ttft_s=ttft, tpot_s=tpot, e2e_s=e2e, error=error)


def test_rows_deltas_and_transfer_columns():
    p = Point(0, 256, 1)
    agg = empty_row(p, "aggregated", CFG)
    # three requests per mode: the fewest for which a p50 is stated (analysis.stats.MIN_SAMPLES)
    latency_columns(agg, [rec(0, 0.10, 0.01, 0.25), rec(1, 0.11, 0.01, 0.26), rec(2, 0.12, 0.01, 0.27)], 1.5, CFG, 0)
    dis = empty_row(p, "disaggregated", CFG)
    latency_columns(dis, [rec(0, 0.30, 0.012, 0.48), rec(1, 0.32, 0.012, 0.50), rec(2, 0.34, 0.012, 0.52)], 3.0,
                    CFG, 0)
    hs = [handoff(i) for i in range(2)]
    transfer_columns(dis, hs, {"engine_prompt_tokens_by_source": {"external_kv_transfer": 256.0,
                                                                       "local_compute": 256.0}}, 0.02)
    rows = [agg, dis]
    add_deltas(rows)
    assert agg["status"] == dis["status"] == "ok"
    assert dis["delta_ttft_ms_p50"] == pytest.approx(dis["ttft_ms_p50"] - agg["ttft_ms_p50"]) == pytest.approx(210.0)
    assert dis["delta_goodput_rps"] == pytest.approx(1.0 - 2.0)
    assert agg["delta_ttft_ms_p50"] is None
    assert dis["transfer_bytes_per_request"] == 65536 + 176 and dis["analytical_bytes_per_request"] == 65536
    assert dis["bytes_agree"] is True and 0 < dis["bytes_relative_error_max"] < 0.01 and dis["bytes_source"] == "files"
    # Medians of the engine-timed columns (two handoffs: the mean of the two middle values).
    assert dis["kv_save_ms_p50"] == pytest.approx(3.5) and dis["kv_load_ms_p50"] == pytest.approx(10.5)
    assert dis["kv_wait_ms_p50"] == pytest.approx(0.5) and dis["kv_stall_ratio_p50"] == pytest.approx(0.1)
    assert dis["kv_load_gb_s_derived_p50"] == pytest.approx(65536 / 10.0 / 1e6 * 0.5 + 65536 / 11.0 / 1e6 * 0.5)
    assert dis["kv_timing_source"] == "engine: measuring connector around ExampleConnector"
    assert dis["consumer_expected_kv_tokens"] == 256 == dis["external_kv_tokens"] and dis["kv_moved"] is True
    assert dis["consumer_ttft_ms_p50"] == pytest.approx(110.0) and dis["handoffs_kv_moved"] == 2
    assert set(POINT_COLUMNS) >= set(agg) and set(agg) == set(POINT_COLUMNS)


def handoff(i, loaded=128, ok=True):
    timing = KvTiming(kv_save_ms=3.0 + i, kv_load_ms=10.0 + i, kv_wait_ms=0.5, kv_stall_ratio=0.1,
                      external_kv_tokens=loaded, kv_bytes_loaded=loaded * 512.0,
                      source="engine: measuring connector around ExampleConnector")
    return Handoff(f"h{i}", f"r{i}", 256, "ExampleConnector", stored_tokens_expected=128,
                   expected_external_kv_tokens=128, analytical_bytes=65536, bytes_moved=65536 + 176,
                   producer_e2e_s=0.2, consumer_ttft_s=0.1 + 0.02 * i, consumer_e2e_s=0.3, ok=ok, timing=timing)


def _served_row():
    row = empty_row(Point(0, 256, 1), "disaggregated", CFG)
    latency_columns(row, [rec(0, 0.30, 0.012, 0.48), rec(1, 0.32, 0.012, 0.50), rec(2, 0.34, 0.012, 0.52)], 3.0,
                    CFG, 0)
    assert row["status"] == "ok"
    return row


def test_a_point_whose_consumer_recomputed_fails_with_the_reason():
    row = _served_row()
    transfer_columns(row, [handoff(0), handoff(1, loaded=0)], None, 0.02)
    assert row["status"] == "failed" and row["kv_moved"] is False and row["handoffs_kv_moved"] == 1
    assert row["reason"] == ("1 of 2 handoffs did not move the KV: the consumer recomputed the prompt instead of "
                             "loading 128 tokens")


def test_a_point_whose_engine_counter_disagrees_fails():
    row = _served_row()
    transfer_columns(row, [handoff(0), handoff(1)], {"engine_prompt_tokens_by_source": {
        "external_kv_transfer": 128.0, "local_compute": 384.0}}, 0.02)
    assert row["status"] == "failed"
    assert row["reason"] == "the decode engine counted 128 external-KV prompt tokens, 256 expected"


def test_a_failed_request_fails_the_row_with_its_reason():
    row = empty_row(Point(0, 256, 1), "aggregated", CFG)
    latency_columns(row, [rec(0, 0.1, 0.01, 0.2), rec(1, None, None, None, error="HTTP 500: boom")], 1.0, CFG, 0)
    # Reason worded by workload.checks.point_status, the rule shared with E1/E2.
    assert row["status"] == "failed" and row["reason"] == "1 of 2 requests failed (first: HTTP 500: boom)"


def test_an_empty_point_or_a_length_mismatch_fails_the_row():
    row = empty_row(Point(0, 256, 1), "aggregated", CFG)
    latency_columns(row, [], None, CFG, 0)
    assert row["status"] == "failed" and "no request was sent" in row["reason"]
    short = rec(0, 0.1, 0.01, 0.2)
    short.prompt_tokens = 250
    latency_columns(row, [short], 1.0, CFG, 0)
    assert row["status"] == "failed" and "prompt length mismatch" in row["reason"]


def test_row_agreement_is_unknown_when_bytes_were_not_measured():
    def handoff(moved):
        return Handoff("h", "r", 1024, "NixlConnector", analytical_bytes=1024 * 512, bytes_moved=moved,
                       producer_e2e_s=0.1, baseline_prefill_s=0.1, consumer_ttft_s=0.1, consumer_e2e_s=0.2, ok=True)

    row = empty_row(Point(0, 1024, 1), "disaggregated", CFG)
    transfer_columns(row, [handoff(None), handoff(None)], None, 0.02)   # NIXL / P2P: no folder to measure
    assert row["bytes_agree"] is None and row["transfer_bytes_per_request"] is None
    transfer_columns(row, [handoff(1024 * 512), handoff(None)], None, 0.02)
    assert row["bytes_agree"] is None                  # one agrees, one unknown: not "all agree"
    transfer_columns(row, [handoff(1024 * 512), handoff(1)], None, 0.02)
    assert row["bytes_agree"] is False
    assert combine_agreement([True, True]) is True and combine_agreement([]) is None
    assert combine_agreement([None, False]) is False


def test_disagreeing_bytes_are_flagged_on_the_row():
    row = empty_row(Point(0, 1024, 1), "disaggregated", CFG)
    hs = [Handoff("h", "r", 1024, "ExampleConnector", analytical_bytes=896 * 512, bytes_moved=512 * 512,
                  producer_e2e_s=0.1, baseline_prefill_s=0.1, consumer_ttft_s=0.1, consumer_e2e_s=0.2, ok=True)]
    transfer_columns(row, hs, None, 0.02)
    assert row["bytes_agree"] is False and row["bytes_relative_error_max"] < -0.4


def test_engine_servings_carry_connector_budget_and_devices(tmp_path):
    config = {"serving": {"backend": "vllm", "extra_args": ["--foo"], "env": {"A": "1"}, "gpu_memory_utilization": 0.9}}
    model = {"max_model_len": 2048}
    cpu = engine_servings(config, {**CFG, "block_size": 32}, model,
                             assign_gpus("cpu", [], CFG, 0.9, cpus=[0, 1]), tmp_path)
    assert cpu["aggregated"]["max_num_batched_tokens"] == 2048
    assert cpu["aggregated"]["extra_args"] == ["--foo", "--block-size", "32"]
    assert "--kv-transfer-config" not in cpu["aggregated"]["extra_args"]
    for pool, role in (("prefill", "kv_producer"), ("decode", "kv_consumer")):
        args = cpu[pool]["extra_args"]
        assert args[:3] == ["--foo", "--block-size", "32"] and args[3] == "--kv-transfer-config"
        assert f'"kv_role":"{role}"' in args[4] and str(tmp_path) in args[4]
        assert cpu[pool]["env"] == {"A": "1", "VLLM_CPU_OMP_THREADS_BIND": "0" if pool == "prefill" else "1"}
    gpu = engine_servings(config, CFG, model, assign_gpus("cuda", ["g0", "g1"], CFG, 0.9), tmp_path)
    assert gpu["prefill"]["env"] == {"A": "1", "CUDA_VISIBLE_DEVICES": "0"}
    assert gpu["decode"]["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    one = engine_servings(config, CFG, model, assign_gpus("cuda", ["g0"], CFG, 0.9), tmp_path)
    assert one["prefill"]["gpu_memory_utilization"] == one["decode"]["gpu_memory_utilization"] == 0.4
    assert one["aggregated"]["gpu_memory_utilization"] == 0.9
    assert config["serving"]["extra_args"] == ["--foo"]   # the shared config is not mutated


def test_prompts_are_distinct_and_identical_across_modes():
    model = {"hf_config": {"vocab_size": 3072}}
    ids = PromptIds()
    pts = sweep_points(CFG)
    reqs = [r for p in pts for r in build_requests(model, CFG, p, "e3", 3, 16, ids)]
    assert len({tuple(r.prompt) for r in reqs}) == len(reqs)
    assert all(len(r.prompt) == r.prompt_tokens_target for r in reqs)
    fresh = PromptIds()
    again = [r for p in pts for r in build_requests(model, CFG, p, "e3", 3, 16, fresh)]
    assert [r.prompt for r in again] == [r.prompt for r in reqs]   # same config -> same workload


def nixl_handoff(i, n=4096, connector="NixlConnector"):
    timing = KvTiming(kv_save_ms=0.01, kv_load_ms=20.0 + i, kv_load_async=True, kv_wait_ms=21.0, kv_stall_ratio=0.1,
                      external_kv_tokens=n, kv_bytes_loaded=n * 1024.0,
                      source=f"engine: measuring connector around {connector}")
    return Handoff(f"h{i}", f"r{i}", n, connector, stored_tokens_expected=n, expected_external_kv_tokens=n,
                   analytical_bytes=n * 1024, producer_e2e_s=0.1, consumer_ttft_s=0.1, consumer_e2e_s=0.3, ok=True,
                   timing=timing)


def test_nixls_own_byte_count_is_part_of_the_point_verdict():
    tel = {"nixl_bytes_transferred": 2 * 4096 * 1024.0, "nixl_transfers": 2.0, "nixl_xfer_ms_mean": 4.0,
           "nixl_failed_transfers": 0.0}
    row = _served_row()
    transfer_columns(row, [nixl_handoff(0), nixl_handoff(1)], None, 0.02, tel, "decode")
    assert row["status"] == "ok" and row["bytes_agree"] is True and row["bytes_relative_error_max"] == 0.0
    assert row["nixl_counter_engine"] == "decode" and row["analytical_bytes_total"] == 2 * 4096 * 1024
    assert row["nixl_gb_s"] == pytest.approx(2 * 4096 * 1024 / 0.008 / 1e9)
    short = _served_row()
    transfer_columns(short, [nixl_handoff(0), nixl_handoff(1)], None, 0.02,
                     {**tel, "nixl_bytes_transferred": 4096 * 1024.0}, "decode")   # only one of two transfers counted
    assert short["status"] == "failed" and short["bytes_agree"] is False and short["kv_moved"] is False
    assert short["reason"].startswith("KV bytes: NIXL's byte counter (decode engine") and "-50.00%" in short["reason"]
    blind = _served_row()
    transfer_columns(blind, [nixl_handoff(0)], None, 0.02, {}, "decode")
    assert blind["status"] == "ok" and blind["bytes_agree"] is None
    assert blind["kv_bytes_check"].startswith("could not check: the decode engine exported no")


def test_nixls_counter_is_read_where_the_transfer_is_issued():
    pulled, pushed = {"nixl_bytes_transferred": 10.0}, {"nixl_bytes_transferred": 0.0}
    assert nixl_counter("read", pulled, pushed) == (pulled, "decode")
    assert nixl_counter("write", pushed, pulled) == (pulled, "prefill")
    # The issuing engine counted nothing and the other did: used, and the label says so.
    tel, label = nixl_counter("write", pulled, pushed)
    assert tel is pulled and label == "decode (the prefill engine, which issues the transfers, counted none)"
    assert nixl_counter("read", None, None) == ({}, "decode")
