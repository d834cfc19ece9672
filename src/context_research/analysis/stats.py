"""Summary statistics over per-request records."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

PERCENTILES = (50, 95, 99)


def clean(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds; None stays None (a value that was not measured)."""
    return None if seconds is None else seconds * 1000.0


def percentile(values: Sequence[float | None], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default, as ``vllm bench serve`` uses); None if empty."""
    data = clean(values)
    return float(np.percentile(data, q)) if data else None


def mean(values: Sequence[float | None]) -> float | None:
    data = clean(values)
    return float(np.mean(data)) if data else None


def coefficient_of_variation(values: Sequence[float | None]) -> float | None:
    """Sample std (ddof=1) / mean; None with fewer than two values or a zero mean."""
    data = clean(values)
    if len(data) < 2:
        return None
    m = float(np.mean(data))
    return float(np.std(data, ddof=1) / m) if m else None


def summarize(values: Sequence[float | None], prefix: str, scale: float = 1.0) -> dict[str, float | None]:
    """``{prefix_mean, prefix_p50, prefix_p95, prefix_p99}``, each multiplied by ``scale``."""
    out: dict[str, float | None] = {}
    m = mean(values)
    out[f"{prefix}_mean"] = None if m is None else m * scale
    for q in PERCENTILES:
        p = percentile(values, q)
        out[f"{prefix}_p{q}"] = None if p is None else p * scale
    return out
