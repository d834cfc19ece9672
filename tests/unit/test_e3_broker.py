"""E3 broker: ExampleConnector's token/folder rules, byte accounting, analytical cross-check."""

import hashlib
import json
import struct

import numpy as np
import pytest

from context_research.analysis.model_math import kv_bytes_per_token
from context_research.disagg.broker import (Handoff, KvBroker, analytical_check, example_connector_folder,
                                            example_connector_lookup_tokens, example_connector_stored_tokens,
                                            expected_external_kv_tokens, folder_bytes, served_kv_dtype)
from context_research.disagg.ledger import KvTiming

QWEN3_8B = {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "torch_dtype": "bfloat16",
            "model_type": "qwen3"}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 3072, "torch_dtype": "bfloat16", "model_type": "qwen3"}


def write_safetensors(path, tokens, width, dtype="BF16", itemsize=2, pad_to=8):
    """A valid safetensors file with one [tokens, 2, width] tensor; returns (file size, payload)."""
    payload = tokens * 2 * width * itemsize
    header = json.dumps({"kv_cache": {"dtype": dtype, "shape": [tokens, 2, width], "data_offsets": [0, payload]}})
    header += " " * (-len(header) % pad_to)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)))
        fh.write(header.encode())
        fh.write(b"\0" * payload)
    return 8 + len(header) + payload, payload


@pytest.mark.parametrize("n,block,stored,lookup", [
    (16384, 16, 16368, 16368),   # FACTS: 16,368 tokens stored for a 16,384-token prompt
    (256, 128, 128, 128),        # CPU blocks of 128: half of a 256-token prompt
    (1024, 128, 896, 896),
    (257, 128, 256, 128),        # n-1 multiple of the block: producer and consumer disagree
    (100, 128, 0, 0),
])
def test_example_connector_token_rules(n, block, stored, lookup):
    assert example_connector_stored_tokens(n, block) == stored
    assert example_connector_lookup_tokens(n, block) == lookup


def test_folder_name_is_md5_of_the_stored_int64_token_ids():
    ids = list(range(300, 600))  # 300 tokens, block 16 -> 288 stored
    expected = hashlib.md5(np.array(ids[:288], dtype=np.int64).tobytes()).hexdigest()
    assert example_connector_folder(ids, 16) == expected
    # Only the stored prefix matters: changing the last (unstored) tokens keeps the folder.
    assert example_connector_folder(ids[:-5] + [1, 2, 3, 4, 5], 16) == expected
    assert example_connector_folder([7] + ids[1:], 16) != expected


def test_folder_name_matches_vllm_torch_hashing():
    torch = pytest.importorskip("torch")
    ids = [int(x) for x in np.random.default_rng(0).integers(256, 3000, size=500)]
    stored = example_connector_stored_tokens(len(ids), 128)
    vllm_way = hashlib.md5(torch.tensor(ids)[:stored].numpy().tobytes()).hexdigest()
    assert example_connector_folder(ids, 128) == vllm_way


def test_folder_bytes_sums_files_and_reads_headers(tmp_path):
    folder = tmp_path / "abc"
    s0, p0 = write_safetensors(folder / "model.layers.0.self_attn.attn.safetensors", 128, 64)
    s1, p1 = write_safetensors(folder / "model.layers.1.self_attn.attn.safetensors", 128, 64)
    (folder / "notes.txt").write_bytes(b"x" * 10)  # any file the connector left counts as moved
    info = folder_bytes(folder)
    assert info["files"] == 3
    assert info["bytes"] == s0 + s1 + 10
    assert info["payload_bytes"] == p0 + p1 == 2 * 128 * 2 * 64 * 2
    assert info["header_bytes"] == info["bytes"] - info["payload_bytes"]
    assert info["stored_dtypes"] == ["BF16"] and info["stored_tokens_measured"] == [128]
    assert folder_bytes(tmp_path / "missing") == {"files": 0, "bytes": 0, "payload_bytes": 0, "header_bytes": 0,
                                                  "stored_dtypes": [], "stored_tokens_measured": []}


