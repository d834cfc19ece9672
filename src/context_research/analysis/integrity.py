"""Plausibility checks of latency numbers: the client against the engine, both against physics.

Pure functions, no I/O. A check compares numbers that must agree within a stated tolerance (or
respect a bound); a check that cannot run (a value missing, the GPU unknown) is recorded as NOT
checked, with why: a row is never silently "ok". ``apply_status`` turns an ``ok`` row with a
finding into ``implausible`` with the finding appended to its ``reason``.

What is compared, and why these statistics:

* **Client TPOT vs engine ITL** (both per output token). The row's client ``tpot_ms_mean`` against
  the engine's ``engine_itl_ms_mean`` (Δsum / Δcount of vLLM's inter-token-latency histogram): the
  engine exports exact means, while its percentiles are bucket interpolations, so mean against
  mean over the same requests is the like-for-like comparison; with the fixed output lengths of
  our workloads (``ignore_eos``) the mean of per-request TPOTs equals the pooled per-token mean the
  histogram gives. Per request (``records``): ``tpot_s`` against vLLM's per-request
  ``engine_itl_ms``.
* **Client TTFT vs engine TTFT.** The client's clock starts before the engine's (send, HTTP, API
  server) and stops after it (SSE, parsing), so the client may not be *below* the engine beyond
  clock noise; far *above* it means the client measured something other than the engine (a
  stalled client or API server, a prompt echo): *client delivery*, an implausible point. Row:
  ``ttft_ms_mean`` vs ``engine_ttft_ms_mean`` (histogram: from the API server's arrival, queue
  included). Per request: ``ttft_s`` vs ``engine_queue_ms + engine_ttft_ms``: vLLM's per-request
  ``time_to_first_token_ms`` EXCLUDES the queue (vLLM 0.32, ``build_per_request_timing_metrics``
  in ``vllm/entrypoints/generate/base/serving.py``: ``first_token_ts - scheduled_ts``, and
  ``queue_time_ms`` = ``scheduled_ts - queued_ts``, engine-core timestamps), so only the sum spans
  queued -> first token, strictly inside the client's interval.
* **Client delivery.** A stream that arrived whole (``records.read_whole``) was not read while the
  engine made it: like a client TTFT beyond the delivery margin, it makes the point implausible.
* **Physical floors** (``model_math.ttft_floor_s`` / ``tpot_floor_s`` with the datasheet of
  ``hardware.lookup_gpu``): prefill FLOPs / peak FLOP/s and bytes of one decode step / memory
  bandwidth. Both are optimistic by construction (datasheet peaks; only matmuls and weight + KV
  bytes counted), so nothing measured may fall below them. The TPOT floor is the batch-1 step at
  the prompt's context: the smallest step of any request of the point, at any concurrency (a
  step of a batch reads at least as much and yields one token per request). Checked: every
  stated client statistic (mean, p50; with ``records`` every request) and the engine's means.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .findings import (CLIENT_DELIVERY, CLIENT_TPOT_BELOW, DELIVERY_ONLY_COLUMN, ENGINE_STANDS_COLUMN,  # noqa: F401
                       IMPLAUSIBLE, NOTE_COLUMN, Findings, apply_status, delivery_only, engine_timings_stand)
from .hardware import lookup_gpu
from .model_math import tpot_floor_s, ttft_floor_s
from ..records import read_whole

# -- tolerances ----------------------------------------------------------------------------------
# Client TPOT may undercut the engine's ITL by at most 20 %: the client sees the same tokens, later,
# so it can only be slower, except that its first-to-last-chunk span and the histogram's per-token
# intervals are bounded differently (measured on the H200 run: client / engine 0.96-1.00 at
# 1K-32K). 0.8x is the repository's stop-hook threshold; 2.6 ms against 7.5 ms (0.35x) is not noise.
TPOT_UNDER_ITL_RATIO = 0.8
# ... and may exceed it by at most 50 % + 1 ms: beyond that the time per token is mostly outside
# the engine (an API server or client that cannot keep up), and the row no longer measures the
# engine. (H200 run: 0.96-1.00x at concurrency 1-64.) The 1 ms covers tiny models whose ITL is
# comparable to the per-chunk HTTP cost.
TPOT_OVER_ITL_RATIO = 1.5
TPOT_OVER_ITL_MS = 1.0
# Client TTFT may be below the engine's TTFT by at most 2 ms + 5 %: the client interval contains
# the engine's, so only timer resolution and histogram/request-set edge effects can put it below.
TTFT_UNDER_ENGINE_MS = 2.0
TTFT_UNDER_ENGINE_REL = 0.05
# ... and above it by at most the delivery margin (absolute + relative to the engine's queue +
# TTFT); beyond it the point is implausible ("client delivery": the client measured the API server
# or itself, not the engine). Measured normal overheads per request (warm-ups excluded: an engine
# start's first request is 35-75 ms slower on every host, a cold path):
# * one at a time: H200 E1 (Qwen3-8B shapes) p50 6.5 / 11 / 17 / 27 / 41 ms at 1K / 4K / 8K / 16K /
#   32K, at most 59 ms against 1.19 s; H100 holdout 3.4-31 ms (means, FACTS.md); H200 E0 <= 11 ms;
#   the 2-core CPU host (EngineCore at nice 19) E0 / E1 <= 26 ms. 50 ms + 25 % passes them all and
#   catches E1 at 512 tokens of docs/evidence/2026-11-29-cpu-integrity (72.1 ms vs 9.5 ms).
# * overlapping (E2 above concurrency 1, open loop, E3 above 1): the API server's share grows with
#   the load: H200 E2 up to 64 in flight, 428 ms over 1.15 s, 128 ms over 57 ms (x 2.25).
#   100 ms + 100 % passes every measured request of that run (the closest by 28 ms).
# Not applied where the engine's TTFT does not cover the client's (E3 disaggregated rows).
DELIVERY_MARGIN_MS = 50.0
DELIVERY_MARGIN_REL = 0.25
DELIVERY_MARGIN_MS_UNDER_LOAD = 100.0
DELIVERY_MARGIN_REL_UNDER_LOAD = 1.0
# A measured value may fall below its physical floor by at most 5 %: the floor is already optimistic
# (datasheet peak, matmul FLOPs / weight + KV bytes only); the margin absorbs datasheet rounding.
FLOOR_MARGIN = 0.05

# An open-loop point keeps its arrival process while 90 % of its requests leave less than one mean
# inter-arrival gap after their planned time; beyond that the offered rate is not the one named.
SEND_LAG_QUANTILE = 0.9

_MS = 1000.0


def _num(value: Any) -> float | None:
    """A finite float, or None (None, NaN, '', a non-number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if x == x and x not in (float("inf"), float("-inf")) else None


def _f(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


# Why client TPOT is compared with the engine's ITL only for requests served one at a time.
NOT_COMPARABLE_UNDER_LOAD = ("requests overlapped: the engine's mean ITL includes decode steps shared with other "
                             "requests' prefills, which the client's TPOT (the pace after the opening burst) leaves out")


# Under load the two differ by more than clock noise (above), but not by this much: a client TPOT
# under half the engine's mean ITL is a stalled stream flushed at once, not a decode pace.
TPOT_UNDER_ITL_RATIO_UNDER_LOAD = 0.5


def _check_tpot_vs_itl(f: Findings, client: float | None, engine: float | None, what: str,
                       comparable: bool = True, stream_pace: float | None = None) -> None:
    """``stream_pace`` (ms per token over every gap of one request's stream, ``whole_stream_pace_ms``):
    when it keeps the engine's pace, a TPOT below it is not a client faster than the engine."""
    name = f"client TPOT vs engine ITL ({what})"
    if not comparable:
        f.not_checked.append(f"{name} within {TPOT_UNDER_ITL_RATIO:g} x: {NOT_COMPARABLE_UNDER_LOAD}")
        if client is not None and engine is not None:
            f.checked.append(f"{name} within {TPOT_UNDER_ITL_RATIO_UNDER_LOAD:g} x (requests overlapped)")
            if client < TPOT_UNDER_ITL_RATIO_UNDER_LOAD * engine:
                f.reasons.append(f"client TPOT {_f(client)} ms is below {TPOT_UNDER_ITL_RATIO_UNDER_LOAD:g} x engine "
                                 f"ITL {_f(engine)} ms ({what}, requests overlapped): a stalled stream, not a "
                                 "decode pace")
        return
    if client is None or engine is None:
        f.not_checked.append(f"{name}: {'client TPOT' if client is None else 'engine ITL'} missing")
        return
    f.checked.append(name)
    if client < TPOT_UNDER_ITL_RATIO * engine and not (stream_pace is not None
                                                        and stream_pace >= TPOT_UNDER_ITL_RATIO * engine):
        f.reasons.append(f"client TPOT {_f(client)} ms is below {TPOT_UNDER_ITL_RATIO:g} x engine ITL "
                         f"{_f(engine)} ms ({what}): the client cannot see tokens faster than the engine makes them")
    elif client > TPOT_OVER_ITL_RATIO * engine + TPOT_OVER_ITL_MS:
        f.outside_engine.append(f"client TPOT {_f(client)} ms exceeds {TPOT_OVER_ITL_RATIO:g} x engine ITL {_f(engine)} ms "
                         f"+ {TPOT_OVER_ITL_MS:g} ms ({what}): most of the time per token is outside the engine")


def delivery_margin_ms(engine_ms: float, alone: bool = True) -> float:
    """How far a client TTFT may exceed the engine's (queue +) TTFT ``engine_ms`` before the point is
    implausible (client delivery): ``DELIVERY_MARGIN_MS + DELIVERY_MARGIN_REL x engine_ms`` for
    requests served one at a time, the ``_UNDER_LOAD`` pair where they overlapped."""
    if alone:
        return DELIVERY_MARGIN_MS + DELIVERY_MARGIN_REL * engine_ms
    return DELIVERY_MARGIN_MS_UNDER_LOAD + DELIVERY_MARGIN_REL_UNDER_LOAD * engine_ms


def _margin_text(alone: bool) -> str:
    if alone:
        return f"{DELIVERY_MARGIN_MS:g} ms + {DELIVERY_MARGIN_REL:.0%}"
    return f"{DELIVERY_MARGIN_MS_UNDER_LOAD:g} ms + {DELIVERY_MARGIN_REL_UNDER_LOAD:.0%} (requests overlapped)"


def _check_ttft_vs_engine(f: Findings, client: float | None, engine: float | None, what: str,
                          upper: bool = True, alone: bool = True, engine_name: str = "engine TTFT") -> None:
    """Client TTFT (ms) against the engine's (ms): below it beyond clock noise, or above it beyond
    ``delivery_margin_ms`` (``upper``; ``alone``: the requests were served one at a time), is a
    reason. ``engine_name`` names the engine's value in the reasons."""
    name = f"client TTFT vs engine TTFT ({what})"
    if client is None or engine is None:
        f.not_checked.append(f"{name}: {'client TTFT' if client is None else 'engine TTFT'} missing")
        return
    f.checked.append(name)
    if client < engine - (TTFT_UNDER_ENGINE_MS + TTFT_UNDER_ENGINE_REL * engine):
        f.reasons.append(f"client TTFT {_f(client)} ms is below {engine_name} {_f(engine)} ms by more than "
                         f"{TTFT_UNDER_ENGINE_MS:g} ms + {TTFT_UNDER_ENGINE_REL:.0%} ({what}): the client's clock "
                         f"starts before the engine's and stops after it")
    elif upper and client > engine + delivery_margin_ms(engine, alone):
        f.reasons.append(f"{CLIENT_DELIVERY}: client TTFT {_f(client)} ms exceeds {engine_name} {_f(engine)} ms by "
                         f"{_f(client - engine)} ms, more than {_margin_text(alone)} ({what}): the time went to the "
                         f"API server or the client, so the client's TTFT does not measure the engine")


def _check_floor(f: Findings, kind: str, floor: float | None, measured: Mapping[str, float | None],
                 why_no_floor: str | None) -> None:
    """Every value of ``measured`` ({label: ms}) against the floor (ms), less FLOOR_MARGIN."""
    name = f"{kind} floor"
    if floor is None:
        f.not_checked.append(f"{name}: {why_no_floor or 'no floor'}")
        return
    values = {k: v for k, v in measured.items() if v is not None}
    if not values:
        f.not_checked.append(f"{name}: no measured {kind}")
        return
    f.checked.append(f"{name} ({', '.join(values)})")
    limit = (1.0 - FLOOR_MARGIN) * floor
    below = [f"{k} {_f(v)} ms" for k, v in values.items() if v < limit]
    if below:
        f.reasons.append(f"{', '.join(below)} below the physical {kind} floor {_f(floor)} ms (less "
                         f"{FLOOR_MARGIN:.0%}): faster than the GPU's datasheet peak allows")


def check_latency(*, client_ttft_ms: float | None = None, client_tpot_ms: float | None = None,
                  engine_ttft_ms: float | None = None, engine_itl_ms: float | None = None,
                  ttft_floor_ms: float | None = None, tpot_floor_ms: float | None = None,
                  why_no_floor: str | None = None, what: str = "mean",
                  engine_ttft_covers_client: bool = True) -> Findings:
    """The checks of one set of latency numbers (ms). ``what`` names the statistic compared (it
    goes into the reasons). Missing inputs give a ``not_checked`` entry, never a pass.
    ``engine_ttft_covers_client=False`` (E3 disaggregated: the decode engine's TTFT lacks the
    producer's prefill) keeps only the lower TTFT bound and no engine TTFT floor."""
    f = Findings()
    _check_tpot_vs_itl(f, _num(client_tpot_ms), _num(engine_itl_ms), what)
    _check_ttft_vs_engine(f, _num(client_ttft_ms), _num(engine_ttft_ms), what, upper=engine_ttft_covers_client)
    ttft = {f"client TTFT {what}": _num(client_ttft_ms)}
    if engine_ttft_covers_client:
        ttft["engine TTFT mean"] = _num(engine_ttft_ms)
    _check_floor(f, "TTFT", _num(ttft_floor_ms), ttft, why_no_floor)
    _check_floor(f, "TPOT", _num(tpot_floor_ms), {f"client TPOT {what}": _num(client_tpot_ms),
                                                  "engine ITL mean": _num(engine_itl_ms)}, why_no_floor)
    return f


def floors_ms(hf_config: Mapping[str, Any] | None, prompt_tokens: Any,
              gpu_name: str | None) -> tuple[float | None, float | None, str | None]:
    """(ttft_floor_ms, tpot_floor_ms, why not) of a prompt length on a GPU, as E1's floor columns
    compute them (datasheet peaks; TPOT at the first decode step, batch 1)."""
    n = _num(prompt_tokens)
    if not gpu_name:
        return None, None, "engine not on a known GPU (no gpu name)"
    spec = lookup_gpu(gpu_name)
    if spec is None:
        return None, None, f"GPU {gpu_name!r} is not in analysis.hardware.GPU_SPECS"
    if not hf_config:
        return None, None, "model config.json unavailable"
    if n is None or n <= 0:
        return None, None, "prompt length unknown"
    cfg = dict(hf_config)
    return ttft_floor_s(cfg, int(n), spec) * _MS, tpot_floor_s(cfg, int(n), spec) * _MS, None


def _row_floors(row: Mapping[str, Any], gpu_name: str | None, hf_config: Mapping[str, Any] | None,
                prompt_key: str) -> tuple[float | None, float | None, str | None]:
    ttft_floor, tpot_floor = _num(row.get("ttft_floor_ms")), _num(row.get("tpot_floor_ms"))
    if ttft_floor is not None or tpot_floor is not None:
        return ttft_floor, tpot_floor, None
    computed = floors_ms(hf_config, row.get(prompt_key), gpu_name or row.get("gpu"))
    if computed[2] and row.get("floor_note"):
        return None, None, str(row["floor_note"])
    return computed


def whole_stream_pace_ms(record: Any) -> float | None:
    """(E2E - TTFT) / (output tokens - 1) of a request whose stream had no opening burst (ms): the
    same gaps vLLM's mean ITL averages. The client's TPOT leaves the first gap out (records), so one
    slow early decode step (18.6 ms among ~4 ms steps, seen on the 2-core host while the API server
    streamed the first token) lowers it against vLLM's mean, while the stream as a whole still shows
    the engine's pace. Without an opening burst the first chunk came less than a decode step late,
    so the whole stream cannot look faster than the engine by more than that step. None after an
    opening burst or without the inputs."""
    ttft, e2e, n = (_num(getattr(record, k, None)) for k in ("ttft_s", "e2e_s", "output_tokens"))
    if getattr(record, "opening_burst_tokens", None) != 0 or None in (ttft, e2e, n) or n < 2:
        return None
    return (e2e - ttft) * _MS / (n - 1)


def _summed(bad: list[str], n: int) -> str:
    """One reason for ``bad`` (the reasons of single requests) out of ``n`` checked: the count and
    the first; a client-delivery reason keeps its prefix in front."""
    if len(bad) == 1:
        return bad[0]
    first, prefix = bad[0], ""
    if first.startswith(CLIENT_DELIVERY + ": "):
        prefix, first = CLIENT_DELIVERY + ": ", first[len(CLIENT_DELIVERY) + 2:]
    return f"{prefix}{len(bad)} of {n} requests: {first}"


def check_delivery(records: Sequence[Any]) -> Findings:
    """Streams that arrived whole (``records.read_whole``) among successful records: each makes the
    point implausible (client delivery), with the first one's numbers: its client TTFT and E2E
    against the engine's queue + TTFT and generation time (vLLM's per-request metrics)."""
    f = Findings()
    ok = [r for r in records if getattr(r, "error", None) is None]
    whole = [r for r in ok if read_whole(r)]
    f.checked.append(f"streams delivered as made ({len(ok)} requests)")
    if not whole:
        return f
    f.not_checked.append(f"client TPOT of {len(whole)} of {len(ok)} requests: the stream arrived whole "
                         f"(records.read_whole: the client was not reading while it was made)")
    r = whole[0]
    ttft, e2e = (_num(getattr(r, k, None)) for k in ("ttft_s", "e2e_s"))
    e_ttft, e_queue = _num(getattr(r, "engine_ttft_ms", None)), _num(getattr(r, "engine_queue_ms", None))
    e_gen = _num(getattr(r, "engine_generation_ms", None))
    engine = (f"; the engine had its first token {_f(e_ttft + (e_queue or 0.0))} ms after queueing it"
              + (f" and the last {_f(e_gen)} ms later" if e_gen is not None else "")) if e_ttft is not None else ""
    client = (f"all {getattr(r, 'output_tokens', '?')} tokens between {_f(ttft * _MS)} and {_f(e2e * _MS)} ms "
              f"after the send" if ttft is not None and e2e is not None else "all its tokens at once")
    f.reasons.append(f"{CLIENT_DELIVERY}: {len(whole)} of {len(ok)} streams arrived whole (request "
                     f"{getattr(r, 'request_id', '?')}: {client}{engine}): the client was not reading while the "
                     f"engine made them")
    return f


def check_records(records: Sequence[Any], ttft_floor_ms: float | None = None, tpot_floor_ms: float | None = None,
                  why_no_floor: str | None = None, engine_ttft_covers_client: bool = True,
                  one_at_a_time: bool = True) -> Findings:
    """Per-request checks of successful ``RequestRecord``s (or objects with the same fields):
    client ``ttft_s`` vs ``engine_queue_ms + engine_ttft_ms`` (both ways: the delivery margin
    above, ``one_at_a_time`` choosing it), client ``tpot_s`` vs ``engine_itl_ms`` (vLLM's
    per-request metrics), streams that arrived whole (``check_delivery``), and every request
    against the floors. A finding names how many requests broke the check and the first of them."""
    f = Findings()
    ok = [r for r in records if getattr(r, "error", None) is None]
    if not ok:
        f.not_checked.append("per-request checks: no successful request")
        return f
    ttft_bad, delivery_bad, tpot_bad, outside = [], [], [], []
    n_ttft = n_tpot = 0
    for r in ok:
        rid = getattr(r, "request_id", "?")
        client_ttft = _num(getattr(r, "ttft_s", None))
        client_tpot = _num(getattr(r, "tpot_s", None))
        e_ttft, e_queue = _num(getattr(r, "engine_ttft_ms", None)), _num(getattr(r, "engine_queue_ms", None))
        e_itl = _num(getattr(r, "engine_itl_ms", None))
        if client_ttft is not None and e_ttft is not None:
            n_ttft += 1
            one = Findings()
            _check_ttft_vs_engine(one, client_ttft * _MS, e_ttft + (e_queue or 0.0), f"request {rid}",
                                  upper=engine_ttft_covers_client, alone=one_at_a_time,
                                  engine_name="engine queue + TTFT")
            for reason in one.reasons:
                (delivery_bad if reason.startswith(CLIENT_DELIVERY) else ttft_bad).append(reason)
        if client_tpot is not None and e_itl is not None:
            n_tpot += 1
            one = Findings()
            _check_tpot_vs_itl(one, client_tpot * _MS, e_itl, f"request {rid}", comparable=one_at_a_time,
                               stream_pace=whole_stream_pace_ms(r))
            tpot_bad += one.reasons
            outside += one.outside_engine
    for kind, n, bad in (("client TTFT vs engine TTFT", n_ttft, ttft_bad + delivery_bad),
                         ("client TPOT vs engine ITL", n_tpot, tpot_bad)):
        if not n:
            why = (NOT_COMPARABLE_UNDER_LOAD if kind.startswith("client TPOT") and not one_at_a_time
                   else "no request carried vLLM's per-request metrics")
            f.not_checked.append(f"{kind} (per request): {why}")
            continue
        f.checked.append(f"{kind} (per request, {n} requests)")
    f.reasons += [_summed(bad, n) for bad, n in ((ttft_bad, n_ttft), (delivery_bad, n_ttft), (tpot_bad, n_tpot))
                  if bad]
    f.merge(check_delivery(ok))
    if outside:
        f.outside_engine.append(f"{len(outside)} of {len(ok)} requests: {outside[0]}" if len(outside) > 1 else outside[0])
    ttfts = [x * _MS for x in (_num(getattr(r, "ttft_s", None)) for r in ok) if x is not None]
    tpots = [x * _MS for x in (_num(getattr(r, "tpot_s", None)) for r in ok) if x is not None]
    _check_floor(f, "TTFT", _num(ttft_floor_ms), {"fastest request's client TTFT": min(ttfts, default=None)},
                 why_no_floor)
    _check_floor(f, "TPOT", _num(tpot_floor_ms), {"fastest request's client TPOT": min(tpots, default=None)},
                 why_no_floor)
    return f


def one_at_a_time(row: Mapping[str, Any]) -> bool:
    """Whether a point's requests were served one at a time: E1 (batch 1), an E2 closed-loop point
    at concurrency 1, an E3 point at concurrency 1. Open-loop points (E2's Poisson rates, capacity
    probes and trace replays) may overlap."""
    if _num(row.get("concurrency")) is not None:
        return _num(row.get("concurrency")) == 1
    if row.get("mode") == "concurrency":
        return _num(row.get("level")) == 1
    return row.get("mode") not in ("rate", "capacity", "trace")


def send_lag_stats(lags_s: Sequence[float | None]) -> tuple[float, float, int] | None:
    """The ``SEND_LAG_QUANTILE`` and the largest of the recorded send lags (s), and how many there
    were; None when no request was sent on a schedule."""
    lags = sorted(x for x in (_num(v) for v in lags_s) if x is not None)
    return (float(np.quantile(lags, SEND_LAG_QUANTILE)), lags[-1], len(lags)) if lags else None


def check_send_lag(lags_s: Sequence[float | None], mean_gap_s: float | None) -> Findings:
    """An open-loop point's sends against its schedule: implausible when the ``SEND_LAG_QUANTILE``
    of the requests' send lags (``RequestRecord.send_lag_s``) exceeds the schedule's mean
    inter-arrival gap: the client could not send on time, so the point did not offer the load it
    names (its latencies are real, its rate is not)."""
    f = Findings()
    stats = send_lag_stats(lags_s)
    if stats is None or not mean_gap_s or mean_gap_s <= 0:
        f.not_checked.append("send lag: no scheduled send recorded")
        return f
    lag, largest, n = stats
    what = f"send lag p{SEND_LAG_QUANTILE * 100:g} {_f(lag * _MS)} ms (max {_f(largest * _MS)} ms)"
    f.checked.append(f"open-loop schedule ({n} sends)")
    if lag > mean_gap_s:
        f.reasons.append(f"{what} exceeds the schedule's mean inter-arrival gap {_f(mean_gap_s * _MS)} ms: the "
                         f"client could not send on time (starved of CPU?), so the offered rate was not kept")
    return f


def check_point_row(row: Mapping[str, Any], gpu_name: str | None = None, hf_config: Mapping[str, Any] | None = None,
                    records: Sequence[Any] | None = None) -> Findings:
    """The checks of one latency point row (E1, E2, E3: ``latency_row`` columns plus the engine's
    /metrics columns). Reads ttft_ms_mean, tpot_ms_mean, ttft_ms_p50, tpot_ms_p50,
    engine_ttft_ms_mean, engine_itl_ms_mean, engine_requests, n_ok, and ttft_floor_ms /
    tpot_floor_ms (E1), else computes the floors from ``gpu_name`` (or the row's ``gpu``),
    ``hf_config`` and the row's prompt_tokens. With ``records`` (the point's requests) the
    per-request checks run too. E3 disaggregated rows (``mode == "disaggregated"``) skip the
    checks the decode engine's TTFT cannot support.
    """
    disagg = row.get("mode") == "disaggregated"
    ttft_floor, tpot_floor, why = _row_floors(row, gpu_name, hf_config, "prompt_tokens")
    engine_ttft, engine_itl = _num(row.get("engine_ttft_ms_mean")), _num(row.get("engine_itl_ms_mean"))
    f = Findings()
    engine_n, n_ok = _num(row.get("engine_requests")), _num(row.get("n_ok"))
    if (engine_ttft is not None or engine_itl is not None) and engine_n is not None and n_ok is not None \
            and engine_n != n_ok and not disagg:
        f.not_checked.append(f"engine means: the engine's histograms counted {engine_n:g} requests, the client "
                             f"{n_ok:g} successful ones (different request sets)")
        engine_ttft = engine_itl = None
    ttft_mean, tpot_mean = _num(row.get("ttft_ms_mean")), _num(row.get("tpot_ms_mean"))
    alone = one_at_a_time(row)
    _check_tpot_vs_itl(f, tpot_mean, engine_itl, "mean", comparable=alone)
    _check_ttft_vs_engine(f, ttft_mean, engine_ttft, "mean", upper=not disagg, alone=alone)
    # Every stated client statistic against the floors (a median can sit below a mean that does not).
    ttft = {"client TTFT mean": ttft_mean, "client TTFT p50": _num(row.get("ttft_ms_p50"))}
    if not disagg:
        ttft["engine TTFT mean"] = engine_ttft
    _check_floor(f, "TTFT", ttft_floor, ttft, why)
    _check_floor(f, "TPOT", tpot_floor, {"client TPOT mean": tpot_mean, "client TPOT p50": _num(row.get("tpot_ms_p50")),
                                         "engine ITL mean": engine_itl}, why)
    if records is not None:
        f.merge(check_records(records, ttft_floor, tpot_floor, why, engine_ttft_covers_client=not disagg,
                              one_at_a_time=alone))
    return f


def check_request_row(row: Mapping[str, Any], gpu_name: str | None = None,
                      hf_config: Mapping[str, Any] | None = None) -> Findings:
    """The checks of a one-request row in seconds (E6 stress rows: ttft_s, tpot_s, engine_ttft_s,
    engine_itl_s; E5 memory rows: ttft_s only), plus vLLM's per-request engine_ttft_ms /
    engine_queue_ms / engine_itl_ms where the row carries them. Floors from ``gpu_name``,
    ``hf_config`` and the row's prompt_tokens (else prompt_tokens_target / target_prompt_tokens)."""
    def ms(key: str) -> float | None:
        v = _num(row.get(key))
        return None if v is None else v * _MS

    prompt_key = next((k for k in ("prompt_tokens", "prompt_tokens_target", "target_prompt_tokens")
                       if _num(row.get(k)) is not None), "prompt_tokens")
    ttft_floor, tpot_floor, why = _row_floors(row, gpu_name, hf_config, prompt_key)
    f = check_latency(client_ttft_ms=ms("ttft_s"), client_tpot_ms=ms("tpot_s"), engine_ttft_ms=ms("engine_ttft_s"),
                      engine_itl_ms=ms("engine_itl_s"), ttft_floor_ms=ttft_floor, tpot_floor_ms=tpot_floor,
                      why_no_floor=why, what="of the request")
    if _num(row.get("engine_ttft_ms")) is not None or _num(row.get("engine_itl_ms")) is not None:
        per = Findings()
        e_ttft = _num(row.get("engine_ttft_ms"))
        if e_ttft is not None:
            _check_ttft_vs_engine(per, ms("ttft_s"), e_ttft + (_num(row.get("engine_queue_ms")) or 0.0),
                                  "per-request metrics", engine_name="engine queue + TTFT")
        if _num(row.get("engine_itl_ms")) is not None:
            _check_tpot_vs_itl(per, ms("tpot_s"), _num(row.get("engine_itl_ms")), "per-request metrics")
        f.merge(per)
    return f
