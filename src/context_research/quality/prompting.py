"""Prompt-side helpers: middle truncation (LongBench/InfiniteBench style), chat messages, the
served model's tokenizer, and fitting a sample's chat prompt into the window (``ChatPrompter``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from ..errors import ConfigError

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


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(source: str):
    """The served model's tokenizer (``tokenizer_source``), or a ``ConfigError`` naming the key."""
    from transformers import AutoTokenizer  # heavy (torch): only when a tokenizer is needed

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ConfigError(f"cannot load the served model's tokenizer from {source!r} (models.<profile>.tokenizer "
                          f"or .source): {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None


def token_counter(tokenizer) -> Callable[[str], int]:
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


# ----------------------------------------------------------------------------- fitted prompts


@dataclass
class FittedPrompt:
    """The prompt actually sent (chat messages, or text without a chat template) and what
    fitting it cost."""

    prompt: list[dict] | str
    continue_final: bool
    prompt_tokens: int | None          # templated length by our tokenizer
    original_tokens: int | None        # before truncation
    truncated: bool = False
    error: str | None = None


def upstream_middle_cut(tokenizer, ids: Sequence[int], budget: int, style: str | None) -> str:
    """The text of ``ids`` cut to ``budget`` tokens in the middle, as the sample's suite does it:

    * ``longbench`` (pred.py): ``half = budget // 2``; ``decode(ids[:half]) + decode(ids[-half:])``
      with special tokens skipped (an odd budget keeps ``budget - 1`` tokens);
    * ``infinitebench`` (eval_utils.truncate_input): ``decode(ids[:budget // 2] + ids[-budget // 2:])``
      (Python's floor division: the tail takes the odd token);
    * otherwise (RULER, which never truncates upstream): ``truncate_middle``, decoded once.
    """
    if style == "longbench":
        half = budget // 2
        if half == 0:  # ids[-0:] would keep everything
            return ""
        return (tokenizer.decode(list(ids[:half]), skip_special_tokens=True)
                + tokenizer.decode(list(ids[-half:]), skip_special_tokens=True))
    if style == "infinitebench":
        if budget <= 0:
            return ""
        return tokenizer.decode(list(ids[:budget // 2]) + list(ids[-budget // 2:]))
    kept, _ = truncate_middle(ids, budget)
    return tokenizer.decode(kept)


class ChatPrompter:
    """The prompt for a sample as its suite sends it, its templated length with thinking off,
    and middle truncation of the user content to a token budget.

    * Chat messages (``build_chat_messages``) when the tokenizer has a chat template and the
      sample does not opt out (``chat_template: false``: LongBench's trec, triviaqa, samsum,
      lcc and repobench-p, which upstream sends without one); then the raw text goes to
      ``/v1/completions``.
    * The system message is the sample's ``system_prompt`` when the sample has that key
      (upstream's: InfiniteBench's "You are a helpful assistant", none for LongBench), else the
      configured one (RULER).
    * A tokenizer without a chat template (the synthetic one of a shape-only dummy model) gets
      plain text: system prompt, input, answer prefix.
    * Truncation cuts the user content as the sample's suite does (``upstream_middle_cut``)."""

    def __init__(self, tokenizer, system_prompt: str | None = None, prefill_answer: bool = True):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.prefill_answer = prefill_answer
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def uses_chat(self, sample: dict) -> bool:
        return self.chat and sample.get("chat_template", True) is not False

    def system_for(self, sample: dict) -> str | None:
        return sample["system_prompt"] if "system_prompt" in sample else self.system_prompt

    def messages(self, sample: dict, text: str | None = None) -> tuple[list[dict] | str, bool]:
        s = sample if text is None else {**sample, "input": text}
        cont = bool(self.prefill_answer and s.get("answer_prefix"))
        system = self.system_for(s)
        if not self.uses_chat(s):
            if self.chat:  # the suite sends this task's raw prompt to a chat model
                return s["input"] + (s["answer_prefix"] if cont else ""), cont
            parts = [system or "", s["input"], s["answer_prefix"] if cont else ""]
            return "\n\n".join(p for p in parts if p), cont
        return build_chat_messages(s, system, prefill_answer=cont), cont

    def render(self, prompt: list[dict] | str, continue_final: bool) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=not continue_final,
            continue_final_message=continue_final, enable_thinking=False)

    def count(self, prompt: list[dict] | str, continue_final: bool) -> int:
        # vLLM renders the template to text, then tokenizes it without adding special tokens.
        return len(self.tokenizer.encode(self.render(prompt, continue_final), add_special_tokens=False))

    def request_fields(self, fitted: FittedPrompt) -> dict:
        """``GenerationRequest`` keyword arguments for a fitted prompt."""
        if isinstance(fitted.prompt, str):
            return {"prompt": fitted.prompt, "chat": False}
        return {"prompt": fitted.prompt, "chat": True,
                "extra": {"add_generation_prompt": not fitted.continue_final,
                          "continue_final_message": fitted.continue_final}}

    def fit(self, sample: dict, limit: int, max_rounds: int = 8) -> FittedPrompt:
        """A prompt whose templated length is ``<= limit``: unchanged if it fits, else the user
        content is cut in the middle to ``limit`` minus the template's overhead, as the suite
        cuts it (``upstream_middle_cut``); decoding and re-encoding at the cut can merge tokens
        differently, so the budget shrinks until it fits."""
        prompt, cont = self.messages(sample)
        full = self.count(prompt, cont)
        if full <= limit:
            return FittedPrompt(prompt, cont, full, full)
        content = self.tokenizer.encode(sample["input"], add_special_tokens=False)
        overhead = full - len(content)
        budget = limit - overhead
        style = sample.get("truncation")
        for _ in range(max_rounds):
            if budget <= 0:
                break
            prompt, cont = self.messages(sample, upstream_middle_cut(self.tokenizer, content, budget, style))
            n = self.count(prompt, cont)
            if n <= limit:
                return FittedPrompt(prompt, cont, n, full, truncated=True)
            budget -= n - limit
        return FittedPrompt(prompt, cont, None, full, truncated=True,
                            error=f"prompt does not fit: {full} tokens, budget {limit}, template and question "
                                  f"alone take ~{overhead}")


def prompt_budget(max_model_len: int, max_new_tokens: int, max_input_tokens: int | None = None) -> int:
    """Tokens a prompt may take: the window minus the answer, optionally capped lower."""
    budget = int(max_model_len) - int(max_new_tokens)
    if max_input_tokens is not None:
        budget = min(budget, int(max_input_tokens))
    return budget
