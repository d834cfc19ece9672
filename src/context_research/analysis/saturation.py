"""A point's load over time: over-saturation, and the steady-state window that drops ramp-up and drain.

Over-saturation. An open-loop point offered more than the engine serves queues without bound:
requests in flight (client) and requests waiting (vLLM's ``vllm:num_requests_waiting`` gauge)
keep rising until arrivals stop. ``growing`` calls a series growing when, over samples spanning at
least ``min_span_s``, its least-squares slope times the span is at least ``min_rise`` requests AND
the mean of its second half is at least ``half_ratio`` times the mean of its first half (a slope
alone also fires on a ramp-up that then levels off). ``SaturationMonitor`` applies it while a
point runs: the point is *saturated* when the client's in-flight count grows and, where the
engine exports the gauge, its waiting queue grows too; it is *plainly* saturated, and stopped
early, when in addition the SLO attainment of the last ``recent`` completed requests has
collapsed below ``collapse_fraction`` x the attainment target.

Steady state. ``steady_state`` keeps the requests SENT between the ``trim_fraction`` quantiles of
the send times: the first ``trim_fraction`` of sends fill an empty engine (ramp-up), the last
``trim_fraction`` run while arrivals have stopped and the load falls (drain). Latency and
attainment are those of the kept requests; throughput counts the requests (and their output
tokens) that COMPLETED inside the window over the window's length, tokens attributed at
completion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..records import RequestRecord
from .latency import meets_slo
from .stats import interval_part, small_sample_note, small_sample_part, summarize_with_ci

MIN_STEADY_REQUESTS = 4


@dataclass(frozen=True)
class LoadSample:
    t_s: float  # since the point started
    in_flight: int  # client: sent and not yet finished
    engine_waiting: float | None  # vllm:num_requests_waiting, None without /metrics


def growing(ts: Sequence[float], values: Sequence[float], *, min_span_s: float = 2.0, min_rise: float = 4.0,
            half_ratio: float = 1.5) -> bool:
    """True when ``values`` (sampled at ``ts``) rise through the run; see the module docstring."""
    pairs = [(t, v) for t, v in zip(ts, values) if v is not None and not math.isnan(v)]
    if len(pairs) < 6 or pairs[-1][0] - pairs[0][0] < min_span_s:
        return False
    t = np.array([p[0] for p in pairs])
    v = np.array([p[1] for p in pairs], dtype=float)
    slope = np.polyfit(t, v, 1)[0]
    half = len(v) // 2
    first, second = v[:half].mean(), v[half:].mean()
    return bool(slope * (t[-1] - t[0]) >= min_rise and second >= half_ratio * max(first, 1.0))


@dataclass
class SaturationMonitor:
    ttft_slo_ms: float
    tpot_slo_ms: float
    attainment_target: float = 0.9
    recent: int = 8
    collapse_fraction: float = 0.5
    min_span_s: float = 2.0
    min_rise: float = 4.0
    stop_enabled: bool = True  # False: flag a saturated point, never stop it
    samples: list[LoadSample] = field(default_factory=list)
    met: list[bool] = field(default_factory=list)  # per completion, in completion order
    stopped_reason: str | None = None

    def on_sample(self, t_s: float, in_flight: int, engine_waiting: float | None) -> None:
        self.samples.append(LoadSample(t_s, in_flight, engine_waiting))

    def on_completion(self, record: RequestRecord) -> None:
        self.met.append(meets_slo(record, self.ttft_slo_ms, self.tpot_slo_ms))

    def _grows(self, values: list[float | None]) -> bool:
        return growing([s.t_s for s in self.samples], values, min_span_s=self.min_span_s, min_rise=self.min_rise)

    def client_growing(self) -> bool:
        return self._grows([s.in_flight for s in self.samples])

    def engine_growing(self) -> bool | None:
        """None when the engine's waiting gauge was never read."""
        waiting = [s.engine_waiting for s in self.samples]
        return None if all(w is None for w in waiting) else self._grows(waiting)

    def saturated(self) -> bool:
        return self.client_growing() and self.engine_growing() is not False

    def recent_attainment(self) -> float | None:
        tail = self.met[-self.recent:]
        return sum(tail) / len(tail) if len(tail) >= self.recent else None

    def stop_reason(self) -> str | None:
        """Why to stop sending now (plainly saturated), or None; remembered once given."""
        if self.stop_enabled and self.stopped_reason is None and self.saturated():
            recent = self.recent_attainment()
            if recent is not None and recent < self.collapse_fraction * self.attainment_target:
                self.stopped_reason = (f"over-saturated at {self.samples[-1].t_s:.1f} s: {self.describe()}; "
                                       f"attainment of the last {self.recent} completions {recent:.2f}")
        return self.stopped_reason

    def describe(self) -> str:
        s = self.samples
        eng = self.engine_growing()
        waiting = "no engine waiting gauge" if eng is None else (
            f"engine waiting {_first(s, 'engine_waiting'):g} -> {s[-1].engine_waiting:g}"
            + ("" if eng else " (not growing)"))
        return f"client in flight {s[0].in_flight} -> {s[-1].in_flight}, {waiting}"

    def columns(self) -> dict[str, Any]:
        """The concurrency.csv saturation columns of a finished point."""
        sat = bool(self.samples) and self.saturated()
        waiting = [s.engine_waiting for s in self.samples if s.engine_waiting is not None]
        return {
            "saturated": sat,
            "stopped_early": self.stopped_reason is not None,
            "saturation_note": self.stopped_reason or (self.describe() if sat else None),
            "in_flight_peak": max((s.in_flight for s in self.samples), default=None),
            "engine_waiting_peak": max(waiting) if waiting else None,
            "load_samples": len(self.samples),
        }


