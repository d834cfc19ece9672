"""One test per status rule of a handoff and of a disaggregated point (disagg.verdict)."""

import pytest

from context_research.disagg.verdict import handoff_verdict, point_verdict


def row(**over):
    base = {"ok": True, "error": None, "bytes_agree": True, "bytes_relative_error": 0.001, "bytes_source": "files",
            "expected_external_kv_tokens": 1008, "external_kv_tokens": 1008, "connector": "ExampleConnector"}
    base.update(over)
    moved, why = handoff_verdict(base)
    base["kv_moved"], base["kv_check"] = moved, why
    return base


def test_a_handoff_counts_when_bytes_agree_and_the_expected_tokens_were_loaded():
    r = row()
    assert r["kv_moved"] is True and r["kv_check"].startswith("KV moved")


def test_a_failed_consumer_request_does_not_count():
    r = row(ok=False, error="decode pool: HTTP 500")
    assert r["kv_moved"] is False and r["kv_check"] == "consumer request failed: decode pool: HTTP 500"


def test_unmeasured_bytes_do_not_count():
    r = row(bytes_agree=None, bytes_source="not measured")
    assert r["kv_moved"] is False and "not measured" in r["kv_check"]


def test_disagreeing_bytes_do_not_count():
    r = row(bytes_agree=False, bytes_relative_error=0.5)
    assert r["kv_moved"] is False and "+50.00%" in r["kv_check"]


def test_a_consumer_that_recomputed_does_not_count():
    r = row(external_kv_tokens=0)
    assert r["kv_moved"] is False
    assert r["kv_check"] == "the consumer recomputed the prompt instead of loading 1008 tokens"


def test_a_partial_load_does_not_count():
    r = row(external_kv_tokens=992)
    assert r["kv_moved"] is False and r["kv_check"] == "the consumer loaded 992 instead of loading 1008 tokens"


def test_no_ledger_entry_or_no_expected_count_does_not_count():
    assert row(external_kv_tokens=None)["kv_moved"] is False
    unknown = row(expected_external_kv_tokens=None, connector="P2pNcclConnector")
    assert unknown["kv_moved"] is False and "P2pNcclConnector" in unknown["kv_check"]


def test_a_point_is_ok_when_every_handoff_moved_and_the_engine_agrees():
    assert point_verdict([row(), row()], 2016.0) == (True, None)
    assert point_verdict([row(), row()], None) == (True, None)   # counter not exported: per-request rule only


def test_a_point_with_one_handoff_not_moved_fails_with_its_reason():
    ok, reason = point_verdict([row(), row(external_kv_tokens=0)], None)
    assert ok is False
    assert reason == "1 of 2 handoffs did not move the KV: the consumer recomputed the prompt instead of loading 1008 tokens"


def test_a_point_whose_engine_counter_disagrees_fails():
    ok, reason = point_verdict([row(), row()], 1008.0)
    assert ok is False and reason == "the decode engine counted 1008 external-KV prompt tokens, 2016 expected"


def test_a_point_without_handoffs_fails():
    assert point_verdict([], 0.0) == (False, "no KV handoff was made")


# -- the point's byte check (NIXL's own counter against the analytical count) ------------------------
import numpy as np  # noqa: E402

from context_research.disagg.broker import KvBroker  # noqa: E402
from context_research.disagg.ledger import KvTiming  # noqa: E402
from context_research.disagg.verdict import point_bytes_check  # noqa: E402

PER_TOKEN = 147_456  # Qwen3-8B, bf16: 2 x 36 layers x 8 KV heads x 128 x 2 bytes


def nixl_rows(lengths, block, connector="NixlConnector"):
    """Handoff rows as the broker builds them for NIXL, each consumer having loaded its prompt."""
    broker = KvBroker(connector, PER_TOKEN, block, None)
    rows = []
    for n in lengths:
        h = broker.open(f"r{n}", list(range(n)))
        h.ok, h.timing = True, KvTiming(external_kv_tokens=n, kv_bytes_loaded=n * PER_TOKEN * 1.0)
        rows.append(h.as_row())
    return rows


