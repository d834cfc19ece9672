"""The streaming client's timing math and SSE handling, against an in-process aiohttp server."""

import asyncio
import json

import pytest
from aiohttp import web

from context_research.backends.client import StreamingClient, build_payload
from context_research.records import GenerationRequest, RequestRecord, finalize_timing


def test_timing_math_follows_vllm_bench_definitions():
    rec = RequestRecord(request_id="r", prompt_tokens_target=4, output_tokens=5)
    finalize_timing(rec, send_t=10.0, token_times=[10.5, 10.6, 10.8, 11.3], token_counts=[1, 1, 2, 1])
    assert rec.ttft_s == pytest.approx(0.5)
    assert rec.e2e_s == pytest.approx(1.3)
    assert rec.tpot_s == pytest.approx((1.3 - 0.5) / 4)   # (E2E - TTFT) / (output tokens - 1)
    assert rec.itl_s == pytest.approx([0.1, 0.2, 0.5])


def test_single_token_output_has_no_tpot():
    rec = RequestRecord(request_id="r", prompt_tokens_target=4, output_tokens=1)
    finalize_timing(rec, 0.0, [0.2], [1])
    assert rec.ttft_s == pytest.approx(0.2) and rec.tpot_s is None and rec.itl_s == []


def test_chat_payload_turns_thinking_off():
    path, body = build_payload(GenerationRequest("c", "hello", 8, chat=True), "m")
    assert path == "/v1/chat/completions"
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    path, body = build_payload(GenerationRequest("p", [1, 2, 3], 8), "m")
    assert path == "/v1/completions" and body["prompt"] == [1, 2, 3]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}


def test_payload_asks_for_token_ids_only_when_the_request_does():
    # Default off: vLLM would echo every prompt token id in the first chunk and inflate client TTFT.
    _, body = build_payload(GenerationRequest("p", [1, 2, 3], 8), "m")
    assert "return_token_ids" not in body
    _, body = build_payload(GenerationRequest("c", "hi", 8, chat=True), "m")
    assert "return_token_ids" not in body
    _, body = build_payload(GenerationRequest("p", [1, 2, 3], 8, return_token_ids=True), "m")
    assert body["return_token_ids"] is True
    _, body = build_payload(GenerationRequest("c", "hi", 8, chat=True, return_token_ids=True), "m")
    assert body["return_token_ids"] is True


def _server(chunks, delay_s, status=200):
    async def handler(request):
        body = await request.json()
        if status != 200:
            return web.Response(status=status, text="model not found")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in chunks:
            await asyncio.sleep(delay_s)
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application(client_max_size=64 * 2**20)  # a 131K-token prompt is ~1 MB of JSON
    app.router.add_post("/v1/completions", handler)
    return app


async def _run(app, req):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with StreamingClient(f"http://127.0.0.1:{port}", "m", timeout_s=30) as client:
            return await client.generate(req, run_t0=0.0)
    finally:
        await runner.cleanup()


def test_stream_is_timed_per_chunk_and_counts_come_from_usage():
    chunks = [
        {"choices": [{"index": 0, "text": "a", "token_ids": [5]}]},
        {"choices": [{"index": 0, "text": "", "token_ids": [6]}]},   # non-printing token still counts
        {"choices": [{"index": 0, "text": "bc", "token_ids": [7, 8], "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]
    rec = asyncio.run(_run(_server(chunks, 0.05), GenerationRequest("r", [1, 2, 3], 4, prompt_tokens_target=3,
                                                                    return_token_ids=True)))
    assert rec.ok, rec.error
    assert rec.token_ids == [5, 6, 7, 8] and rec.text == "abc"
    assert rec.prompt_tokens == 3 and rec.output_tokens == 4 and rec.finish_reason == "length"
    assert len(rec.itl_s) == 2                       # three token-carrying chunks
    assert rec.ttft_s >= 0.05 and rec.e2e_s >= rec.ttft_s + 0.1
    assert rec.tpot_s == pytest.approx((rec.e2e_s - rec.ttft_s) / 3)


def test_without_token_ids_chunks_are_counted_by_text_and_totals_by_usage():
    chunks = [
        {"choices": [{"index": 0, "text": "a"}]},
        {"choices": [{"index": 0, "text": ""}]},                     # non-printing: not timed
        {"choices": [{"index": 0, "text": "bc", "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]
    rec = asyncio.run(_run(_server(chunks, 0.05), GenerationRequest("r", [1, 2, 3], 4, prompt_tokens_target=3)))
    assert rec.ok, rec.error
    assert rec.token_ids is None and rec.text == "abc" and rec.output_tokens == 4
    assert len(rec.itl_s) == 1                       # two text-carrying chunks
    assert rec.tpot_s == pytest.approx((rec.e2e_s - rec.ttft_s) / 3)   # usage count, not chunk count


def test_http_error_becomes_a_failed_record():
    rec = asyncio.run(_run(_server([], 0, status=404), GenerationRequest("r", [1], 4)))
    assert not rec.ok and rec.error.startswith("HTTP 404") and rec.ttft_s is None


def test_missing_usage_is_an_error_not_a_guess():
    chunks = [{"choices": [{"index": 0, "text": "a", "token_ids": [5]}]}]
    rec = asyncio.run(_run(_server(chunks, 0), GenerationRequest("r", [1], 4)))
    assert not rec.ok and "usage" in rec.error


def test_first_chunk_echoing_a_131k_token_prompt_is_read():
    # With return_token_ids vLLM's first chunk repeats every prompt token id: ~1 MB of JSON on
    # one SSE line for a 131K prompt, past aiohttp's 512 KiB line limit (E6 failed on it).
    prompt = list(range(100_000, 100_000 + 131_072))
    chunks = [
        {"choices": [{"index": 0, "text": "", "prompt_token_ids": prompt}]},
        {"choices": [{"index": 0, "text": "a", "token_ids": [5]}]},
        {"choices": [{"index": 0, "text": "b", "token_ids": [6], "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": len(prompt), "completion_tokens": 2}},
    ]
    assert len(json.dumps(chunks[0])) > 2 * 524288
    rec = asyncio.run(_run(_server(chunks, 0), GenerationRequest("r", prompt, 2, prompt_tokens_target=len(prompt),
                                                                 return_token_ids=True)))
    assert rec.ok, rec.error
    assert rec.prompt_tokens == 131_072 and rec.token_ids == [5, 6] and rec.text == "ab"


def test_sse_lines_split_across_and_within_chunks():
    from context_research.backends.client import sse_lines

    class Stream:
        def __init__(self, parts):
            self.parts = parts

        async def iter_any(self):
            for p in self.parts:
                yield p

    async def collect(parts):
        return [line async for line in sse_lines(Stream(parts))]

    parts = [b"data: {\"a\"", b": 1}\n\ndata: x\n", b"data: tail-without-newline"]
    assert asyncio.run(collect(parts)) == [b'data: {"a": 1}', b"", b"data: x", b"data: tail-without-newline"]


def test_sse_lines_long_line_in_many_pieces():
    from context_research.backends.client import sse_lines

    class Stream:
        async def iter_any(self):
            line = b"data: " + b"7" * 200_000
            for i in range(0, len(line), 100):
                yield line[i:i + 100]
            yield b"\ndata: [DONE]\n"

    async def collect():
        return [line async for line in sse_lines(Stream())]

    lines = asyncio.run(collect())
    assert lines == [b"data: " + b"7" * 200_000, b"data: [DONE]"]
    assert all(type(line) is bytes for line in lines)
