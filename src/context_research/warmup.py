"""Warm an engine until it is steady: the one warm-up rule of every experiment.

An engine's first requests are slower than the rest (its first request after a start costs
35-75 ms more on the H200 and on the CPU host alike: a cold path), and the drift can last longer
than a fixed warm-up: in a fresh CPU packet E0's mean TTFT fell over its five timed repeats, 20.6
-> 19.2 -> 16.1 -> 14.4 -> 14.8 ms, part of the 16.1% CV it reported. A fixed count either stops
inside the drift (which then enters the measurement) or wastes requests.

The rule (``WarmupRule``). Warm-up requests go in rounds (one request, or one batch at the
experiment's concurrency); each round gives one value, its mean client TTFT. After each round the
last ``window`` values are compared: the engine is *settled* when their spread (max - min) is at
most ``tolerance`` x their median, and at least ``min_requests`` were sent (the experiment's
``warmup_requests``). It stops settled, or at ``max_requests`` with ``settled: false`` and why.
Over ``window`` rounds a drift of d per round spreads (``window`` - 1) x d: one faster than
``tolerance`` / (``window`` - 1) per round (6.7 % with the defaults, 4 rounds within 20 %) cannot
look settled, a slower one passes for steady (tests/unit/test_warmup.py shows both, with noise).
The result (``WarmupResult.as_dict``) says how many requests and rounds it took, the values it
judged, and whether it settled or stopped at the bound.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

from .records import GenerationRequest, RequestRecord

# Defaults of the schema keys warmup_max_requests / warmup_window / warmup_tolerance.
DEFAULT_WINDOW = 4
DEFAULT_TOLERANCE = 0.2


@dataclass(frozen=True)
class WarmupRule:
    min_requests: int
    max_requests: int
    window: int = DEFAULT_WINDOW
    tolerance: float = DEFAULT_TOLERANCE

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "WarmupRule":
        """An experiment's rule from its keys: ``warmup_requests`` (at least; 0 turns warm-up off),
        ``warmup_max_requests`` (at most; never below the least), ``warmup_window``, ``warmup_tolerance``."""
        least = int(cfg.get("warmup_requests") or 0)
        most = max(least, int(cfg.get("warmup_max_requests", least))) if least > 0 else 0
        return cls(min_requests=least, max_requests=most,
                   window=int(cfg.get("warmup_window", DEFAULT_WINDOW)),
                   tolerance=float(cfg.get("warmup_tolerance", DEFAULT_TOLERANCE)))

    def describe(self) -> str:
        return (f"last {self.window} warm-up rounds' mean client TTFT within {self.tolerance:.0%} of their median, "
                f"{self.min_requests}-{self.max_requests} requests")


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / median of ``values``; None when it cannot be judged (a value missing, a
    median of zero)."""
    if not values or any(v is None for v in values):
        return None
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid > 0 else None


def settled(values: Sequence[float | None], window: int, tolerance: float) -> bool:
    """The last ``window`` values agree within ``tolerance`` (``spread``)."""
    if len(values) < window:
        return False
    s = spread(values[-window:])
    return s is not None and s <= tolerance


@dataclass
class WarmupResult:
    rule: WarmupRule
    requests: int = 0
    values_ms: list[float | None] = field(default_factory=list)  # per round: mean client TTFT
    settled: bool | None = None  # None: no warm-up asked for

    @property
    def rounds(self) -> int:
        return len(self.values_ms)

    def note(self) -> str:
        if self.settled is None:
            return "no warm-up (warmup_requests 0)"
        last = ", ".join("n/a" if v is None else f"{v:.3g}" for v in self.values_ms[-self.rule.window:])
        if self.settled:
            return f"settled after {self.requests} requests ({self.rounds} rounds; last TTFTs {last} ms)"
        return (f"did not settle within {self.requests} requests: the last {self.rule.window} rounds' TTFTs ({last} "
                f"ms) spread more than {self.rule.tolerance:.0%}; what follows may still drift")

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "rounds": self.rounds, "settled": self.settled,
                "ttft_ms_per_round": self.values_ms, "rule": self.rule.describe(), "note": self.note(),
                "measured_on": "client"}


def _round_value(records: Sequence[RequestRecord]) -> float | None:
    ttfts = [r.ttft_s for r in records if r.ok and r.ttft_s is not None]
    return 1000.0 * statistics.fmean(ttfts) if ttfts else None


async def warm_up(serve_round: Callable[[int], Awaitable[list[RequestRecord]]],
                  rule: WarmupRule) -> tuple[list[RequestRecord], WarmupResult]:
    """Serve warm-up rounds (``serve_round(k)`` sends round k's requests and returns their records)
    until ``rule`` says the engine is settled or its bound is reached; every record
    and the result."""
    result = WarmupResult(rule=rule)
    records: list[RequestRecord] = []
    if rule.max_requests <= 0:
        return records, result
    result.settled = False
    while result.requests < rule.max_requests:
        got = await serve_round(result.rounds)
        records += got
        result.requests += max(len(got), 1)
        result.values_ms.append(_round_value(got))
        if result.requests >= rule.min_requests and settled(result.values_ms, rule.window, rule.tolerance):
            result.settled = True
            break
    return records, result


async def warm_session(session: Any, make_round: Callable[[int], list[GenerationRequest]], rule: WarmupRule,
                       max_concurrency: int | None = 1, desc: str = "warmup",
                       label: str | None = None) -> tuple[list[RequestRecord], dict[str, Any]]:
    """``warm_up`` on a ``backends.session.EngineSession``: round k serves ``make_round(k)`` at
    ``max_concurrency``. Returns the records and the result (``as_dict`` with ``label``, e.g. the
    prompt length it warmed), also appended to ``session.warmups`` for the run's metadata."""
    async def serve_round(k: int) -> list[RequestRecord]:
        records, _ = await session.run_requests(make_round(k), max_concurrency=max_concurrency, desc=desc)
        return records

    records, result = await warm_up(serve_round, rule)
    summary = {"label": label, **result.as_dict()}
    if isinstance(getattr(session, "warmups", None), list):
        session.warmups.append(summary)
    return records, summary
