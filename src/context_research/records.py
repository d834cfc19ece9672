"""Per-request measurement records shared by every experiment.

All durations are seconds measured on the client with ``time.perf_counter`` unless the field
name says ``engine_``. Token counts come from the server's ``usage`` block, never from the
client's own counting: the client asks for ``continuous_usage_stats``, so every streamed chunk
carries the cumulative ``usage.completion_tokens`` and the client knows how many tokens each
chunk brought.

Why the first chunk can be late: vLLM's API server primes each request's incremental
detokenizer with the whole prompt (``tokenizers.decoders.DecodeStream(ids=prompt_token_ids)``)
and decodes that prefix at the request's FIRST output token, synchronously in its event loop.
That costs time proportional to the prompt (measured inside the API server on the 2-core CPU
host: 0.7 ms at 1K, 4-6 ms at 8K, 6-12 ms at 16K, 19-21 ms at 32K (once 103 ms), 35 ms at 60K
prompt tokens), after the engine has produced the first token. The engine
keeps decoding meanwhile; the tokens it produced arrive right after the late first chunk, merged
into it or into the next chunks (the "opening burst"). Client TTFT rightly includes that delay
(a user waits for it); a decode speed must not.

Client timing definitions (``finalize_timing``):

* TTFT = first token-carrying chunk received - request sent (what a user waits for);
* E2E = last token-carrying chunk received - request sent;
* ``first_chunk_tokens`` = tokens the first chunk carried;
* ``opening_burst_tokens`` = tokens of the opening burst: the first chunk, when it carries more
  than one token or chunks follow it in a burst, plus each chunk right behind it that carries
  more than one token or arrives less than half the stream's typical per-token gap (the median
  over its second half), or less than 1 ms, after the one before: chunks that were already
  waiting. 0 when the first chunk came alone;
* TPOT = (last chunk - anchor chunk) / (output tokens received after the anchor chunk), the
  anchor being the first chunk after the opening burst, or the second chunk when there is none,
  moved past any backlog right behind it (chunks that were waiting: the anchor came late):
  the time per token of the tokens that arrived at the engine's pace, however late the first
  chunk came. The first chunk is never the anchor: a prompt pass shorter than a decode step
  makes no burst yet still delays it. ``vllm bench serve``'s (E2E - TTFT) / (output_tokens - 1)
  counts the burst's tokens (and the first chunk's delay) as decode time after the first chunk
  and came out too short at long prompts (E6 on an H200: 2.6-3.9 ms against the engine's
  7.5-9.5 ms per token). Empty when no token arrived after the anchor (a two-token output, a
  stream that is all burst);
* ITL = gaps between successive token-carrying chunks (a chunk may carry more than one token).

Engine fields (``engine_*_ms``) are vLLM's own per-request timings (``--enable-per-request-metrics``,
the ``metrics`` object of the final usage chunk), in milliseconds as the server reports them;
None when the server sent none (an older vLLM, the flag off, the simulated backend).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# A chunk that arrives less than this fraction of the stream's typical per-token gap, or less than
# BURST_GAP_MIN_S, after the one before was already waiting (part of a burst), not decoded one step
# later: a vLLM decode step takes milliseconds.
BURST_GAP_FRACTION = 0.5
BURST_GAP_MIN_S = 0.001

@dataclass
class GenerationRequest:
    """One request as the workload generator describes it."""

    request_id: str
    prompt: str | list[int]
    max_tokens: int
    prompt_tokens_target: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = True
    chat: bool = False  # send through /v1/chat/completions with the chat template
    # Offset (s) from the start of the run at which the scheduler should send it (None = now).
    scheduled_offset_s: float | None = None
    # Ask vLLM for the generated token ids (``return_token_ids``). Off by default: vLLM then also
    # echoes every PROMPT token id in the first streamed chunk (~7 bytes per token), which the
    # client must receive and parse before it can timestamp the first token, so TTFT would grow
    # with the prompt length for reasons outside the engine. Set it only where ids are compared
    # (E0's determinism check).
    return_token_ids: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestRecord:
    """What one request measured. ``error`` is set (and timings are None) when it failed."""

    request_id: str
    prompt_tokens_target: int | None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    max_tokens: int | None = None
    start_s: float | None = None  # perf_counter at send, relative to the run start
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    token_ids: list[int] | None = None
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    scheduled_offset_s: float | None = None
    # How late the client sent an open-loop request against its schedule (actual - planned send);
    # None when it was sent as soon as a slot was free.
    send_lag_s: float | None = None
    # Tokens the first token-carrying chunk carried, and the tokens of the stream's opening burst
    # (finalize_timing); None when the stream's per-chunk counts were not exact.
    first_chunk_tokens: int | None = None
    opening_burst_tokens: int | None = None
    # vLLM's per-request metrics (ms, engine-core clock): first token - scheduled (queue excluded),
    # scheduled - queued, last token - first token, and (last - first token) / (output tokens - 1).
    engine_ttft_ms: float | None = None
    engine_queue_ms: float | None = None
    engine_generation_ms: float | None = None
    engine_itl_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_row(self, keep_tokens: bool = False) -> dict[str, Any]:
        row = asdict(self)
        row["itl_s"] = ",".join(f"{x:.6f}" for x in self.itl_s)
        if keep_tokens:
            row["token_ids"] = " ".join(map(str, self.token_ids or []))
        else:
            row.pop("token_ids")
        row["ok"] = self.ok
        return row


def typical_token_gap(token_times: list[float], token_counts: list[int]) -> float | None:
    """The stream's typical time per token: the median of (gap / tokens of the chunk) over the
    second half of its chunks, the part an opening burst does not reach; None with one chunk."""
    per_token = [(token_times[j] - token_times[j - 1]) / max(token_counts[j], 1) for j in range(1, len(token_times))]
    tail = sorted(per_token[len(per_token) // 2:])
    if not tail:
        return None
    mid = len(tail) // 2
    return tail[mid] if len(tail) % 2 else (tail[mid - 1] + tail[mid]) / 2


def waiting_gap_limit(token_times: list[float], token_counts: list[int]) -> float:
    """A chunk that arrives less than this after the one before was already waiting:
    max(``BURST_GAP_FRACTION`` x ``typical_token_gap``, ``BURST_GAP_MIN_S``)."""
    typical = typical_token_gap(token_times, token_counts)
    return max(BURST_GAP_FRACTION * typical if typical is not None else 0.0, BURST_GAP_MIN_S)


def opening_burst(token_times: list[float], token_counts: list[int], limit: float | None = None) -> int:
    """How many leading chunks form the opening burst (0: none).

    Chunk j >= 1 belongs to it when every chunk between 0 and j does and it carries more than one
    token or arrives less than max(``BURST_GAP_FRACTION`` x ``typical_token_gap``,
    ``BURST_GAP_MIN_S``) after chunk j-1: it was already waiting. Chunk 0 starts the burst when it
    carries more than one token or chunk 1 belongs to it. A stream delivered all at once (a
    stalled reader) is one burst, and has no TPOT. ``limit``: the stream's ``waiting_gap_limit``
    where the caller has it already.
    """
    if limit is None:
        limit = waiting_gap_limit(token_times, token_counts)
    j = 1
    while j < len(token_times) and (token_counts[j] > 1 or token_times[j] - token_times[j - 1] < limit):
        j += 1
    if j > 1:
        return j
    return 1 if token_counts and token_counts[0] > 1 else 0


def read_whole(record: Any) -> bool:
    """The whole stream (two tokens or more) arrived as one opening burst: the client was not
    reading while the tokens were made (a reader starved of CPU), so it has no TPOT of its own.
    ``record``: a ``RequestRecord`` or anything with its fields (a requests.csv row)."""
    error, n = getattr(record, "error", None), getattr(record, "output_tokens", None)
    failed = error is not None and error == error   # a CSV row's empty error reads as NaN
    return not failed and n is not None and n >= 2 and getattr(record, "opening_burst_tokens", None) == n


def finalize_timing(record: RequestRecord, send_t: float, token_times: list[float],
                    token_counts: list[int]) -> RequestRecord:
    """Derive TTFT, TPOT, ITL and E2E from the send time and the arrival times of streamed chunks.

    ``token_times[i]`` is when chunk *i* (carrying ``token_counts[i]`` new tokens) arrived.
    TTFT = first chunk - send; E2E = last chunk - send; ITL = gaps between successive chunks;
    ``first_chunk_tokens`` = ``token_counts[0]``; ``opening_burst_tokens`` = tokens of the
    ``opening_burst`` chunks; TPOT = (last chunk - anchor) / (tokens after the anchor), the anchor
    being the first chunk after the burst, chunk 1 (the second) without one; None when no token
    arrived after the anchor. See the module docstring for why.

    The counts must be exact (they sum to ``record.output_tokens``, the server's usage count):
    otherwise which chunk carried which tokens is unknown, and ``first_chunk_tokens``,
    ``opening_burst_tokens`` and TPOT stay None rather than assuming one token per chunk.
    """
    if not token_times:
        return record
    record.ttft_s = token_times[0] - send_t
    record.e2e_s = token_times[-1] - send_t
    record.itl_s = [b - a for a, b in zip(token_times, token_times[1:])]
    n_out = record.output_tokens if record.output_tokens is not None else sum(token_counts)
    if len(token_counts) != len(token_times) or sum(token_counts) != n_out or min(token_counts) < 1:
        return record
    record.first_chunk_tokens = token_counts[0]
    limit = waiting_gap_limit(token_times, token_counts)
    burst = opening_burst(token_times, token_counts, limit)
    record.opening_burst_tokens = sum(token_counts[:burst])
    # The first chunk is never the anchor: even without a burst it may be late by part of a decode
    # step (the detokenizer's prompt pass is shorter than a step), which would shorten the span.
    anchor = past_backlog(token_times, max(burst, 1), limit)
    if anchor < len(token_times):
        after = n_out - sum(token_counts[:anchor + 1])
        if after > 0:
            record.tpot_s = (token_times[-1] - token_times[anchor]) / after
    return record


def past_backlog(token_times: list[float], anchor: int, limit: float) -> int:
    """``anchor``, or the last chunk of the backlog right behind it: chunks that arrive less than
    ``limit`` (``waiting_gap_limit``) after the one before were waiting, so the anchor they follow
    arrived late (a reader that got no CPU for tens of ms), and a span from it would leave the wait out and count the waiting tokens as decoded at once. The
    backlog's last chunk is where the stream caught up. (A chunk carrying several tokens after a
    normal gap says only that its own first token waited, not that the anchor was late.)"""
    while anchor + 1 < len(token_times) and token_times[anchor + 1] - token_times[anchor] < limit:
        anchor += 1
    return anchor
