"""Async streaming client for vLLM's OpenAI-compatible server, timestamping every token chunk."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import aiohttp

from ..config import API_KEY_ENV
from ..records import GenerationRequest, RequestRecord, finalize_timing

# The server closes an idle keep-alive connection after VLLM_HTTP_TIMEOUT_KEEP_ALIVE seconds
# (vLLM's default 5; our launcher raises it, see vllm_server.SERVER_KEEP_ALIVE_S). A client that
# reuses a connection just as the server drops it loses that request with "Server disconnected"
# (seen on an H200 at the first request of a sweep point). Idle connections are dropped on the
# client side well before the server would, so a reused connection is always still open.
CLIENT_KEEPALIVE_S = 2.0


# A server bound to a non-loopback address (serving.allow_remote) requires the key in API_KEY_ENV
# (vLLM --api-key, see config.api_key_for); every request to it carries it as a bearer token.
_FROM_ENV: Any = object()


def api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV, "").strip() or None


def auth_headers(api_key: str | None = _FROM_ENV) -> dict[str, str]:
    """``Authorization: Bearer <key>`` (the key from ``CONTEXT_RESEARCH_API_KEY`` unless given), or
    nothing without a key. vLLM checks it on /v1/*; other routes ignore it."""
    key = api_key_from_env() if api_key is _FROM_ENV else api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def http_session(timeout_s: float, api_key: str | None = _FROM_ENV) -> aiohttp.ClientSession:
    """The aiohttp session every measuring client uses: no connection limit, short keep-alive, and
    the server's API key on every request when there is one (``auth_headers``)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=CLIENT_KEEPALIVE_S),
        headers=auth_headers(api_key),
    )


def build_payload(req: GenerationRequest, model_name: str) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body for one request."""
    common: dict[str, Any] = {
        "model": model_name,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "stream": True,
        # Every chunk carries the cumulative usage (so the client knows how many tokens each chunk
        # brought, see records.finalize_timing); the final usage chunk also carries vLLM's
        # per-request ``metrics`` when the server runs with --enable-per-request-metrics.
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "ignore_eos": req.ignore_eos,
    }
    if req.return_token_ids:
        # Token ids per chunk, so multi-token chunks and non-printing tokens are counted; costs a
        # first chunk that echoes every prompt token id (see GenerationRequest.return_token_ids).
        common["return_token_ids"] = True
    if req.seed is not None:
        common["seed"] = req.seed
    if req.chat:
        messages = req.prompt if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], dict) \
            else [{"role": "user", "content": req.prompt}]
        body = {**common, "messages": messages,
                "chat_template_kwargs": {"enable_thinking": False}}
        body.update(req.extra)
        return "/v1/chat/completions", body
    body = {**common, "prompt": req.prompt}
    body.update(req.extra)
    return "/v1/completions", body


def _chunk_content(chunk: dict[str, Any]) -> tuple[int, str, list[int] | None, str | None]:
    """(new tokens by ids or text, new text, new token ids, finish_reason) of one streamed chunk.

    With token ids (``return_token_ids``) the count is exact. Without them a chunk counts as one
    token if it carries text and none otherwise. ``StreamingClient`` prefers the chunk's own
    cumulative ``usage.completion_tokens`` (continuous usage stats) over this count whenever the
    server sends it: that count is exact for every chunk, a non-printing token included.
    """
    choices = chunk.get("choices") or []
    if not choices:
        return 0, "", None, None
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content") or ""
    ids = choice.get("token_ids")
    n = len(ids) if ids is not None else (1 if text else 0)
    return n, text, ids, choice.get("finish_reason")


# vLLM's PerRequestMetrics field -> RequestRecord field (both ms).
ENGINE_METRICS_FIELDS = {
    "time_to_first_token_ms": "engine_ttft_ms",
    "queue_time_ms": "engine_queue_ms",
    "generation_time_ms": "engine_generation_ms",
    "mean_itl_ms": "engine_itl_ms",
}


def apply_engine_metrics(record: RequestRecord, metrics: dict[str, Any] | None) -> None:
    """Copy the ``metrics`` object of vLLM's final usage chunk (--enable-per-request-metrics) into
    the record; fields the server left out stay None."""
    if not isinstance(metrics, dict):
        return
    for src, dst in ENGINE_METRICS_FIELDS.items():
        value = metrics.get(src)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(record, dst, float(value))


async def sse_lines(stream: aiohttp.StreamReader):
    """The lines of a server-sent-event stream, whatever their length.

    aiohttp's line iterator refuses lines over 512 KiB ("LineTooLong"), and with
    ``return_token_ids`` vLLM's first chunk echoes every prompt token id: about 7 bytes per
    token, so prompts past ~75K tokens broke it (E6 on an H200). Splitting raw chunks ourselves
    has no such limit. The buffer is a bytearray (appended in place, consumed up to the last
    newline), so a line that arrives in many network chunks costs linear, not quadratic, time.
    """
    buffer = bytearray()
    async for chunk in stream.iter_any():
        buffer += chunk
        if b"\n" not in chunk:
            continue
        end = buffer.rindex(b"\n")
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[:end + 1]
        for line in lines:
            yield line
    if buffer:
        yield bytes(buffer)


class StreamingClient:
    """One aiohttp session against one server; ``generate`` measures one request."""

    def __init__(self, base_url: str, model_name: str, timeout_s: float = 900.0, api_key: str | None = _FROM_ENV):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    @property
    def headers(self) -> dict[str, str]:
        """What every request of this client carries besides aiohttp's own headers."""
        return auth_headers(self.api_key)

    async def __aenter__(self) -> "StreamingClient":
        self._session = http_session(self.timeout_s, self.api_key)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def generate(self, req: GenerationRequest, run_t0: float) -> RequestRecord:
        assert self._session is not None, "use 'async with StreamingClient(...)'"
        path, body = build_payload(req, self.model_name)
        record = RequestRecord(request_id=req.request_id, prompt_tokens_target=req.prompt_tokens_target,
                               max_tokens=req.max_tokens, scheduled_offset_s=req.scheduled_offset_s)
        token_times: list[float] = []
        token_counts: list[int] = []
        ids: list[int] = []
        text_parts: list[str] = []
        saw_ids = False
        streamed = 0  # tokens counted so far (cumulative usage when the server sends it)
        send_t = time.perf_counter()
        record.start_s = send_t - run_t0
        try:
            async with self._session.post(self.base_url + path, json=body) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:500]
                    record.error = f"HTTP {resp.status}: {detail}"
                    return record
                async for raw in sse_lines(resp.content):
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    now = time.perf_counter()
                    chunk = json.loads(data)
                    if "error" in chunk and not chunk.get("choices"):
                        record.error = f"server error: {json.dumps(chunk['error'])[:500]}"
                        return record
                    n, text, chunk_ids, finish = _chunk_content(chunk)
                    usage = chunk.get("usage")
                    if chunk.get("choices") and usage and usage.get("completion_tokens") is not None:
                        # Continuous usage: the exact count of tokens this chunk brought.
                        n = usage["completion_tokens"] - streamed
                    streamed += n
                    if chunk_ids is not None:
                        saw_ids = True
                        ids.extend(chunk_ids)
                    if n:
                        token_times.append(now)
                        token_counts.append(n)
                    text_parts.append(text)
                    if finish:
                        record.finish_reason = finish
                    if usage:
                        record.prompt_tokens = usage.get("prompt_tokens")
                        record.output_tokens = usage.get("completion_tokens")
                    if "metrics" in chunk:
                        apply_engine_metrics(record, chunk["metrics"])
        except Exception as exc:  # timeouts, disconnects: a failed request is a recorded row
            record.error = f"{type(exc).__name__}: {exc}"
            return record
        record.text = "".join(text_parts)
        record.token_ids = ids if saw_ids else None
        if record.output_tokens is None:
            record.error = "server sent no usage block; token counts unknown"
            return record
        if not token_times:
            record.error = "stream carried no tokens"
            return record
        return finalize_timing(record, send_t, token_times, token_counts)
