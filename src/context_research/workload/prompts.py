"""Exact-length token-id requests that share no prefix, and whether a point fits the context."""

from __future__ import annotations

from typing import Any, Sequence

from ..prompts import token_id_prompt
from ..records import GenerationRequest


class PromptFactory:
    """Exact-length token-id requests; request k of the run gets prompt seed ``seed + k`` and the
    unique prefix k, so no two requests of one run (warmup included) share a cache block."""

    def __init__(self, model: dict[str, Any], seed: int):
        self.model = model
        self.seed = seed
        self.issued = 0

    def requests(self, phase: str, n: int, prompt_tokens: int, max_tokens: int,
                 offsets: Sequence[float] | None = None) -> list[GenerationRequest]:
        out = []
        for i in range(n):
            k = self.issued
            self.issued += 1
            prompt = token_id_prompt(prompt_tokens, self.seed + k, self.model, unique_prefix=k)
            out.append(GenerationRequest(
                request_id=f"{phase}-{k}", prompt=prompt, max_tokens=max_tokens,
                prompt_tokens_target=prompt_tokens, temperature=0.0, seed=self.seed, ignore_eos=True,
                scheduled_offset_s=None if offsets is None else float(offsets[i])))
        return out


def context_overflow(prompt_tokens: int, max_tokens: int, max_model_len: int, profile: str) -> str | None:
    """Why a point cannot be served (prompt + output exceed the context), or None if it fits."""
    if prompt_tokens + max_tokens > max_model_len:
        return (f"prompt {prompt_tokens} + output {max_tokens} = {prompt_tokens + max_tokens} tokens exceeds "
                f"models.{profile}.max_model_len = {max_model_len}; not sent")
    return None