def test_broker_accounts_each_handoff_against_its_own_folder(tmp_path):
    per_token = kv_bytes_per_token(TINY, "bfloat16")
    assert per_token == 2 * 2 * 2 * 32 * 2 == 512
    broker = KvBroker("ExampleConnector", per_token, 128, tmp_path)
    prompts = [[300 + i] + list(range(1000, 1000 + n - 1)) for i, n in enumerate((256, 1024))]
    hs = [broker.open(f"r{i}", p) for i, p in enumerate(prompts)]
    assert [h.handoff_id for h in hs] == ["handoff-00000", "handoff-00001"]
    assert [h.stored_tokens_expected for h in hs] == [128, 896]
    assert [h.analytical_bytes for h in hs] == [128 * 512, 896 * 512]
    # The producer writes one file per layer: [tokens, 2 (K,V), kv_heads*head_dim] bf16.
    sizes = []
    for h in hs:
        total = 0
        for layer in range(2):
            size, _ = write_safetensors(tmp_path / h.storage_key / f"model.layers.{layer}.self_attn.attn.safetensors",
                                        h.stored_tokens_expected, 64)
            total += size
        sizes.append(total)
    for h in hs:
        broker.account_store(h)
    assert [h.bytes_moved for h in hs] == sizes
    assert [h.files for h in hs] == [2, 2]
    rows = [h.as_row() for h in hs]
    assert all(r["bytes_agree"] for r in rows)
    assert all(0 < r["bytes_relative_error"] < 0.01 for r in rows)   # only the headers are extra
    assert broker.storage_total_bytes() == sum(sizes)


def test_truncated_store_is_flagged(tmp_path):
    """The chunked-prefill bug stores only the first chunk: measured bytes far below analytical."""
    broker = KvBroker("ExampleConnector", 512, 128, tmp_path)
    h = broker.open("r", list(range(500, 1524)))   # 1024 tokens -> 896 expected
    for layer in range(2):
        write_safetensors(tmp_path / h.storage_key / f"l{layer}.safetensors", 512, 64)
    broker.account_store(h)
    row = h.as_row()
    assert row["bytes_agree"] is False
    assert row["bytes_relative_error"] == pytest.approx((h.bytes_moved - 896 * 512) / (896 * 512))
    assert row["bytes_relative_error"] < -0.4


@pytest.mark.parametrize("measured,analytical,agree", [
    (1020, 1000, True), (1000, 1000, True), (980, 1000, True),
    (1021, 1000, False), (979, 1000, False), (None, 1000, None), (1000, None, None), (1000, 0, None),
])
def test_analytical_check_flags_above_two_percent(measured, analytical, agree):
    assert analytical_check(measured, analytical)["bytes_agree"] is agree


def test_analytical_check_tolerance_is_configurable():
    assert analytical_check(1040, 1000, tolerance=0.05)["bytes_agree"] is True
    assert analytical_check(1040, 1000)["bytes_agree"] is False


def test_facts_16k_prompt_on_qwen3_8b():
    """FACTS: 2,413,562,976 bytes stored for 16,368 tokens x 147,456 B (+ 36 headers)."""
    per_token = kv_bytes_per_token(QWEN3_8B, "bfloat16")
    assert per_token == 147_456
    analytical = example_connector_stored_tokens(16384, 16) * per_token
    check = analytical_check(2_413_562_976, analytical)
    assert check["bytes_agree"] and 0 < check["bytes_relative_error"] < 1e-5


def test_handoff_row_takes_its_timings_from_the_engine_ledger():
    timing = KvTiming(kv_save_ms=2.0, kv_load_ms=4.0, kv_wait_ms=0.25, external_kv_tokens=896,
                      kv_bytes_loaded=896 * 1024.0, source="engine: measuring connector around ExampleConnector",
                      t_producer_lookup=10.002, t_producer_finished=10.050, t_consumer_lookup=10.054,
                      t_consumer_kv_ready=10.060)
    h = Handoff("h", "r", 1024, "ExampleConnector", stored_tokens_expected=896, expected_external_kv_tokens=896,
                analytical_bytes=896 * 1024, bytes_moved=896 * 1024 + 36, consumer_ttft_s=0.02, ok=True,
                timing=timing, t_producer_sent=10.000, t_producer_replied=10.051, t_consumer_sent=10.052,
                t_consumer_first_token=10.072)
    row = h.as_row()
    assert row["kv_save_ms"] == 2.0 and row["kv_load_ms"] == 4.0 and row["kv_wait_ms"] == 0.25
    assert row["kv_timing_source"] == "engine: measuring connector around ExampleConnector"
    assert row["kv_load_gb_s_derived"] == pytest.approx(896 * 1024 / 4.0 / 1e6)
    assert row["bytes_source"] == "files" and row["bytes_agree"] is True
    assert row["kv_moved"] is True and row["kv_check"].startswith("KV moved")
    # The waterfall: consecutive segments from the producer send to the consumer's first token.
    wf = {k: v for k, v in row.items() if k.startswith("waterfall_")}
    assert wf == pytest.approx({"waterfall_producer_frontend_ms": 2.0, "waterfall_producer_engine_ms": 48.0,
                                "waterfall_producer_reply_ms": 1.0, "waterfall_broker_ms": 1.0,
                                "waterfall_consumer_frontend_ms": 2.0, "waterfall_kv_wait_load_ms": 6.0,
                                "waterfall_first_token_ms": 12.0})
    assert sum(wf.values()) == pytest.approx(72.0)   # = consumer first token - producer send
    assert not any(k.startswith("t_") or k == "timing" for k in row)