def moved_by_nixl(n, block, layers_missing=0, layers=36):
    """What NIXL really moves for one handoff: every block the prompt touches, per layer K and V."""
    blocks = -(-n // block)
    return blocks * block * PER_TOKEN * (layers - layers_missing) / layers


def test_nixls_counter_agreeing_passes_the_point_and_says_what_it_compared():
    rows = nixl_rows([4096, 4096], 16)
    check = point_bytes_check("NixlConnector", rows, 2 * 4096 * PER_TOKEN, "decode", 0.02)
    assert check["bytes_agree"] is True and check["bytes_relative_error_max"] == 0.0
    assert check["bytes_source"] == "engine counter vllm:nixl_bytes_transferred (decode engine)"
    assert check["analytical_bytes_total"] == 2 * 4096 * PER_TOKEN
    assert check["kv_bytes_check"].startswith("NIXL's byte counter (decode engine: 1,207,959,552 bytes")
    assert point_verdict([row(), row()], 2016.0, check) == (True, None)


def test_a_disagreement_of_nixls_counter_fails_the_point():
    rows = nixl_rows([4096], 16, "NixlPushConnector")
    check = point_bytes_check("NixlPushConnector", rows, 4096 * PER_TOKEN * 35 / 36, "prefill", 0.02)  # a layer short
    assert check["bytes_agree"] is False and check["bytes_relative_error_max"] == pytest.approx(-1 / 36)
    ok, reason = point_verdict(rows, 4096.0, check)
    assert ok is False and reason.startswith("KV bytes: NIXL's byte counter (prefill engine") and "DISAGREE" in reason
    assert "-2.78%" in reason


def test_without_nixls_counter_the_point_says_it_could_not_check():
    rows = nixl_rows([4096], 16)
    check = point_bytes_check("NixlConnector", rows, None, "decode", 0.02)
    assert check["bytes_agree"] is None and check["bytes_source"] is None
    assert check["kv_bytes_check"] == ("could not check: the decode engine exported no vllm:nixl_bytes_transferred "
                                       "over the point")
    assert point_verdict(rows, 4096.0, check) == (True, None)     # not failed, and not a byte check it never had
    other = point_bytes_check("P2pNcclConnector", rows, None, None, 0.02)
    assert other["kv_bytes_check"] == "could not check: P2pNcclConnector reports no count of the bytes it moved"


def test_files_are_judged_per_handoff_and_summed_up_per_point():
    files = [row(), row(bytes_relative_error=-0.004)]
    check = point_bytes_check("ExampleConnector", files, None, None, 0.02)
    assert check["bytes_source"] == "files" and check["bytes_agree"] is True
    assert check["bytes_relative_error_max"] == -0.004
    bad = point_bytes_check("ExampleConnector", files + [row(bytes_agree=False, bytes_relative_error=0.5)], None,
                            None, 0.02)
    assert bad["bytes_agree"] is False and bad["bytes_relative_error_max"] == 0.5
    assert "DISAGREE" in bad["kv_bytes_check"]


@pytest.mark.parametrize("connector", ["NixlConnector", "NixlPushConnector"])
def test_the_byte_verdict_against_simulated_transfers_of_known_truth(connector):
    """600 simulated points: a NIXL that moves what it should (every block the prompt touches,
    any length, block size and concurrency) is never called; one that loses a layer (-2.8%), half
    the blocks or counts a transfer twice is always called. A flaw within the tolerance (2%: one
    block of a long prompt) passes, as the tolerance says."""
    rng = np.random.default_rng(27)
    false_calls = missed = 0
    for _ in range(600):
        block = int(rng.choice([16, 32, 128]))
        lengths = [int(x) for x in rng.integers(17, 20_000, size=int(rng.integers(1, 5)))]
        rows = nixl_rows(lengths, block, connector)
        truth = sum(moved_by_nixl(n, block) for n in lengths)
        false_calls += point_bytes_check(connector, rows, truth, "decode", 0.02)["bytes_agree"] is not True
        for flawed in (sum(moved_by_nixl(n, block, layers_missing=1) for n in lengths),
                       sum(moved_by_nixl(n, block) / 2 for n in lengths), 2 * truth):
            missed += point_bytes_check(connector, rows, flawed, "decode", 0.02)["bytes_agree"] is not False
    assert false_calls == 0 and missed == 0
    long = nixl_rows([16_384], 16, connector)
    one_block_short = moved_by_nixl(16_384, 16) - 16 * PER_TOKEN
    assert point_bytes_check(connector, long, one_block_short, "decode", 0.02)["bytes_agree"] is True
