"""E2 figures, table and packet section.

Concurrency points (requests in flight) and rate points (Poisson arrivals/s) have different x
axes, so each figure has one panel per mode rather than one misleading shared axis. The load
figures (attainment against rate, timelines, Pareto) are drawn by ``e2_figures``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import numpy as np  # noqa: E402

from ..analysis.stats import format_with_ci
from ..analysis.plots import SVG_RC, check_provenance  # noqa: E402
from ..io import read_json, write_figure, write_text  # noqa: E402
from ..report import provenance_line
from . import e2  # the declaration (its module never imports this one)
from ..tables import fmt as _fmt, html_table, markdown_table  # noqa: E402
from .e2_figures import attainment_figure, pareto_figure, timeline_figure  # noqa: E402
from .e2_tables import E2_CONCURRENCY  # noqa: E402

# The sweep figures' panels: capacity probes and the trace have their own figures.
MODES = ("concurrency", "rate")
XLABEL = {"concurrency": "max requests in flight (closed loop)", "rate": "offered Poisson rate (requests/s)"}

# concurrency.csv's columns the report shows, headed by their declared labels and units (E2_CONCURRENCY).
TABLE_COLUMNS = ("mode", "level", "prompt_tokens", "status", "n_ok", "request_throughput_rps",
                 "output_throughput_tok_s", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "engine_ttft_ms_mean",
                 "ttft_client_minus_engine_ms", "tpot_ms_p50", "tpot_ms_p95", "tpot_ms_p99", "e2e_ms_p50", "e2e_ms_p99",
                 "slo_attainment", "goodput_rps", "steady_slo_attainment", "steady_output_throughput_tok_s",
                 "saturated", "stopped_early", "energy_j_per_output_token", "engine_preemptions",
                 "engine_kv_cache_usage_peak", "reason")


def load(results_dir: Path) -> pd.DataFrame:
    return pd.read_csv(e2.EXPERIMENT.path(results_dir, "concurrency"))


def load_capacity(results_dir: Path) -> pd.DataFrame:
    path = e2.EXPERIMENT.path(results_dir, "capacity")
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()


def mode_panels(frame: pd.DataFrame, series: Sequence[tuple[str, str]], path: Path, title: str, ylabel: str, *,
                provenance: str, logy: bool = False, hlines: Sequence[tuple[float, str]] = (),
                secondary: tuple[str, str, str] | None = None) -> Path:
    """One panel per mode present in ``frame``: a line per (column, label) in ``series`` vs level.

    ``secondary`` = (column, label, axis label) drawn dashed on a right-hand axis in [0, 1];
    ``hlines`` = (y, label) pairs drawn as dotted horizontal references (e.g. the SLOs).
    """
    provenance = check_provenance(provenance)
    present = set(frame["mode"]) if "mode" in frame.columns else set()
    modes = [m for m in MODES if m in present] or ["concurrency"]
    with matplotlib.rc_context(SVG_RC):
        fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 5.0), squeeze=False)
        try:
            for ax, mode in zip(axes[0], modes):
                sub = frame[frame["mode"] == mode].sort_values("level") if mode in present else frame.iloc[0:0]
                drawn = 0
                for col, label in series:
                    if col not in sub.columns:
                        continue
                    data = pd.DataFrame({"x": pd.to_numeric(sub["level"], errors="coerce"),
                                         "y": pd.to_numeric(sub[col], errors="coerce")}).dropna()
                    if logy:
                        data = data[data["y"] > 0]
                    if data.empty:
                        continue
                    ax.plot(data["x"], data["y"], marker="o", label=label)
                    drawn += 1
                handles = []
                if drawn:
                    for y, label in hlines:
                        ax.axhline(y, color="grey", linestyle=":", linewidth=1.2, label=label)
                if drawn and secondary is not None and secondary[0] in sub.columns:
                    data = pd.DataFrame({"x": pd.to_numeric(sub["level"], errors="coerce"),
                                         "y": pd.to_numeric(sub[secondary[0]], errors="coerce")}).dropna()
                    if not data.empty:
                        ax2 = ax.twinx()
                        ax2.plot(data["x"], data["y"], marker="s", linestyle="--", color="black", label=secondary[1])
                        ax2.set_ylim(-0.05, 1.05)
                        ax2.set_ylabel(secondary[2])
                        handles = ax2.get_legend_handles_labels()[0]
                if drawn:
                    levels = sorted(pd.to_numeric(sub["level"], errors="coerce").dropna().unique())
                    ax.set_xscale("log", base=2)
                    ax.set_xticks(levels, [f"{v:g}" for v in levels])
                    ax.minorticks_off()
                    if logy:
                        ax.set_yscale("log")
                    else:
                        ax.set_ylim(bottom=0)
                    main = ax.get_legend_handles_labels()[0]
                    # Below the panel: never on top of a line of either axis.
                    ax.legend(handles=main + handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                              ncol=2, frameon=False)
                    ax.grid(True, alpha=0.3)
                else:
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                ax.set_xlabel(XLABEL[mode])
                ax.set_ylabel(ylabel)
                ax.set_title(f"{mode} points", fontsize=9)
            fig.tight_layout(rect=(0, 0, 1, 0.92))
            fig.suptitle(title, y=0.995)
            fig.text(0.5, 0.935, provenance, ha="center", va="bottom", fontsize=7, style="italic")
            return write_figure(path, fig)
        finally:
            plt.close(fig)


def table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["n_ok"] = [f"{a}/{b}" for a, b in zip(out["n_ok"], out["n"])]
    out["reason"] = out["reason"].fillna("")
    for flag in ("saturated", "stopped_early"):  # a CSV bool (or empty for a closed loop) as words
        if flag in out.columns:
            out[flag] = [("yes" if str(v).lower() == "true" else "no") if pd.notna(v) else "" for v in out[flag]]
    return E2_CONCURRENCY.shown(out, TABLE_COLUMNS)


def make_figures(results_dir: Path) -> None:
    frame = load(results_dir)
    meta = read_json(e2.EXPERIMENT.path(results_dir, "metadata"))
    summary = read_json(e2.EXPERIMENT.path(results_dir, "summary"))
    prov = provenance_line(meta)
    slo = summary["slo"]
    ok = frame[frame["n_ok"] > 0]
    mode_panels(ok, [("output_throughput_tok_s", "output tokens/s")], e2.EXPERIMENT.figure_path(results_dir, "throughput"),
                "E2: output-token throughput", "output tokens/s", provenance=prov + "; client-side")
    mode_panels(ok, [("ttft_ms_p50", "TTFT p50"), ("ttft_ms_p99", "TTFT p99"),
                     ("engine_ttft_ms_mean", "engine TTFT mean (histogram)"),
                     ("tpot_ms_p50", "TPOT p50"), ("tpot_ms_p99", "TPOT p99")],
                e2.EXPERIMENT.figure_path(results_dir, "latency"), "E2: latency under load", "ms (log)", logy=True,
                hlines=[(slo["ttft_slo_ms"], f"TTFT SLO {slo['ttft_slo_ms']:g} ms"),
                        (slo["tpot_slo_ms"], f"TPOT SLO {slo['tpot_slo_ms']:g} ms")],
                provenance=prov + "; client-side percentiles, engine-side mean")
    mode_panels(ok, [("request_throughput_rps", "request throughput"),
                     ("goodput_rps", "per-run goodput (both SLOs met)")],
                e2.EXPERIMENT.figure_path(results_dir, "goodput"),
                f"E2: per-run goodput (vLLM bench), SLOs TTFT <= {slo['ttft_slo_ms']:g} ms and TPOT <= "
                f"{slo['tpot_slo_ms']:g} ms",
                "requests/s", provenance=prov + "; client-side",
                secondary=("slo_attainment", "SLO attainment", "SLO attainment (fraction)"))
    attainment_figure(ok, load_capacity(results_dir), slo.get("attainment_target", 0.9),
                      e2.EXPERIMENT.figure_path(results_dir, "attainment"), provenance=prov + "; client-side")
    timeline_figure(pd.read_csv(e2.EXPERIMENT.path(results_dir, "requests")),
                    e2.EXPERIMENT.figure_path(results_dir, "timeline"),
                    provenance=prov + "; client timestamps, engine queue time where the server reported it")
    pareto_figure(ok, e2.EXPERIMENT.figure_path(results_dir, "pareto"), provenance=prov + "; client-side")
    write_text(e2.EXPERIMENT.figure_path(results_dir, "table"), html_table(table_frame(frame), 3))


def report_section(results_dir: Path) -> dict[str, Any]:
    s = read_json(e2.EXPERIMENT.path(results_dir, "summary"))
    frame = load(results_dir)
    w, slo = s["workload"], s["slo"]
    findings = []
    conc = frame[(frame["mode"] == "concurrency") & (frame["n_ok"] > 0)].sort_values("level")
    if len(conc):
        lo, hi = conc.iloc[0], conc.iloc[-1]
        findings.append(
            f"Closed loop: going from {int(lo['level'])} to {int(hi['level'])} requests in flight takes output "
            f"throughput from {_fmt(lo['output_throughput_tok_s'], 1)} to {_fmt(hi['output_throughput_tok_s'], 1)} "
            f"tok/s ({_fmt(hi['output_throughput_tok_s'] / lo['output_throughput_tok_s'], 1)}x) while TTFT p99 goes "
            f"from {_fmt(lo['ttft_ms_p99'])} to {_fmt(hi['ttft_ms_p99'])} ms and TPOT p99 from "
            f"{_fmt(lo['tpot_ms_p99'])} to {_fmt(hi['tpot_ms_p99'])} ms.")
    best = s.get("best_goodput")
    if best:
        row = _row_of(frame, best)
        findings.append(
            f"Best per-run goodput (requests/s meeting BOTH TTFT <= {slo['ttft_slo_ms']:g} ms and TPOT <= "
            f"{slo['tpot_slo_ms']:g} ms over one run, as vllm bench serve computes it): {_fmt(best['goodput_rps'])} req/s at "
            f"{best['mode']}={best['level']:g}, where request throughput is {_fmt(row['request_throughput_rps'])} "
            f"req/s and SLO attainment {_fmt(row['slo_attainment'] * 100, 0)} %.")
    for _, r in frame[(frame["n_ok"] > 0)].iterrows():
        if r["slo_attainment"] < 1:
            findings.append(
                f"SLOs start to be missed at {r['mode']}={r['level']:g}: attainment {_fmt(r['slo_attainment'] * 100, 0)} % "
                f"(TTFT alone {_fmt(r['ttft_slo_attainment'] * 100, 0)} %, TPOT alone "
                f"{_fmt(r['tpot_slo_attainment'] * 100, 0)} %).")
            break
    findings += load_findings(s, frame)
    gap = s.get("ttft_client_minus_engine_ms_mean")
    if gap is not None:
        findings.append(
            f"Client-side TTFT (our HTTP client, send -> first streamed token) {'exceeds' if gap >= 0 else 'is below'} engine-side TTFT (vLLM's "
            f"vllm:time_to_first_token_seconds histogram) by {_fmt(abs(gap))} ms on average across points (range "
            f"{_fmt(s['ttft_client_minus_engine_ms_min'])} to {_fmt(s['ttft_client_minus_engine_ms_max'])} ms). "
            f"Under load the gap also holds the time a request waits in the API server (and the client's event "
            f"loop) before the engine's clock starts, plus the /metrics scrapes that sample KV usage. In "
            f"latency.svg the 'engine' line is engine-side, every other line client-side.")
    hits = s.get("local_cache_hit_tokens")
    findings.append(
        f"Engine: {s['total_preemptions']:g} preemptions over the sweep; peak KV-cache usage "
        f"{_fmt(None if s['kv_cache_usage_peak'] is None else s['kv_cache_usage_peak'] * 100, 1)} % (sampled from "
        f"vllm:kv_cache_usage_perc). Checks: {s['prompt_tokens_mismatches']} prompt-length mismatch(es); prefix "
        f"caching {'on' if s['prefix_caching'] else 'off'}, "
        f"{'no prompt_tokens_by_source counter' if hits is None else f'{hits:g} local prefix-cache-hit tokens'}.")
    if s["failed_points"]:
        findings.append("Failed points: " + "; ".join(f"{p['mode']}={p['level']:g}: {p['reason']}"
                                                      for p in s["failed_points"]) + ".")
    facts = [
        ("prompt / output tokens", f"{w['prompt_tokens']} / {w['max_tokens']}"),
        ("concurrency levels", ", ".join(map(str, w["concurrency_levels"])) or "none"),
        ("Poisson rates (req/s)", ", ".join(f"{r:g}" for r in w["request_rates"]) or "none"),
        ("requests per point / warmup", f"{w['requests_per_point']} / {w['warmup_requests']}"
         + (f" (closed loop: at least {w['min_waves']} x concurrency)" if w.get("min_waves", 1) > 1 else "")),
        ("SLOs (client-side)", f"TTFT <= {slo['ttft_slo_ms']:g} ms, TPOT <= {slo['tpot_slo_ms']:g} ms"),
        ("points ok / configured", f"{s['points_ok']} / {s['points']}"),
    ]
    return {
        "findings": findings,
        "facts": facts,
        "tables": [{"caption": "Per point: throughput, client-side latency (ms), SLO attainment, goodput, engine counters",
                    "html": html_table(table_frame(frame), 3), "markdown": markdown_table(table_frame(frame), 3)}],
    }


def load_findings(s: dict[str, Any], frame: pd.DataFrame) -> list[str]:
    """Capacity (DistServe goodput) per prompt length, saturation, steady state and energy."""
    out = []
    target = s["slo"].get("attainment_target", 0.9)
    for c in s.get("capacity") or []:
        out.append(capacity_finding(c, target))
    sat = s.get("saturated_points") or []
    if sat:
        out.append(f"{len(sat)} open-loop point(s) over-saturated (queues growing through the run), "
                   f"{sum(p['stopped_early'] for p in sat)} stopped early: "
                   + "; ".join(f"{p['mode']}={p['level']:g}" for p in sat[:6]) + ".")
    steady = frame[pd.to_numeric(frame.get("steady_slo_attainment"), errors="coerce").notna()] \
        if "steady_slo_attainment" in frame.columns else frame.iloc[0:0]
    if len(steady):
        gaps = (steady["steady_slo_attainment"] - steady["slo_attainment"]).abs()
        r = steady.loc[gaps.idxmax()]
        out.append(f"Steady state (ramp-up and drain dropped, {s['workload'].get('steady_state_trim', 0.1):g} of "
                   f"sends at each end) moves attainment by at most {_fmt(gaps.max() * 100, 0)} points, at "
                   f"{r['mode']}={r['level']:g}: {_fmt(r['slo_attainment'] * 100, 0)} % over the whole run, "
                   f"{_fmt(r['steady_slo_attainment'] * 100, 0)} % in the window.")
    energy = s.get("energy") or {}
    if energy.get("available"):
        e = frame[frame.get("energy_available") == True]  # noqa: E712  (a CSV bool column)
        out.append(f"Energy (NVML total-energy counter): {_fmt(e['energy_j_per_output_token'].min(), 3)} to "
                   f"{_fmt(e['energy_j_per_output_token'].max(), 3)} J per output token across points.")
    else:
        out.append(f"Energy per token: unavailable ({energy.get('reason', 'not read')}).")
    return out


def capacity_finding(c: dict[str, Any], target: float) -> str:
    """One prompt length's capacity: the rate, its bracket (from probes, not a confidence interval),
    what its probe completed and how the search ended."""
    head = f"Capacity at {c['prompt_tokens']} prompt tokens"
    if c.get("capacity_rps") is None:
        lowest = c.get("capacity_high_rps")
        return (head + ": none found" + (f", every rate probed down to {_fmt(lowest, 3)} req/s failed the "
                                        f"{target * 100:g} % target" if lowest is not None and lowest == lowest else "")
                + f" ({c.get('stop_reason')}).")
    high = c.get("capacity_high_rps")
    probes = f"{c['probes']} probe(s)" + "".join(f", {c[k]} {k.split('_')[0]}" for k in ("inconclusive_probes",
                                                                                       "invalid_probes") if c.get(k))
    return (f"{head} (DistServe goodput): {_fmt(c['capacity_rps'], 3)} req/s, its probe completing "
            f"{_fmt(c.get('capacity_achieved_rps'), 3)} req/s with attainment's lower bound "
            f"{_fmt(c.get('attainment_lower_bound'), 3)}"
            + ("" if c.get("confirmed") else " (passed once: not confirmed by a second probe)")
            + f". It is the highest Poisson rate whose probe passed: at least {target * 100:g} % of its requests met "
            f"both SLOs at a one-sided 95 % lower bound, and completions kept pace with the sends"
            + f". Bracket from probes (not a confidence interval): [{_fmt(c['capacity_low_rps'], 3)}, "
            f"{_fmt(high, 3) if high is not None and high == high else 'none failed'}) after {probes}; "
            f"{c['stop_reason']}" + (f"; {c['non_monotonic_note']}" if c.get("non_monotonic_note") else "") + ".")


def headline(results_dir: Path) -> dict[str, Any]:
    """The packet summary's key figures: the best goodput point and its throughput."""
    s = read_json(e2.EXPERIMENT.path(results_dir, "summary"))
    frame = load(results_dir)
    best = s.get("best_goodput")
    capacity = [(f"capacity at {c['prompt_tokens']} prompt tokens (req/s; a bracket from probes, not a CI)",
                 f"{_fmt(c['capacity_rps'], 3)}, bracket [{_fmt(c['capacity_low_rps'], 3)}, "
                 f"{_fmt(c['capacity_high_rps'], 3)})")
                for c in s.get("capacity") or [] if c.get("capacity_rps") is not None]
    if not best:
        return {"figures": capacity + [("per-run goodput", "no point met both SLOs")]}
    row = _row_of(frame, best)
    where = f"{best['mode']}={best['level']:g}"
    return {"figures": capacity + [(f"best per-run goodput, {where} (req/s)", format_with_ci(row, "goodput_rps", 2)),
                        (f"output throughput, {where} (tok/s)", format_with_ci(row, "output_throughput_tok_s", 1)),
                        (f"TTFT p50, {where} (ms)", format_with_ci(row, "ttft_ms_p50", 1))]}


def _row_of(frame: pd.DataFrame, best: dict[str, Any]) -> pd.Series:
    """The row a summary's best point names (mode, level, and prompt length where recorded). Levels
    are compared to 1e-9 relative: a bisected capacity rate (107.63474115247547) comes back from
    pandas' CSV parser one ulp off the summary's JSON value."""
    match = (frame["mode"] == best["mode"]) & np.isclose(frame["level"], best["level"], rtol=1e-9, atol=0.0)
    if best.get("prompt_tokens") is not None:
        match &= frame["prompt_tokens"] == best["prompt_tokens"]
    return frame[match].iloc[0]