def test_tokens_times_bytes_per_token_is_never_a_byte_check():
    """issue 27: for NIXL the handoff compared loaded tokens x bytes per token with tokens x bytes
    per token (relative error exactly 0.0) and called it an engine measurement. Its bytes are now
    checked per point against NIXL's own counter; the handoff rests on the tokens it loaded."""
    nixl = Handoff("h", "r", 1024, "NixlConnector", stored_tokens_expected=1024, expected_external_kv_tokens=1024,
                   analytical_bytes=1024 * 1024, ok=True,
                   timing=KvTiming(external_kv_tokens=1024, kv_bytes_loaded=1024 * 1024.0))
    assert nixl.measured_bytes() == (None, "per point: NIXL's byte counter")
    row = nixl.as_row()
    assert row["bytes_agree"] is None and row["bytes_relative_error"] is None
    assert row["kv_moved"] is True and "bytes are checked per point" in row["kv_check"]
    wrong = Handoff(**{**nixl.__dict__, "timing": KvTiming(external_kv_tokens=512, kv_bytes_loaded=512 * 1024.0)})
    assert wrong.as_row()["kv_moved"] is False        # the token count, which the derived bytes follow, still fails
    bare = Handoff("h", "r", 1024, "NixlConnector", analytical_bytes=1024, ok=True)
    row = bare.as_row()
    assert row["bytes_agree"] is None
    assert row["kv_timing_source"] == "not measured: no ledger joined" and row["kv_moved"] is False
    p2p = Handoff("h", "r", 1024, "P2pNcclConnector", analytical_bytes=1024, ok=True)
    assert p2p.measured_bytes() == (None, "not measured")


def test_expected_external_tokens_per_connector():
    assert expected_external_kv_tokens("ExampleConnector", 1024, 16) == 1008   # ((n-2)//16)*16
    assert expected_external_kv_tokens("NixlConnector", 1024, 16) == 1024
    assert expected_external_kv_tokens("P2pNcclConnector", 1024, 16) is None


def test_served_kv_dtype_sources():
    assert served_kv_dtype({"cache_dtype": "fp8"}, "dtype=torch.bfloat16", TINY) == (
        "fp8", "engine cache_config_info.cache_dtype")
    dtype, src = served_kv_dtype({"cache_dtype": "auto"}, "... with config: model='m', dtype=torch.float16, x", TINY)
    assert dtype == "float16" and "engine log" in src
    assert served_kv_dtype({}, "", {"torch_dtype": "float32"}) == ("float32", "model config.json")
    assert kv_bytes_per_token(TINY, "fp8") == 256


def test_connectors_without_a_folder_get_only_the_analytical_size(tmp_path):
    broker = KvBroker("NixlConnector", 512, 16, None)
    h = broker.open("r", list(range(1000)))
    # NIXL moves whole blocks: 1000 tokens fill 63 blocks of 16, the last one partly.
    assert h.storage_key is None and h.stored_tokens_expected == 1008 and h.analytical_bytes == 1008 * 512
    assert h.expected_external_kv_tokens == 1000
    assert KvBroker("NixlPushConnector", 512, 16, None).open("r", list(range(1024))).analytical_bytes == 1024 * 512
    assert KvBroker("P2pNcclConnector", 512, 16, None).open("r", list(range(1000))).analytical_bytes == 1000 * 512
    broker.account_store(h)
    row = h.as_row()
    assert row["bytes_moved"] is None and row["bytes_agree"] is None
