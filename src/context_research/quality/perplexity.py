"""Perplexity from the engine's prompt logprobs.

``/v1/completions`` with ``prompt_logprobs`` on the token ids our tokenizer produced, so every
logprob is matched to the exact token it scores; the score is ``exp(mean NLL)``.
"""

from __future__ import annotations

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


def perplexity_fields(logprobs: Sequence[float | None]) -> dict:
    """A prediction line's ``score`` (perplexity), ``nll_sum`` and ``scored_tokens``."""
    vals = [float(x) for x in logprobs if x is not None]
    return {"score": perplexity(vals), "nll_sum": -sum(vals), "scored_tokens": len(vals)}
