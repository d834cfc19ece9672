"""Long-context perplexity from the engine's prompt logprobs.

A PG19 sample is a book's preceding context and a scored window (``loaders.pg19_sample``). The
prompt is ``context ids[-L:] + window ids[:W]`` (``pg19_token_ids``), sent as token ids to
``/v1/completions`` with ``prompt_logprobs``, so every logprob is matched to the exact token it
scores; only the window's W tokens are scored: ``exp(mean NLL)`` and ``mean NLL / ln 2`` bits
per token. The window is tokenized on its own, so every context length scores the same tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

from .scorers import perplexity


def token_logprobs(prompt_logprobs: Sequence[dict | None] | None, token_ids: Sequence[int]) -> list[float | None]:
    """The logprob of each prompt token from vLLM's ``choices[0].prompt_logprobs``: a list aligned
    with the prompt, ``None`` first (nothing predicts the first token), then dicts
    ``{token_id (str in JSON): {"logprob", "rank", "decoded_token"}}`` holding the actual token
    (plus the top-k when asked)."""
    if prompt_logprobs is None:
        raise ValueError("the server returned no prompt_logprobs")
    if len(prompt_logprobs) != len(token_ids):
        raise ValueError(f"prompt_logprobs has {len(prompt_logprobs)} entries for {len(token_ids)} prompt tokens")
    out: list[float | None] = []
    for pos, (entry, tok) in enumerate(zip(prompt_logprobs, token_ids)):
        if entry is None:
            out.append(None)
            continue
        item = entry.get(str(tok), entry.get(tok))
        if item is None:
            raise ValueError(f"prompt_logprobs[{pos}] lacks the prompt token {tok}")
        out.append(float(item["logprob"] if isinstance(item, dict) else item))
    return out


async def fetch_prompt_logprobs(http, base_url: str, model_name: str, token_ids: list[int]) -> dict:
    """One non-streaming ``/v1/completions`` request that returns the prompt's logprobs."""
    body = {"model": model_name, "prompt": token_ids, "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": 0, "stream": False}
    try:
        async with http.post(base_url.rstrip("/") + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}: {(await resp.text())[:300]}"}
            data = await resp.json()
    except Exception as exc:  # timeouts, disconnects: a failed sample is a recorded row
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        logprobs = token_logprobs(data["choices"][0].get("prompt_logprobs"), token_ids)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        return {"error": f"unusable prompt_logprobs: {exc}"}
    return {"logprobs": logprobs, "prompt_tokens": (data.get("usage") or {}).get("prompt_tokens")}


def pg19_token_ids(tokenizer, sample: dict) -> tuple[list[int], int]:
    """(prompt token ids, how many of the last ones are scored) of a PG19 sample: exactly the last
    ``context_tokens`` tokens of its context, then exactly the first ``window_tokens`` of its
    window. A sample without a context (older manifests) is all window. ValueError when the
    book text holds fewer tokens than asked (a tokenizer other than the materializing one)."""
    window = tokenizer.encode(sample["input"], add_special_tokens=False)
    want_window = int(sample.get("window_tokens") or len(window))
    want_context = int(sample.get("context_tokens") or 0)
    context = tokenizer.encode(sample["context"], add_special_tokens=False) if want_context else []
    if len(window) < want_window or len(context) < want_context:
        raise ValueError(f"pg19 sample {sample.get('id')}: the text holds {len(context)} context and {len(window)} "
                         f"window tokens, fewer than {want_context} and {want_window}; rematerialize it with the "
                         f"served tokenizer")
    context = list(context[len(context) - want_context:]) if want_context else []
    return context + list(window[:want_window]), want_window


def perplexity_fields(logprobs: Sequence[float | None], scored_tokens: int | None = None) -> dict:
    """A prediction line's ``score`` (perplexity), ``nll_sum``, ``scored_tokens`` and
    ``bits_per_token`` over the last ``scored_tokens`` logprobs (all when None); the first
    prompt token has no logprob and is never scored."""
    tail = list(logprobs) if scored_tokens is None else list(logprobs)[len(logprobs) - int(scored_tokens):]
    vals = [float(x) for x in tail if x is not None]
    ppl = perplexity(vals)
    nll = -sum(vals)
    return {"score": ppl, "nll_sum": nll, "scored_tokens": len(vals), "bits_per_token": nll / len(vals) / math.log(2)}
