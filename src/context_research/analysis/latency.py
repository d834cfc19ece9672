"""Latency summaries, goodput, arrival schedules and Prometheus-histogram deltas (E1, E2).

All inputs are seconds (as in ``RequestRecord``); summary columns are milliseconds.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from context_research.analysis.intervals import peak_in_flight, rate_interval, rate_windows
from context_research.analysis.stats import (interval_part, mean, small_sample_note, small_sample_part,
                                              summarize_pooled_with_ci, summarize_with_ci)
from context_research.records import RequestRecord, read_whole

_MS = 1000.0
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")
STAT_SUFFIXES = ("mean", "p50", "p95", "p99")
CI_SUFFIXES = ("ci_low", "ci_high")
LATENCY_COLUMNS = (
    ["n", "n_ok", "n_failed", "n_read_whole"]
    + [c for m in LATENCY_METRICS for s in STAT_SUFFIXES
       for c in (f"{m}_ms_{s}", *(f"{m}_ms_{s}_{b}" for b in CI_SUFFIXES))]
    + ["stats_note", "prompt_tokens_mean", "output_tokens_mean"]
)
# goodput()'s rates that get a batch-means CI (``<rate>_ci_low`` / ``<rate>_ci_high``, ``throughput_ci``).
THROUGHPUT_CI_METRICS = ("request_throughput_rps", "output_throughput_tok_s", "total_token_throughput_tok_s",
                         "goodput_rps")


def latency_row(records: Sequence[RequestRecord], **keys: Any) -> dict[str, Any]:
    """One summary row: ``keys`` first (e.g. prompt_tokens=4096, config="x"), then LATENCY_COLUMNS.

    Statistics are over successful requests only. ITL pools every inter-chunk gap of every
    successful request (as ``vllm bench serve`` does). TPOT is None for single-token outputs and
    such requests are left out of the TPOT statistics. Missing values give None, never a crash.

    Every statistic is followed by its 95 % CI (``_ci_low``, ``_ci_high``; ``analysis.stats``:
    order-statistic intervals for percentiles, bootstrap-t for means, requests as the unit for
    ITL). A statistic with fewer samples than ``stats.MIN_SAMPLES`` asks for is None together with
    its CI; one with fewer than ``stats.MIN_INTERVAL`` keeps its value without a CI; ``stats_note``
    lists both kinds with their n (None when every statistic has its CI). The token means have no
    CI: they are server counts of lengths the workload fixes, not estimates.
    """
    ok = [r for r in records if r.ok]
    row: dict[str, Any] = dict(keys)
    row["n"] = len(records)
    row["n_ok"] = len(ok)
    row["n_failed"] = len(records) - len(ok)
    row["n_read_whole"] = sum(read_whole(r) for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
    itl = [list(r.itl_s) for r in ok if r.itl_s]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    summaries = {"ttft": summarize_with_ci(ttft, "ttft_ms", _MS), "tpot": summarize_with_ci(tpot, "tpot_ms", _MS),
                 "itl": summarize_pooled_with_ci(itl, "itl_ms", _MS), "e2e": summarize_with_ci(e2e, "e2e_ms", _MS)}
    for summary in summaries.values():
        row.update(summary)
    gaps = sum(len(g) for g in itl)
    sizes = {"ttft": (len(ttft), None), "tpot": (len(tpot), None), "itl": (gaps, len(itl)), "e2e": (len(e2e), None)}
    row["stats_note"] = small_sample_note(
        [small_sample_part(m, n, g, "gaps") for m, (n, g) in sizes.items()],
        [interval_part(m, summaries[m], f"{m}_ms", n, g) for m, (n, g) in sizes.items()])
    row["prompt_tokens_mean"] = mean([r.prompt_tokens for r in ok])
    row["output_tokens_mean"] = mean([r.output_tokens for r in ok])
    return row


def meets_slo(record: RequestRecord, ttft_slo_ms: float, tpot_slo_ms: float) -> bool:
    """True when a request succeeded and met both SLOs (inclusive: ``<=``).

    A failed request, or one without a TTFT, never meets. A request with at most one output
    token has no TPOT and counts as meeting the TPOT SLO (``vllm bench serve`` records TPOT 0
    for it). A stream whose tokens after the first arrived in one burst has no client TPOT
    (``records.finalize_timing``: no decode pace is visible); the SLO then judges what the user
    got, the delivery pace (E2E - TTFT) / (tokens - 1), vLLM bench's TPOT: on a 2-core CPU host
    such bursts had made a third of the requests at 0.25 req/s count as misses.
    """
    if not record.ok or record.ttft_s is None:
        return False
    if record.ttft_s * _MS > ttft_slo_ms:
        return False
    if record.tpot_s is not None:
        return record.tpot_s * _MS <= tpot_slo_ms
    if record.output_tokens is None or record.output_tokens <= 1:
        return True
    if record.e2e_s is None:
        return False
    return (record.e2e_s - record.ttft_s) / (record.output_tokens - 1) * _MS <= tpot_slo_ms


def goodput(records: Sequence[RequestRecord], duration_s: float, ttft_slo_ms: float,
            tpot_slo_ms: float) -> dict[str, Any]:
    """Per-run goodput as ``vllm bench serve`` computes it: requests/s completed within BOTH SLOs
    over one run. (DistServe's goodput is a capacity, the highest rate at which a target share of
    requests meets the SLOs: ``analysis.capacity``.)

    Returns goodput_rps (met / duration), slo_attainment (met / requests sent; failed requests
    count as misses), request_throughput_rps (succeeded / duration), output_throughput_tok_s
    (output tokens of successful requests / duration), total_token_throughput_tok_s (prompt +
    output tokens of successful requests / duration), and the counts and SLOs used; then, per
    rate of THROUGHPUT_CI_METRICS, its batch-means CI (``throughput_ci``).
    """
    if not duration_s or duration_s <= 0 or math.isnan(duration_s):
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    ok = [r for r in records if r.ok]
    met = sum(meets_slo(r, ttft_slo_ms, tpot_slo_ms) for r in records)
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    in_tokens = sum(r.prompt_tokens or 0 for r in ok)
    n = len(records)
    return {
        "n_sent": n,
        "n_ok": len(ok),
        "n_failed": n - len(ok),
        "n_slo_met": met,
        "duration_s": duration_s,
        "ttft_slo_ms": ttft_slo_ms,
        "tpot_slo_ms": tpot_slo_ms,
        "goodput_rps": met / duration_s,
        "slo_attainment": met / n if n else None,
        "request_throughput_rps": len(ok) / duration_s,
        "output_throughput_tok_s": out_tokens / duration_s,
        "total_token_throughput_tok_s": (in_tokens + out_tokens) / duration_s,
        **throughput_ci(records, duration_s, ttft_slo_ms, tpot_slo_ms),
    }


def throughput_ci(records: Sequence[RequestRecord], duration_s: float, ttft_slo_ms: float,
                  tpot_slo_ms: float) -> dict[str, Any]:
    """95 % batch-means CIs of goodput()'s rates: ``<rate>_ci_low`` / ``<rate>_ci_high`` for each of
    THROUGHPUT_CI_METRICS, ``throughput_ci_windows`` (how many windows) and ``throughput_ci_note``
    (why there is none).

    A rate of one point is (what its requests contributed) / duration. Each successful request
    contributes at its completion (start + E2E, from the point's start): 1, its output tokens, its
    prompt + output tokens, and 1 if it met both SLOs. The duration is cut into 5 equal windows
    (``intervals.rate_windows``: valid with 3 completions per window and 4 waves of the point's
    peak in flight); each window's rate is what completed in it / its length; the CI is Student-t
    over the windows' rates, centred on the point's rate. It covers the long-run rate of the
    arrivals and service times of this run (``analysis.calibration`` measures it on queues of known
    throughput; it under-covers within a few percent of capacity); not a drift between engine
    starts. A point too short for the windows gets no CI and the note says why.
    """
    out: dict[str, Any] = {f"{m}_{b}": None for m in THROUGHPUT_CI_METRICS for b in CI_SUFFIXES}
    out.update(throughput_ci_windows=None, throughput_ci_note=None)
    if not duration_s or duration_s <= 0 or math.isnan(duration_s):
        return out
    done = [r for r in records if r.ok and r.start_s is not None and r.e2e_s is not None]
    ended = [r for r in records if r.start_s is not None and r.e2e_s is not None]
    peak = peak_in_flight(np.array([r.start_s for r in ended]), np.array([r.start_s + r.e2e_s for r in ended]))
    windows, why = rate_windows(duration_s, len(done), peak)
    if not windows:
        out["throughput_ci_note"] = f"throughput: no interval ({why})"
        return out
    times = np.array([r.start_s + r.e2e_s for r in done])
    weights = np.array([[1.0, float(r.output_tokens or 0), float((r.prompt_tokens or 0) + (r.output_tokens or 0)),
                         1.0 if meets_slo(r, ttft_slo_ms, tpot_slo_ms) else 0.0] for r in done])
    low, high = rate_interval(times, weights, duration_s, windows)
    out["throughput_ci_windows"] = windows
    flat = []
    for i, m in enumerate(THROUGHPUT_CI_METRICS):
        if math.isnan(low[i]):
            flat.append(m)
            continue
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = float(low[i]), float(high[i])
    if flat:
        out["throughput_ci_note"] = f"throughput: no interval for {', '.join(flat)} (every window alike)"
    return out


def poisson_schedule(n: int, rate_per_s: float, seed: int) -> list[float]:
    """Send offsets (s) of ``n`` requests of a Poisson process at ``rate_per_s``.

    Offsets are cumulative sums of exponential gaps (mean 1/rate) drawn from
    ``numpy.random.default_rng(seed)``; the first request goes at 0 (as ``vllm bench serve``
    sends, then sleeps), so offset[i] = sum of the first i gaps. ``rate=inf`` -> all zeros.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    if rate_per_s is None or math.isnan(rate_per_s) or rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0 (or inf), got {rate_per_s!r}")
    if math.isinf(rate_per_s):
        return [0.0] * n
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=n - 1)
    return [0.0] + [float(x) for x in np.cumsum(gaps)]


def histogram_delta_mean(sum_before: float | None, sum_after: float, count_before: float | None,
                         count_after: float) -> float | None:
    """Mean of the observations added between two scrapes: Δsum / Δcount; None if Δcount is 0."""
    d_count = count_after - (count_before or 0.0)
    if d_count <= 0:
        return None
    return (sum_after - (sum_before or 0.0)) / d_count
