"""E3 schedulers and route logs against fake pools (a loopback HTTP producer, in-process decoders).

The fake producer behaves like vLLM's ExampleConnector: for each prompt it writes one
safetensors file per layer into ``<storage>/<md5 of the stored token ids>/``.
"""

import asyncio
import json
import struct
import time

import pytest
from aiohttp import web

from context_research.disagg.broker import KvBroker, example_connector_folder, example_connector_stored_tokens
from context_research.disagg.schedulers import (ROUTE_FIELDS, AggregatedScheduler, DisaggregatedScheduler, RouteLog,
                                                 combine_records)
from context_research.io import read_jsonl
from context_research.records import GenerationRequest, RequestRecord, finalize_timing

BLOCK = 16
WIDTH = 64          # kv_heads x head_dim of the fake model
LAYERS = 2
PER_TOKEN = 2 * LAYERS * WIDTH * 2   # K and V, bf16


class FakeBackend:
    mode = "real"

    def __init__(self, base_url=None, name="m", ttft=0.01, tpot=0.001, fail=False):
        self.base_url, self.served_name = base_url, name
        self.ttft, self.tpot, self.fail = ttft, tpot, fail
        self.seen: list[GenerationRequest] = []

    async def generate(self, req, run_t0):
        self.seen.append(req)
        rec = RequestRecord(request_id=req.request_id, prompt_tokens_target=req.prompt_tokens_target,
                            max_tokens=req.max_tokens)
        send = time.perf_counter()
        rec.start_s = send - run_t0
        if self.fail:
            rec.error = "HTTP 500: boom"
            return rec
        await asyncio.sleep(self.ttft)
        times = [time.perf_counter()]
        for _ in range(req.max_tokens - 1):
            await asyncio.sleep(self.tpot)
            times.append(time.perf_counter())
        rec.prompt_tokens, rec.output_tokens = len(req.prompt), req.max_tokens
        return finalize_timing(rec, send, times, [1] * len(times))


class FakeSession:
    def __init__(self, backend):
        self.backend = backend

    async def generate(self, req, run_t0):
        return await self.backend.generate(req, run_t0)


