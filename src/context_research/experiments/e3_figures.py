"""E3's figures: user-visible latency per mode and way, goodput, and where a disaggregated
request's first token goes (the measured waterfall of one request per point and way)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.plots import SVG_RC, line_plot  # noqa: E402
from ..io import write_figure  # noqa: E402

# Waterfall segments (transfers.csv), in order, with their colours' legend labels.
WATERFALL_SEGMENTS = {
    "waterfall_producer_frontend_ms": "producer: HTTP + tokenize",
    "waterfall_producer_engine_ms": "producer engine: queue + prefill + KV save",
    "waterfall_producer_reply_ms": "producer: reply",
    "waterfall_broker_ms": "broker: hand to consumer",
    "waterfall_consumer_frontend_ms": "consumer: HTTP + tokenize",
    "waterfall_kv_wait_load_ms": "consumer engine: KV wait + load",
    "waterfall_first_token_ms": "consumer: first token",
}


def num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def way_of(frame: pd.DataFrame) -> pd.Series:
    """Each row's way of moving the KV ("" for aggregated rows and runs before kv_path existed)."""
    if "kv_path" not in frame.columns:
        return pd.Series([""] * len(frame), index=frame.index)
    return frame["kv_path"].fillna("").astype(str)


def series_labels(frame: pd.DataFrame) -> pd.Series:
    """``aggregated c=1`` / ``disaggregated <way> c=1``: one line per mode, way and concurrency."""
    ways = way_of(frame)
    mode = frame["mode"].where(frame["mode"] == "aggregated", "disaggregated " + ways).str.strip()
    return mode + " c=" + frame["concurrency"].astype(str)


def latency_figure(ok: pd.DataFrame, path: Path, provenance: str) -> Path:
    with matplotlib.rc_context(SVG_RC):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        try:
            for ax, (col, label) in zip(axes, (("ttft_ms_p50", "TTFT p50 (ms)"), ("tpot_ms_p50", "TPOT p50 (ms)"))):
                drawn = 0
                for series, sub in ok.groupby("series", sort=True):
                    sub = sub[["prompt_tokens", col]].apply(pd.to_numeric, errors="coerce").dropna().sort_values(
                        "prompt_tokens")
                    if sub.empty:
                        continue
                    style = "-" if series.startswith("aggregated") else "--"
                    ax.plot(sub["prompt_tokens"], sub[col], style, marker="o", label=series)
                    drawn += 1
                if drawn:
                    ax.legend(fontsize=7)
                    ax.grid(True, alpha=0.3)
                else:
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                ax.set_xlabel("prompt tokens")
                ax.set_ylabel(label)
            fig.suptitle("E3: user-visible latency, aggregated (solid) vs disaggregated (dashed)")
            fig.text(0.5, 0.90, provenance, ha="center", fontsize=8, style="italic")
            fig.tight_layout(rect=(0, 0, 1, 0.9))
            return write_figure(path, fig)
        finally:
            plt.close(fig)


def goodput_figure(ok: pd.DataFrame, path: Path, provenance: str, slo: dict) -> Path:
    return line_plot(ok, "prompt_tokens", ["goodput_rps"], path,
                     f"E3: goodput (TTFT <= {slo['ttft_slo_ms']:g} ms and TPOT <= {slo['tpot_slo_ms']:g} ms), "
                     f"aggregated vs disaggregated", "prompt tokens", "requests/s within both SLOs",
                     provenance=provenance, group="series")


def waterfall_requests(transfers: pd.DataFrame) -> pd.DataFrame:
    """One measured handoff per point and way: the one whose consumer TTFT is the point's median
    (lower middle for an even count), so the waterfall shows a typical request, not the best."""
    measured = transfers[(transfers["label"] == "measured") & (transfers["ok"].astype(str) == "True")].copy()
    measured["way"] = way_of(measured)
    picks = []
    for _, sub in measured.groupby(["way", "prompt_tokens", "concurrency"], sort=True):
        sub = sub.sort_values("consumer_ttft_s")
        picks.append(sub.iloc[(len(sub) - 1) // 2])
    return pd.DataFrame(picks)


def transfer_figure(frame: pd.DataFrame, transfers: pd.DataFrame, path: Path, provenance: str, title: str) -> Path:
    """Per point and way, one request's measured waterfall (client and engine times on one clock),
    beside the aggregated TTFT p50 of the same point (recomputing the prefill instead)."""
    picks = waterfall_requests(transfers) if len(transfers) else pd.DataFrame()
    agg = frame[(frame["mode"] == "aggregated") & (frame["status"] == "ok")].set_index(["prompt_tokens", "concurrency"])
    with matplotlib.rc_context(SVG_RC):
        fig, ax = plt.subplots(figsize=(10, max(3.5, 0.9 * len(picks) + 2.5)))
        try:
            if picks.empty:
                ax.text(0.5, 0.5, "no disaggregated request measured", ha="center", va="center",
                        transform=ax.transAxes)
            else:
                _draw_waterfall(ax, picks, agg)
            ax.set_xlabel("ms from the producer send (one median-TTFT request per point and way)")
            fig.suptitle(title)
            ax.set_title(provenance, fontsize=8, style="italic")
            fig.tight_layout()
            return write_figure(path, fig)
        finally:
            plt.close(fig)


def _draw_waterfall(ax, picks: pd.DataFrame, agg: pd.DataFrame) -> None:
    ys = list(range(len(picks)))
    left = [0.0] * len(picks)
    for col, label in WATERFALL_SEGMENTS.items():
        widths = [max(0.0, num(v) or 0.0) for v in picks[col]]
        ax.barh(ys, widths, left=left, height=0.5, label=label)
        left = [a + w for a, w in zip(left, widths)]
    recompute = [num(agg["ttft_ms_p50"].get((int(r.prompt_tokens), int(r.concurrency)), math.nan))
                 for r in picks.itertuples()]
    ax.scatter([x if x is not None else math.nan for x in recompute], ys, marker="|", s=400, color="black",
               label="aggregated TTFT p50 (recompute)", zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r.way + ': ' if r.way else ''}{int(r.prompt_tokens)} tok, c={int(r.concurrency)}"
                        for r in picks.itertuples()], fontsize=8)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
