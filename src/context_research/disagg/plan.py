"""E3's workload plan: the sweep points, each engine's token budget, which points a mode must
refuse (and why), and the token-id prompts both modes serve.

Every prompt of a run gets a distinct prefix (``PromptIds``), so no two prompts share a KV
folder or a prefix-cache entry; the same config always yields the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..prompts import token_id_prompt
from ..records import GenerationRequest
from .broker import example_connector_lookup_tokens, example_connector_stored_tokens


@dataclass(frozen=True)
class Point:
    index: int
    prompt_tokens: int
    concurrency: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.prompt_tokens, self.concurrency)

    @property
    def label(self) -> str:
        return f"L={self.prompt_tokens} C={self.concurrency}"

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "concurrency": self.concurrency}


def sweep_points(cfg: dict[str, Any]) -> list[Point]:
    pts = [(int(n), int(c)) for n in cfg["prompt_tokens"] for c in cfg["concurrency_levels"]]
    return [Point(i, n, c) for i, (n, c) in enumerate(pts)]


def batched_tokens_budget(cfg: dict[str, Any], max_model_len: int) -> int:
    """``max_num_batched_tokens`` every E3 engine gets: the config's, else max_model_len."""
    return int(cfg.get("max_num_batched_tokens") or max_model_len)


def refusal_reason(point: Point, mode: str, *, max_tokens: int, max_model_len: int, budget: int,
                   connector: str | None = None, block_size: int | None = None) -> str | None:
    """Why ``point`` cannot be measured in ``mode`` (None when it can)."""
    n, c = point.prompt_tokens, point.concurrency
    if n + max_tokens > max_model_len:
        return (f"prompt {n} + max_tokens {max_tokens} tokens exceed max_model_len {max_model_len} "
                "(models.<profile>.max_model_len)")
    if mode != "disaggregated":
        return None
    if n > budget:
        return (f"prompt of {n} tokens > max_num_batched_tokens {budget}: vLLM would chunk its prefill and the "
                "KV connector would store only the first chunk (known vLLM bug; the consumer then fails with "
                "'shape mismatch'). Raise experiments.e3.max_num_batched_tokens to >= the prompt length")
    if n * c > budget:
        return (f"{c} concurrent prompts of {n} tokens ({n * c}) exceed max_num_batched_tokens {budget}: "
                "a prefill sharing the step's token budget would be chunked and stored incompletely "
                "(known vLLM bug). Raise experiments.e3.max_num_batched_tokens or lower the concurrency")
    if connector == "ExampleConnector" and block_size:
        stored = example_connector_stored_tokens(n, block_size)
        lookup = example_connector_lookup_tokens(n, block_size)
        if stored == 0:
            return (f"prompt of {n} tokens is not longer than one KV block ({block_size}) plus one token: "
                    "ExampleConnector would transfer nothing")
        if stored != lookup:
            return (f"n - 1 = {n - 1} is a multiple of the KV block size {block_size}: ExampleConnector stores "
                    f"{stored} tokens but the consumer looks up {lookup}, misses and recomputes the prefill")
    return None


class PromptIds:
    """Distinct prompt prefixes across the whole run, so no two prompts share a KV folder."""

    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next


def build_requests(model: dict[str, Any], cfg: dict[str, Any], point: Point, prefix: str, count: int,
                   max_tokens: int, ids: PromptIds, seed_offset: int = 0) -> list[GenerationRequest]:
    n = point.prompt_tokens
    out = []
    for i in range(count):
        seed = cfg["seed"] + seed_offset + 1000 * point.index + i
        prompt = token_id_prompt(n, seed, model, unique_prefix=ids.take())
        out.append(GenerationRequest(request_id=f"{prefix}-L{n}-c{point.concurrency}-{i}", prompt=prompt,
                                     max_tokens=max_tokens, prompt_tokens_target=n, temperature=0.0,
                                     seed=cfg["seed"]))
    return out


@dataclass
class Workload:
    """Every request of a run, built once, before any engine starts (both modes serve these)."""

    points: list[Point]
    requests: dict[tuple[int, int], list[GenerationRequest]]  # by Point.key
    baselines: dict[int, list[GenerationRequest]]  # isolated prefill-only requests, by prompt length
    warmup: list[GenerationRequest]


def plan_workload(model: dict[str, Any], cfg: dict[str, Any]) -> Workload:
    points = sweep_points(cfg)
    ids = PromptIds()
    requests = {p.key: build_requests(model, cfg, p, "e3", cfg["requests_per_point"], cfg["max_tokens"], ids)
                for p in points}
    lengths = sorted({p.prompt_tokens for p in points})
    baselines = {n: build_requests(model, cfg, Point(500 + i, n, 1), "base", cfg["requests_per_point"], 1, ids,
                                   seed_offset=500_000) for i, n in enumerate(lengths)}
    max_model_len = int(model["max_model_len"])
    valid_lengths = sorted({p.prompt_tokens for p in points if p.prompt_tokens + cfg["max_tokens"] <= max_model_len})
    warm_point = Point(999_999, valid_lengths[0] if valid_lengths else 16, 1)
    warmup = build_requests(model, cfg, warm_point, "warmup", cfg["warmup_requests"], cfg["max_tokens"], ids,
                            seed_offset=900_000) if valid_lengths else []
    return Workload(points=points, requests=requests, baselines=baselines, warmup=warmup)


def warmup_point(requests: list[GenerationRequest]) -> dict[str, Any]:
    """The route-log point of a warmup batch: its prompt length, no concurrency level."""
    return {"prompt_tokens": requests[0].prompt_tokens_target if requests else None, "concurrency": None}
