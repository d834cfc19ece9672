"""Per-request measurement records shared by every experiment.

All durations are seconds measured on the client with ``time.perf_counter`` unless the field
name says ``engine_``. Token counts come from the server's ``usage`` block, never from the
client's own counting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


def finalize_timing(record: RequestRecord, send_t: float, token_times: list[float],
                    token_counts: list[int]) -> RequestRecord:
    """Derive TTFT, TPOT, ITL and E2E from the send time and the arrival times of streamed chunks.

    ``token_times[i]`` is when chunk *i* (carrying ``token_counts[i]`` new tokens) arrived.
    Definitions follow ``vllm bench serve``: TTFT = first chunk − send; E2E = last chunk − send;
    TPOT = (E2E − TTFT) / (output_tokens − 1); ITL = gaps between successive chunks.
    """
    if not token_times:
        return record
    record.ttft_s = token_times[0] - send_t
    record.e2e_s = token_times[-1] - send_t
    record.itl_s = [b - a for a, b in zip(token_times, token_times[1:])]
    n_out = record.output_tokens if record.output_tokens is not None else sum(token_counts)
    if n_out and n_out > 1:
        record.tpot_s = (record.e2e_s - record.ttft_s) / (n_out - 1)
    return record
