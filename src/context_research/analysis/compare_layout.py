"""What ``context-research compare`` compares of one experiment, declared by the experiment.

An experiment's declaration carries its ``Layout`` (``Experiment.comparison``): where its
per-request records are, which columns name a point, which metrics are compared, which rows are
measured. An experiment whose results are not per-request latencies says why with ``NotCompared``.
``analysis.compare.compare`` receives the layouts as an argument (the CLI passes the catalog's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd


@dataclass(frozen=True)
class Metric:
    """A per-request value compared between runs: ``column`` of the records times ``scale``."""
    name: str
    column: str
    scale: float = 1.0
    lower_is_better: bool = True
    # The E0 metric whose between-start SD applies (``compare.start_noise``), or None (none applies).
    noise: str | None = None
    # vLLM's own per-request timing: it stands at a point whose findings are all the client's.
    engine_side: bool = False


CLIENT_METRICS = (
    Metric("ttft_ms", "ttft_s", 1000.0, noise="ttft_ms"),
    Metric("tpot_ms", "tpot_s", 1000.0, noise="tpot_ms"),
    Metric("e2e_ms", "e2e_s", 1000.0, noise="e2e_ms"),
)
ENGINE_METRICS = (
    Metric("engine_ttft_ms", "engine_ttft_ms", noise="engine_ttft_ms", engine_side=True),
    Metric("engine_itl_ms", "engine_itl_ms", noise="engine_itl_ms", engine_side=True),
)


@dataclass(frozen=True)
class Layout:
    """Where an experiment keeps its per-request records and how a record names its point."""
    records: str                        # file of one row per request
    point_columns: tuple[str, ...]      # columns of ``records`` naming the point (empty: the whole run)
    metrics: tuple[Metric, ...]
    keep: Callable[[pd.DataFrame], pd.Series] | None = None   # measured rows (warm-ups dropped)
    points_table: str | None = None     # the table carrying each point's status
    points_table_columns: tuple[str, ...] = ()                # the same point columns there
    single: bool = False                # one request per point: a difference, never a CI
    # Point column -> the column older records carry instead (results written before the point
    # column existed: their requests' own target length).
    fallbacks: tuple[tuple[str, str], ...] = (("prompt_tokens_point", "prompt_tokens_target"),
                                              ("point_prompt_tokens", "prompt_tokens_target"))


@dataclass(frozen=True)
class NotCompared:
    """An experiment ``compare`` lists as not compared, and why."""
    reason: str


def not_warmup(column: str) -> Callable[[pd.DataFrame], pd.Series]:
    """``keep``: the rows whose ``column`` is not "warmup" (all rows when the column is absent)."""
    return lambda f: f[column].astype(str) != "warmup" if column in f.columns else pd.Series(True, f.index)


def ok_status(frame: pd.DataFrame) -> pd.Series:
    """``keep``: rows whose status is ok (a point table that is its own record: one request per point)."""
    return frame["status"].astype(str) == "ok"
