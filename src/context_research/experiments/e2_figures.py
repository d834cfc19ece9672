"""E2's load figures: SLO attainment against rate with the capacity marked, request timelines,
and the Pareto view (output tok/s per user against output tok/s per GPU)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..analysis.plots import SVG_RC, check_provenance  # noqa: E402
from ..io import write_figure  # noqa: E402

MAX_TIMELINE_PANELS = 16
MODE_MARKERS = {"concurrency": "o", "rate": "s", "capacity": "^", "trace": "D"}


def _finish(fig, title: str, provenance: str, path: Path) -> Path:
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.suptitle(title, y=0.995)
    fig.text(0.5, 0.935, check_provenance(provenance), ha="center", va="bottom", fontsize=7, style="italic")
    return write_figure(path, fig)


def attainment_figure(points: pd.DataFrame, capacity: pd.DataFrame, target: float, path: Path, *,
                      provenance: str) -> Path:
    """Per prompt length: SLO attainment of every open-loop point against its offered rate, the
    target as a dotted line, the capacity bracket shaded and the capacity as a vertical line."""
    lengths = sorted(set(pd.to_numeric(capacity.get("prompt_tokens", pd.Series(dtype=float))).dropna().astype(int))
                     | set(points.loc[points["mode"] == "rate", "prompt_tokens"].dropna().astype(int)))
    with matplotlib.rc_context(SVG_RC):
        fig, ax = plt.subplots(figsize=(7.5, 5.0))
        try:
            for color, length in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, lengths):
                sub = points[points["mode"].isin(["rate", "capacity"]) & (points["prompt_tokens"] == length)]
                data = pd.DataFrame({"x": pd.to_numeric(sub["offered_rate_rps"], errors="coerce"),
                                     "y": pd.to_numeric(sub["slo_attainment"], errors="coerce")}).dropna()
                data = data.sort_values("x")
                if not data.empty:
                    ax.plot(data["x"], data["y"], marker="o", color=color, label=f"{length} prompt tokens")
                cap = capacity[capacity["prompt_tokens"] == length] if len(capacity) else capacity
                if len(cap):
                    c = cap.iloc[0]
                    low, high = c.get("capacity_low_rps"), c.get("capacity_high_rps")
                    if _num(low) and _num(high):
                        ax.axvspan(low, high, color=color, alpha=0.15)
                    if _num(c.get("capacity_rps")):
                        ax.axvline(c["capacity_rps"], color=color, linestyle="--", linewidth=1.2,
                                   label=f"capacity {c['capacity_rps']:.3g} req/s"
                                         + (f" (bracket {low:.3g}-{high:.3g})" if _num(high) else " (not bracketed)"))
            ax.axhline(target, color="grey", linestyle=":", label=f"attainment target {target:g}")
            ax.set_xscale("log")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("offered Poisson rate (requests/s, log)")
            ax.set_ylabel("SLO attainment (share meeting TTFT and TPOT SLOs)")
            ax.grid(True, alpha=0.3)
            if lengths:
                ax.legend(fontsize=7, loc="lower left")
            else:
                ax.text(0.5, 0.5, "no open-loop point", ha="center", va="center", transform=ax.transAxes)
            return _finish(fig, "E2: SLO attainment against arrival rate, capacity (DistServe goodput) marked",
                           provenance, path)
        finally:
            plt.close(fig)


def _num(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def timeline_segments(req: pd.Series) -> list[tuple[float, float, str]]:
    """(start s, length s, kind) bars of one request from its send time (client clock).

    With vLLM's per-request times: queued (``engine_queue_ms``), prefill (``engine_ttft_ms``:
    scheduled to first token) and the rest of the client's TTFT (HTTP, API server, detokenizing);
    without them, one 'waiting + prefill' bar up to the first token. Then decode to the last token.
    The engine's durations are laid on the client's clock from the send time: the two clocks are
    not synchronised, only the lengths are the engine's.
    """
    start, ttft, e2e = req.get("start_s"), req.get("ttft_s"), req.get("e2e_s")
    if not (_num(start) and _num(ttft)):
        return []
    queue, prefill = req.get("engine_queue_ms"), req.get("engine_ttft_ms")
    segs = []
    if _num(queue) and _num(prefill):
        q = min(queue / 1000.0, ttft)
        p = min(prefill / 1000.0, ttft - q)
        segs += [(start, q, "queued"), (start + q, p, "prefill")]
        if ttft - q - p > 0:
            segs.append((start + q + p, ttft - q - p, "HTTP + API server"))
    else:
        segs.append((start, ttft, "waiting + prefill"))
    if _num(e2e) and e2e > ttft:
        segs.append((start + ttft, e2e - ttft, "decode"))
    return segs


SEGMENT_COLORS = {"queued": "tab:red", "prefill": "tab:orange", "HTTP + API server": "tab:gray",
                  "waiting + prefill": "tab:olive", "decode": "tab:blue"}


def timeline_figure(requests: pd.DataFrame, path: Path, *, provenance: str) -> Path:
    """One panel per measured point (the first MAX_TIMELINE_PANELS): one horizontal bar per
    request in send order, from its send time, split into queued / prefill / decode."""
    measured = requests[requests["phase"] == "measured"] if "phase" in requests.columns else requests.iloc[0:0]
    keys = ["mode", "level", "prompt_tokens_point"]
    groups = list(measured.groupby(keys, dropna=False, sort=False)) if len(measured) else []
    shown = groups[:MAX_TIMELINE_PANELS]
    cols = min(4, max(len(shown), 1))
    rows = max(1, math.ceil(len(shown) / cols))
    with matplotlib.rc_context(SVG_RC):
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 0.6), squeeze=False)
        try:
            for ax in axes.flat[len(shown):]:
                ax.axis("off")
            if not shown:
                axes[0][0].axis("on")
                axes[0][0].text(0.5, 0.5, "no measured request", ha="center", va="center")
            for ax, ((mode, level, ptok), sub) in zip(axes.flat, shown):
                sub = sub.sort_values("start_s")
                for y, (_, req) in enumerate(sub.iterrows()):
                    for start, width, kind in timeline_segments(req):
                        ax.barh(y, width, left=start, height=0.8, color=SEGMENT_COLORS[kind], linewidth=0)
                where = f" @{int(ptok)} tok" if _num(ptok) and mode == "capacity" else ""
                ax.set_title(f"{mode}={level:.3g}{where} ({len(sub)} requests)", fontsize=8)
                ax.set_xlabel("s from the point's start", fontsize=7)
                ax.set_ylabel("request (send order)", fontsize=7)
                ax.tick_params(labelsize=6)
            handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in SEGMENT_COLORS.values()]
            fig.legend(handles, list(SEGMENT_COLORS), loc="lower center", ncol=5, fontsize=8, frameon=False)
            more = len(groups) - len(shown)
            title = "E2: request timelines per point (client send, first token, last token; engine queue time where " \
                    "reported)" + (f"; {more} more point(s) in requests.csv" if more > 0 else "")
            fig.tight_layout(rect=(0, 0.04, 1, 0.92))
            fig.suptitle(title, y=0.995, fontsize=10)
            fig.text(0.5, 0.935, check_provenance(provenance), ha="center", va="bottom", fontsize=7, style="italic")
            return write_figure(path, fig)
        finally:
            plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on both), by x."""
    return sorted(p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points))


