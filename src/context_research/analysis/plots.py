"""Small matplotlib helpers (Agg backend, SVG via ``io.write_figure``).

Every figure carries a ``provenance`` subtitle (e.g. "real vLLM 0.32.0 CPU, random-embedded
weights, client-side"): a figure without one is refused. Text is kept as SVG text (not paths),
so the provenance is searchable in the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from context_research.io import write_figure  # noqa: E402

# Text stays searchable SVG text, and the bytes are reproducible (fixed hash salt).
SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "context-research"}


def check_provenance(provenance: str) -> str:
    """The stripped provenance line; ValueError when it is empty (every figure must say where its
    numbers came from)."""
    if not provenance or not str(provenance).strip():
        raise ValueError("every plot needs a non-empty provenance string (where its numbers came from)")
    return str(provenance).strip()




def _titles(fig, ax, title: str, provenance: str) -> None:
    fig.suptitle(title)
    ax.set_title(provenance, fontsize=8, style="italic")


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def line_plot(df: pd.DataFrame, x: str, ys: Sequence[str], path: str | os.PathLike, title: str,
              xlabel: str, ylabel: str, *, provenance: str, logx: bool = False, logy: bool = False,
              group: str | None = None) -> Path:
    """One line per column in ``ys`` (per (y, group value) when ``group`` is given), markers on.

    Non-numeric or missing values are dropped per series; a missing column or an all-missing
    series is skipped; with nothing to draw the figure says "no data" instead of failing.
    """
    provenance = check_provenance(provenance)
    with matplotlib.rc_context(SVG_RC):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        try:
            drawn = 0
            if x in df.columns:
                groups = [(None, df)] if not group or group not in df.columns else list(df.groupby(group, sort=True, dropna=False))
                for gval, sub in groups:
                    xs = _numeric(sub[x])
                    for y in ys:
                        if y not in sub.columns:
                            continue
                        frame = pd.DataFrame({"x": xs, "y": _numeric(sub[y])}).dropna()
                        if logx:
                            frame = frame[frame["x"] > 0]
                        if logy:
                            frame = frame[frame["y"] > 0]
                        if frame.empty:
                            continue
                        frame = frame.sort_values("x")
                        label = y if gval is None else (f"{group}={gval}" if len(ys) == 1 else f"{y} ({group}={gval})")
                        ax.plot(frame["x"], frame["y"], marker="o", label=label)
                        drawn += 1
            if drawn:
                if logx:
                    ax.set_xscale("log", base=2)
                if logy:
                    ax.set_yscale("log")
                ax.legend(fontsize=8)
                ax.grid(True, alpha=0.3)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            _titles(fig, ax, title, provenance)
            return write_figure(path, fig)
        finally:
            plt.close(fig)


def stacked_bar(df: pd.DataFrame, label_col: str, component_cols: Sequence[str], path: str | os.PathLike,
                title: str, ylabel: str, *, provenance: str) -> Path:
    """One bar per row, stacked by ``component_cols``. Missing values count as 0 (and a
    component missing everywhere is left out of the legend); negative components (vLLM can
    report negative non-torch memory) stack downward from 0."""
    provenance = check_provenance(provenance)
    with matplotlib.rc_context(SVG_RC):
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(df) + 3), 4.5))
        try:
            labels = [str(v) for v in (df[label_col] if label_col in df.columns else range(len(df)))]
            pos = [0.0] * len(df)
            neg = [0.0] * len(df)
            drawn = 0
            for col in component_cols:
                if col not in df.columns:
                    continue
                values = _numeric(df[col])
                if values.isna().all():
                    continue
                values = values.fillna(0.0).tolist()
                bottoms = [p if v >= 0 else n for v, p, n in zip(values, pos, neg)]
                ax.bar(range(len(values)), values, bottom=bottoms, label=col)
                pos = [p + v if v >= 0 else p for v, p in zip(values, pos)]
                neg = [n + v if v < 0 else n for v, n in zip(values, neg)]
                drawn += 1
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=20, ha="right")
            if drawn:
                ax.legend(fontsize=8)
                ax.axhline(0, color="black", linewidth=0.5)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_ylabel(ylabel)
            _titles(fig, ax, title, provenance)
            return write_figure(path, fig)
        finally:
            plt.close(fig)