def _first(samples: Sequence[LoadSample], attr: str) -> float:
    return next(getattr(s, attr) for s in samples if getattr(s, attr) is not None)


def steady_state(records: Sequence[RequestRecord], trim_fraction: float) -> tuple[float | None, float | None,
                                                                                  list[RequestRecord]]:
    """(window start, window end, requests sent inside it), times from the point's start (s)."""
    sent = sorted((r for r in records if r.start_s is not None), key=lambda r: r.start_s)
    k = int(math.floor(trim_fraction * len(sent)))
    kept = sent[k:len(sent) - k]
    if len(kept) < 2:
        return None, None, []
    return kept[0].start_s, kept[-1].start_s, kept


STEADY_PERCENTILES = ("steady_ttft_ms_p50", "steady_ttft_ms_p99", "steady_tpot_ms_p50", "steady_tpot_ms_p99")
STEADY_PERCENTILE_COLUMNS = tuple(c for name in STEADY_PERCENTILES for c in (name, f"{name}_ci_low", f"{name}_ci_high"))


def steady_state_columns(records: Sequence[RequestRecord], trim_fraction: float, ttft_slo_ms: float,
                         tpot_slo_ms: float) -> dict[str, Any]:
    """The concurrency.csv ``steady_*`` columns; empty, with ``steady_note``, on too few requests.
    Its percentiles follow the client's rules (``analysis.stats``: MIN_SAMPLES to be stated,
    MIN_INTERVAL for a CI, which follows each); ``steady_note`` says what is left out."""
    t0, t1, kept = steady_state(records, trim_fraction)
    out: dict[str, Any] = {k: None for k in (
        "steady_window_start_s", "steady_window_s", "steady_requests", "steady_request_throughput_rps",
        "steady_output_throughput_tok_s", *STEADY_PERCENTILE_COLUMNS, "steady_slo_attainment")}
    if len(kept) < MIN_STEADY_REQUESTS or not t1 or t1 <= t0:
        out["steady_note"] = (f"{len(kept)} request(s) sent inside the steady-state window (trim {trim_fraction:g}"
                              f" of sends at each end); at least {MIN_STEADY_REQUESTS} needed")
        return out
    done = [r for r in records if r.ok and r.e2e_s is not None and r.start_s is not None
            and t0 <= r.start_s + r.e2e_s <= t1]
    out.update({
        "steady_window_start_s": t0, "steady_window_s": t1 - t0, "steady_requests": len(kept),
        "steady_request_throughput_rps": len(done) / (t1 - t0),
        "steady_output_throughput_tok_s": sum(r.output_tokens or 0 for r in done) / (t1 - t0),
        "steady_slo_attainment": sum(meets_slo(r, ttft_slo_ms, tpot_slo_ms) for r in kept) / len(kept),
        "steady_note": None,
    })
    missing, no_interval = [], []
    for metric in ("ttft", "tpot"):
        values = [getattr(r, f"{metric}_s") * 1000 for r in kept if r.ok and getattr(r, f"{metric}_s") is not None]
        summary = summarize_with_ci(values, f"steady_{metric}_ms")
        shown = {k: summary[k] for k in STEADY_PERCENTILE_COLUMNS if k in summary}
        out.update(shown)
        missing.append(small_sample_part(f"steady {metric}", len(values), only=("p50", "p99")))
        no_interval.append(interval_part(f"steady {metric}", shown, f"steady_{metric}_ms", len(values)))
    out["steady_note"] = small_sample_note(missing, no_interval)
    return out
