"""One test per status rule of a handoff and of a disaggregated point (disagg.verdict)."""

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