def write_layer(path, tokens):
    payload = tokens * 2 * WIDTH * 2
    header = json.dumps({"kv_cache": {"dtype": "BF16", "shape": [tokens, 2, WIDTH], "data_offsets": [0, payload]}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * payload)


async def start_fake_producer(storage, bodies):
    async def completions(request):
        body = await request.json()
        bodies.append(body)
        prompt = body["prompt"]
        key = example_connector_folder(prompt, BLOCK)
        for layer in range(LAYERS):
            write_layer(storage / key / f"model.layers.{layer}.self_attn.attn.safetensors",
                        example_connector_stored_tokens(len(prompt), BLOCK))
        await asyncio.sleep(0.005)
        return web.json_response({"choices": [{"text": "x"}], "kv_transfer_params": None,
                                  "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def requests(lengths, max_tokens=4):
    return [GenerationRequest(request_id=f"r{i}", prompt=[300 + i] + list(range(1000, 1000 + n - 1)),
                              max_tokens=max_tokens, prompt_tokens_target=n) for i, n in enumerate(lengths)]


def check_route_rows(rows, mode, pools):
    assert rows, "empty route log"
    for row in rows:
        assert set(row) == set(ROUTE_FIELDS)
        assert row["mode"] == mode and row["pool"] in pools
        assert row["t_sent_s"] <= row["t_first_token_s"] <= row["t_done_s"]
        assert row["unix_sent"] > 1.6e9
    assert {r["pool"] for r in rows} == set(pools)


def test_disaggregated_scheduler_hands_off_and_accounts_bytes(tmp_path):
    storage = tmp_path / "kv"
    storage.mkdir()
    bodies: list[dict] = []
    decoder = FakeBackend(name="m")
    reqs = requests([100, 300, 300, 40])

    async def main():
        runner, url = await start_fake_producer(storage, bodies)
        try:
            broker = KvBroker("ExampleConnector", PER_TOKEN, BLOCK, storage)
            sched = DisaggregatedScheduler(FakeSession(FakeBackend(url)), FakeSession(decoder), broker, {})
            out = await sched.serve(reqs, 2, {"prompt_tokens": 300, "concurrency": 2}, baseline_prefill_s=0.001)
            await sched.aclose()
            return out, sched
        finally:
            await runner.cleanup()

    out, sched = asyncio.run(main())
    # The producer got the prompt with max_tokens=1, not streamed; the consumer the same prompt.
    assert all(b["max_tokens"] == 1 and b["stream"] is False and "stream_options" not in b for b in bodies)
    assert sorted(tuple(b["prompt"]) for b in bodies) == sorted(tuple(r.prompt) for r in reqs)
    assert sorted(tuple(r.prompt) for r in decoder.seen) == sorted(tuple(r.prompt) for r in reqs)
    assert [r.request_id for r in out.records] == [r.request_id for r in reqs]
    assert all(r.ok for r in out.records)
    # Handoffs: distinct ids, bytes equal to the files written, analytical within 2% (headers only).
    assert len({h.handoff_id for h in out.handoffs}) == len(reqs)
    for h, r in zip(out.handoffs, reqs):
        stored = example_connector_stored_tokens(len(r.prompt), BLOCK)
        folder = storage / example_connector_folder(r.prompt, BLOCK)
        assert h.bytes_moved == sum(p.stat().st_size for p in folder.iterdir())
        assert h.payload_bytes == stored * PER_TOKEN == h.analytical_bytes
        assert h.as_row()["bytes_agree"] is True
        assert h.t_producer_sent < h.t_producer_replied <= h.t_consumer_sent < h.t_consumer_first_token
        assert h.label == "measured" and h.concurrency == 2
    # Both requests carry the handoff id as their request id: the engines' ledgers are joined on it.
    assert sorted(b["request_id"] for b in bodies) == sorted(h.handoff_id for h in out.handoffs)
    assert sorted(r.extra["request_id"] for r in decoder.seen) == sorted(h.handoff_id for h in out.handoffs)
    # User-visible TTFT covers the producer's time too.
    for rec, pre in zip(out.records, out.prefill):
        assert rec.ttft_s >= pre.e2e_s
        assert rec.e2e_s >= rec.ttft_s and rec.output_tokens == 4
    sched.route_log.write(tmp_path / "routes.jsonl")
    rows = read_jsonl(tmp_path / "routes.jsonl")
    check_route_rows(rows, "disaggregated", ("prefill", "decode"))
    assert len(rows) == 2 * len(reqs)
    for h in out.handoffs:
        pair = [r for r in rows if r["handoff_id"] == h.handoff_id]
        assert [r["pool"] for r in sorted(pair, key=lambda r: r["t_sent_s"])] == ["prefill", "decode"]
        assert pair[0]["request_id"] == pair[1]["request_id"] == h.request_id
        prefill_row = next(r for r in pair if r["pool"] == "prefill")
        decode_row = next(r for r in pair if r["pool"] == "decode")
        assert decode_row["t_sent_s"] >= prefill_row["t_done_s"]   # decode starts after the handoff
    assert all(r["concurrency"] == 2 and r["label"] == "measured" for r in rows)


def test_bytes_are_accounted_after_every_consumer_request_not_inside_the_timed_path(tmp_path):
    storage = tmp_path / "kv"
    storage.mkdir()
    decoder = FakeBackend(name="m")
    reqs = requests([100, 300, 200])
    seen_at_accounting: list[int] = []

    async def main():
        runner, url = await start_fake_producer(storage, [])
        try:
            broker = KvBroker("ExampleConnector", PER_TOKEN, BLOCK, storage)
            account = broker.account_store

            def spy(h):
                seen_at_accounting.append(len(decoder.seen))
                assert h.consumer_e2e_s is not None          # the consumer's request had completed
                account(h)

            broker.account_store = spy
            sched = DisaggregatedScheduler(FakeSession(FakeBackend(url)), FakeSession(decoder), broker, {})
            out = await sched.serve(reqs, 3, baseline_prefill_s=0.001)
            await sched.aclose()
            return out
        finally:
            await runner.cleanup()

    out = asyncio.run(main())
    assert seen_at_accounting == [len(reqs)] * len(reqs)   # once per handoff, after all decode requests
    assert all(h.bytes_moved and h.as_row()["bytes_agree"] is True for h in out.handoffs)


def test_failed_prefill_pool_is_a_failed_record_not_a_crash(tmp_path):
    decoder = FakeBackend()

    async def main():
        broker = KvBroker("ExampleConnector", PER_TOKEN, BLOCK, tmp_path)
        # Nothing listens on port 9: the producer call fails.
        sched = DisaggregatedScheduler(FakeSession(FakeBackend("http://127.0.0.1:9")), FakeSession(decoder), broker, {})
        out = await sched.serve(requests([100]), 1)
        await sched.aclose()
        return out, sched

    out, sched = asyncio.run(main())
    assert not out.records[0].ok and out.records[0].error.startswith("prefill pool:")
    assert decoder.seen == []                       # never routed to the decode pool
    assert out.handoffs[0].ok is False and out.handoffs[0].error.startswith("prefill pool:")
    assert [r["pool"] for r in sched.route_log.rows] == ["prefill"] and sched.route_log.rows[0]["ok"] is False


def test_aggregated_scheduler_one_pool_and_baseline(tmp_path):
    storage = tmp_path / "kv"
    storage.mkdir()
    bodies: list[dict] = []
    reqs = requests([100, 200, 300])

    async def main():
        runner, url = await start_fake_producer(storage, bodies)
        try:
            sched = AggregatedScheduler(FakeSession(FakeBackend(url)))
            served = await sched.serve(reqs, 2, {"prompt_tokens": 100, "concurrency": 2})
            base = await sched.prefill_baseline(reqs, 2, {"prompt_tokens": 100, "concurrency": 2})
            await sched.aclose()
            return served, base, sched
        finally:
            await runner.cleanup()

    served, base, sched = asyncio.run(main())
    assert [r.request_id for r in served.records] == ["r0", "r1", "r2"] and all(r.ok for r in served.records)
    assert served.handoffs == []
    assert all(b.ok and b.e2e_s > 0 and b.prompt_tokens == len(r.prompt) for b, r in zip(base, reqs))
    rows = sched.route_log.rows
    check_route_rows(rows, "aggregated", ("aggregated",))
    assert sorted(r["phase"] for r in rows) == ["prefill+decode"] * 3 + ["prefill_baseline"] * 3
    assert all(r["handoff_id"] is None for r in rows)


def test_route_log_rejects_unknown_pools_and_phases():
    log = RouteLog("aggregated")
    with pytest.raises(ValueError, match="pool"):
        log.add(request_id="r", pool="gpu0", phase="prefill", t_sent_s=0, t_done_s=1)
    with pytest.raises(ValueError, match="phase"):
        log.add(request_id="r", pool="prefill", phase="mystery", t_sent_s=0, t_done_s=1)
    assert log.rows == []                      # a rejected row is not logged
    # Every pool and phase the schedulers route to is accepted.
    for pool, phase in (("aggregated", "prefill+decode"), ("aggregated", "prefill_baseline"),
                        ("prefill", "prefill"), ("decode", "decode")):
        log.add(request_id="r", pool=pool, phase=phase, t_sent_s=0, t_done_s=1)
    assert [(r["pool"], r["phase"]) for r in log.rows] == [("aggregated", "prefill+decode"),
                                                           ("aggregated", "prefill_baseline"),
                                                           ("prefill", "prefill"), ("decode", "decode")]


def test_combine_records_measures_from_the_producer_send():
    from context_research.disagg.schedulers import PrefillResult

    pre = PrefillResult("r", start_s=1.0, e2e_s=0.3)
    dec = RequestRecord("r", 100, prompt_tokens=100, output_tokens=5, start_s=1.35, ttft_s=0.05, e2e_s=0.25,
                        tpot_s=0.05, itl_s=[0.05] * 4)
    rec = combine_records(pre, dec, "r")
    assert rec.ttft_s == pytest.approx(0.40) and rec.e2e_s == pytest.approx(0.60)
    assert rec.tpot_s == 0.05 and rec.start_s == 1.0 and rec.ok
    dec.error = "HTTP 500"
    assert combine_records(pre, dec, "r").error == "decode pool: HTTP 500"