def pareto_figure(points: pd.DataFrame, path: Path, *, provenance: str) -> Path:
    """Every measured point: output tok/s per user (x) against output tok/s per GPU (y), by mode,
    the Pareto front joined."""
    with matplotlib.rc_context(SVG_RC):
        fig, ax = plt.subplots(figsize=(7.0, 5.0))
        try:
            data = points.assign(x=pd.to_numeric(points.get("output_tok_s_per_user"), errors="coerce"),
                                 y=pd.to_numeric(points.get("output_tok_s_per_gpu"), errors="coerce")).dropna(
                subset=["x", "y"]) if len(points) and "output_tok_s_per_user" in points.columns else points.iloc[0:0]
            for mode, sub in data.groupby("mode", sort=False):
                ax.scatter(sub["x"], sub["y"], marker=MODE_MARKERS.get(mode, "o"), label=mode)
                for _, r in sub.iterrows():
                    ax.annotate(f"{r['level']:.3g}", (r["x"], r["y"]), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")
            front = pareto_front(list(zip(data["x"], data["y"])))
            if front:
                ax.plot([p[0] for p in front], [p[1] for p in front], color="grey", linestyle="--", label="Pareto front")
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no point with a TPOT and a throughput", ha="center", va="center",
                        transform=ax.transAxes)
            ax.set_xlabel("output tok/s per user (1000 / mean client TPOT)")
            ax.set_ylabel("output tok/s per GPU (output throughput / GPUs)")
            ax.grid(True, alpha=0.3)
            return _finish(fig, "E2: per-user speed against per-GPU throughput (labels: level)", provenance, path)
        finally:
            plt.close(fig)
