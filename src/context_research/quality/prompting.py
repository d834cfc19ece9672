"""Prompt-side helpers: middle truncation (LongBench/InfiniteBench style) and chat messages."""

from __future__ import annotations

import re
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def truncate_middle(token_ids: Sequence[T], max_len: int) -> tuple[list[T], bool]:
    """Keep the first ``max_len // 2`` and the last ``max_len - max_len // 2`` tokens, as
    LongBench and InfiniteBench do for prompts longer than the model window (the
    instruction at the start and the question at the end both survive).

    Returns ``(ids, truncated)``; ``ids`` is the input unchanged (as a list) when it fits.
    """
    if max_len < 0:
        raise ValueError(f"truncate_middle: max_len must be >= 0, got {max_len}")
    ids = list(token_ids)
    if len(ids) <= max_len:
        return ids, False
    head = max_len // 2
    tail = max_len - head
    return ids[:head] + (ids[len(ids) - tail:] if tail else []), True


_PIECES = re.compile(r"\S+\s*|\s+")


def truncate_middle_text(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> tuple[str, bool]:
    """Middle truncation when only a token *counter* is available: keep the first and last
    ``k`` whitespace-delimited pieces, with the largest ``k`` whose result has
    ``count_tokens(result) <= max_tokens`` (binary search). Use ``truncate_middle`` on token
    ids instead when you hold the tokenizer.
    """
    if count_tokens(text) <= max_tokens:
        return text, False
    pieces = _PIECES.findall(text)

    def join(k: int) -> str:
        if k <= 0:
            return ""
        if 2 * k >= len(pieces):
            return text
        return "".join(pieces[:k]) + "".join(pieces[len(pieces) - k:])

    lo, hi = 0, (len(pieces) + 1) // 2  # join(hi) == text, which does not fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(join(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid
    return join(lo), True


def build_chat_messages(sample: dict, system_prompt: str | None = None, prefill_answer: bool = False) -> list[dict]:
    """OpenAI-style chat messages for a materialized sample.

    The user turn is ``sample["input"]`` verbatim. With ``prefill_answer`` and a non-empty
    ``sample["answer_prefix"]`` (RULER), an assistant turn holding the prefix is appended; the
    server must then continue that message (vLLM: ``continue_final_message=True``,
    ``add_generation_prompt=False``).
    """
    if "input" not in sample:
        raise KeyError("build_chat_messages: sample has no 'input'")
    messages: list[dict] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": sample["input"]})
    prefix = sample.get("answer_prefix") or ""
    if prefill_answer and prefix:
        messages.append({"role": "assistant", "content": prefix})
    return messages
