"""E4 quality beside E1 latency and E5 memory at the same context lengths (issue #16, item 5).

``join_by_length`` puts, per E4 length bucket (``quality_by_length.csv``), the pooled 0-100
score and PG19's perplexity next to E1's TTFT/TPOT medians and E5's memory at the *same* prompt
length: only an exact length match joins (no interpolation), so a length E1 or E5 did not run
stays empty. ``draw`` plots the three side by side; with random or dummy weights (or fixture
data) the quality panel and the title say the scores are not a quality measurement.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..analysis.plots import SVG_RC, check_provenance
from .tables import E4_BESIDE_SPEED

# Declared once with E4's tables (the report heads them with their labels).
JOINED_COLUMNS = E4_BESIDE_SPEED.names
NOT_MEANINGFUL = "NOT a quality measurement"


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"] if "status" in frame.columns else frame


def join_by_length(by_length: pd.DataFrame, e1_latency: pd.DataFrame | None,
                   e5_memory: pd.DataFrame | None) -> pd.DataFrame:
    """One row per E4 length bucket (``all`` rows and PG19 rows), with E1's TTFT/TPOT p50 at
    ``prompt_tokens == length`` and E5's aggregated-mode memory at ``prompt_tokens_target ==
    length`` (empty where that experiment has no ok point at exactly that length)."""
    pooled = by_length[by_length["benchmark"] == "all"].set_index("length_bucket")
    pg19 = by_length[by_length["benchmark"] == "pg19"].set_index("length_bucket")
    lengths = sorted({int(x) for x in by_length["length_bucket"].dropna()})
    e1 = _ok(e1_latency).set_index("prompt_tokens") if e1_latency is not None and len(e1_latency) else None
    e5 = None
    if e5_memory is not None and len(e5_memory):
        e5 = _ok(e5_memory)
        if "mode" in e5.columns:
            e5 = e5[e5["mode"] == "aggregated"]
        e5 = e5.groupby("prompt_tokens_target").max(numeric_only=True)  # repeated points: their peak

    def pick(frame: pd.DataFrame | None, length: int, column: str):
        if frame is None or column not in frame.columns or length not in frame.index:
            return None
        value = frame.loc[length, column]
        value = value.iloc[0] if isinstance(value, pd.Series) else value
        return None if pd.isna(value) else float(value)

    rows = []
    for length in lengths:
        rows.append({
            "length_tokens": length,
            "e4_score": pick(pooled, length, "score"),
            "e4_n": pick(pooled, length, "n"),
            "e4_meaningful": bool(pooled.loc[length, "meaningful"]) if length in pooled.index else None,
            "pg19_perplexity": pick(pg19, length, "score"),
            "pg19_bits_per_token": pick(pg19, length, "bits_per_token"),
            "e1_ttft_ms_p50": pick(e1, length, "ttft_ms_p50"),
            "e1_tpot_ms_p50": pick(e1, length, "tpot_ms_p50"),
            "e5_kv_used_gib": pick(e5, length, "kv_used_analytical_gib"),
            "e5_nvml_peak_used_gib": pick(e5, length, "nvml_peak_used_gib"),
            "e5_process_rss_gib": pick(e5, length, "process_rss_gib"),
        })
    return pd.DataFrame(rows, columns=JOINED_COLUMNS)


def draw(joined: pd.DataFrame, path: str | os.PathLike, *, meaningful: bool, provenance: str) -> Path:
    """Three panels over the context length (log x): E4 quality, E1 latency, E5 memory."""
    import matplotlib
    import matplotlib.pyplot as plt

    provenance = check_provenance(provenance)
    tail = "" if meaningful else f" ({NOT_MEANINGFUL})"
    panels = [
        ("E4 quality" + tail, [("e4_score", "score 0-100 (pooled)"), ("pg19_bits_per_token", "PG19 bits/token")]),
        ("E1 latency (p50, ms)", [("e1_ttft_ms_p50", "TTFT"), ("e1_tpot_ms_p50", "TPOT")]),
        ("E5 memory (GiB)", [("e5_kv_used_gib", "KV used (analytical)"), ("e5_nvml_peak_used_gib", "GPU peak (NVML)"),
                             ("e5_process_rss_gib", "process RSS")]),
    ]
    with matplotlib.rc_context(SVG_RC):
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
        try:
            for ax, (title, series) in zip(axes, panels):
                drawn = 0
                for column, label in series:
                    data = joined[["length_tokens", column]].dropna() if column in joined else joined.iloc[0:0]
                    if len(data):
                        ax.plot(data["length_tokens"], data[column], marker="o", label=label)
                        drawn += 1
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("context length (tokens)")
                if len(joined) and joined["length_tokens"].min() > 0:
                    ax.set_xscale("log", base=2)
                if drawn:
                    ax.legend(fontsize=7)
                else:
                    ax.text(0.5, 0.5, "no point at these lengths", ha="center", va="center", transform=ax.transAxes)
            fig.suptitle("Quality beside speed at the same context length" + tail, fontsize=10)
            fig.text(0.01, 0.005, provenance, fontsize=6, ha="left", va="bottom")
            fig.tight_layout(rect=(0, 0.04, 1, 0.95))
            out = Path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, format="svg")
        finally:
            plt.close(fig)
    return out
