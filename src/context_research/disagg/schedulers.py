"""Aggregated and disaggregated request scheduling over real engines, with JSONL route logs.

Both schedulers take the same ``GenerationRequest`` list and return one ``RequestRecord`` per
request as the user sees it (send -> first token -> last token), so their latency and goodput
are directly comparable:

- ``AggregatedScheduler``: one pool; the request goes to one engine that prefills and decodes.
- ``DisaggregatedScheduler``: the broker sends the prompt to the prefill pool (producer,
  ``max_tokens=1``, non-streamed so the connector's ``kv_transfer_params`` come back), then
  streams the same prompt from the decode pool (consumer), which loads the KV instead of
  recomputing it; the bytes each handoff moved are measured after all requests completed. The user-visible TTFT is producer E2E + consumer TTFT (what a
  proxy in front of two pools, like vLLM's disaggregation examples, delivers).

Route-log rows (one per engine call): ``request_id``, ``handoff_id`` (None when aggregated),
``mode``, ``kv_path`` (the way the KV moved; None when aggregated), ``pool`` ("aggregated" | "prefill" | "decode"), ``phase`` ("prefill+decode" |
"prefill" | "decode" | "prefill_baseline"), ``engine_url``, the point (``prompt_tokens``,
``concurrency``), ``label`` (measured | warmup), timestamps ``t_sent_s`` / ``t_first_token_s`` /
``t_done_s`` (seconds since the scheduler's epoch, ``time.perf_counter``) and ``unix_sent``,
``output_tokens``, ``ok`` and ``error``.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import aiohttp

from ..backends.client import build_payload, http_session
from ..io import write_jsonl
from ..records import GenerationRequest, RequestRecord
from . import connectors
from .broker import Handoff, KvBroker

ROUTE_FIELDS = ("request_id", "handoff_id", "mode", "kv_path", "pool", "phase", "engine_url", "prompt_tokens",
                "concurrency", "label", "t_sent_s", "t_first_token_s", "t_done_s", "unix_sent",
                "output_tokens", "ok", "error")
PHASES = ("prefill+decode", "prefill", "decode", "prefill_baseline")
POOLS = ("aggregated", "prefill", "decode")


class RouteLog:
    """Rows of one scheduler's routing decisions; ``write`` saves them as JSONL."""

    def __init__(self, mode: str, kv_path: str | None = None):
        self.mode = mode
        self.kv_path = kv_path
        self.epoch = time.perf_counter()
        self.epoch_unix = time.time()
        self.rows: list[dict[str, Any]] = []

    def now(self) -> float:
        return time.perf_counter() - self.epoch

    def add(self, *, request_id: str, pool: str, phase: str, t_sent_s: float, t_done_s: float | None,
            t_first_token_s: float | None = None, handoff_id: str | None = None, engine_url: str | None = None,
            point: dict[str, Any] | None = None, label: str = "measured", output_tokens: int | None = None,
            ok: bool = True, error: str | None = None) -> dict[str, Any]:
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}")
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        point = point or {}
        row = {"request_id": request_id, "handoff_id": handoff_id, "mode": self.mode, "kv_path": self.kv_path,
               "pool": pool,
               "phase": phase, "engine_url": engine_url, "prompt_tokens": point.get("prompt_tokens"),
               "concurrency": point.get("concurrency"), "label": label, "t_sent_s": t_sent_s,
               "t_first_token_s": t_first_token_s, "t_done_s": t_done_s,
               "unix_sent": self.epoch_unix + t_sent_s, "output_tokens": output_tokens, "ok": ok, "error": error}
        self.rows.append(row)
        return row

    def write(self, path: str | Path) -> Path:
        return write_jsonl(path, self.rows)


@dataclass
class PrefillResult:
    """A non-streamed ``max_tokens=1`` request: what a producer (or the baseline) answered."""

    request_id: str
    start_s: float | None = None       # send time since the caller's run_t0
    e2e_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    kv_transfer_params: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def prefill_request(http: aiohttp.ClientSession, base_url: str, model_name: str, req: GenerationRequest,
                          run_t0: float) -> PrefillResult:
    """Send ``req`` with ``max_tokens=1``, not streamed, and time it (send -> full response)."""
    path, body = build_payload(replace(req, max_tokens=1), model_name)
    body["stream"] = False
    body.pop("stream_options", None)
    out = PrefillResult(request_id=req.request_id)
    send_t = time.perf_counter()
    out.start_s = send_t - run_t0
    try:
        async with http.post(base_url.rstrip("/") + path, json=body) as resp:
            text = await resp.text()
            done = time.perf_counter()
            if resp.status != 200:
                out.error = f"HTTP {resp.status}: {text[:500]}"
                return out
        data = json.loads(text)
    except Exception as exc:  # a failed request is a recorded row
        out.error = f"{type(exc).__name__}: {exc}"
        return out
    out.e2e_s = done - send_t
    usage = data.get("usage") or {}
    out.prompt_tokens = usage.get("prompt_tokens")
    out.output_tokens = usage.get("completion_tokens")
    out.kv_transfer_params = data.get("kv_transfer_params")
    return out


def combine_records(producer: PrefillResult, consumer: RequestRecord, request_id: str) -> RequestRecord:
    """The user's view of a disaggregated request: from the producer send to the consumer's tokens.

    Both ``start_s`` are relative to the same run_t0, so TTFT = consumer first token - producer
    send; TPOT, ITL, the stream's burst counts and the engine's per-request metrics are the
    consumer's (decode happens only there).
    """
    rec = RequestRecord(request_id=request_id, prompt_tokens_target=consumer.prompt_tokens_target,
                        prompt_tokens=consumer.prompt_tokens, output_tokens=consumer.output_tokens,
                        max_tokens=consumer.max_tokens, start_s=producer.start_s, itl_s=list(consumer.itl_s),
                        token_ids=consumer.token_ids, text=consumer.text, finish_reason=consumer.finish_reason,
                        scheduled_offset_s=consumer.scheduled_offset_s)
    if not producer.ok:
        rec.error = f"prefill pool: {producer.error}"
        return rec
    if not consumer.ok:
        rec.error = f"decode pool: {consumer.error}"
        return rec
    offset = consumer.start_s - producer.start_s
    rec.ttft_s = offset + consumer.ttft_s if consumer.ttft_s is not None else None
    rec.e2e_s = offset + consumer.e2e_s if consumer.e2e_s is not None else None
    rec.tpot_s = consumer.tpot_s
    # The engine's per-request view is the consumer's: it decoded every token the user saw.
    for name in ("first_chunk_tokens", "opening_burst_tokens", "engine_ttft_ms", "engine_queue_ms",
                 "engine_generation_ms", "engine_itl_ms"):
        setattr(rec, name, getattr(consumer, name))
    return rec


@dataclass
class ServeResult:
    records: list[RequestRecord]
    duration_s: float
    handoffs: list[Handoff] = field(default_factory=list)
    prefill: list[PrefillResult] = field(default_factory=list)


class Scheduler(abc.ABC):
    """The small interface both modes share."""

    mode: str = ""

    def __init__(self, route_log: RouteLog | None = None, request_timeout_s: float = 900.0):
        self.route_log = route_log or RouteLog(self.mode)
        self._timeout = request_timeout_s
        self._http: aiohttp.ClientSession | None = None

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = http_session(self._timeout)
        return self._http

    @abc.abstractmethod
    async def serve(self, requests: Sequence[GenerationRequest], max_concurrency: int,
                    point: dict[str, Any] | None = None, label: str = "measured", **kwargs) -> ServeResult:
        """Serve every request (at most ``max_concurrency`` in flight); records in input order."""

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _base_url(session) -> str:
    return getattr(session.backend, "base_url", None) or "simulated://"


class AggregatedScheduler(Scheduler):
    """Prefill and decode on one pool of one engine."""

    mode = "aggregated"

    def __init__(self, session, route_log: RouteLog | None = None, request_timeout_s: float = 900.0):
        super().__init__(route_log, request_timeout_s)
        self.session = session

    async def serve(self, requests, max_concurrency, point=None, label="measured", **kwargs) -> ServeResult:
        sem = asyncio.Semaphore(max(1, int(max_concurrency)))
        t0 = time.perf_counter()

        async def one(req: GenerationRequest) -> RequestRecord:
            async with sem:
                sent = self.route_log.now()
                rec = await self.session.generate(req, t0)
                self._log(rec, sent, point, label)
                return rec

        records = await asyncio.gather(*(one(r) for r in requests))
        return ServeResult(records=list(records), duration_s=time.perf_counter() - t0)

    def _log(self, rec: RequestRecord, sent: float, point, label: str) -> None:
        first = sent + rec.ttft_s if rec.ttft_s is not None else None
        done = sent + rec.e2e_s if rec.e2e_s is not None else None
        self.route_log.add(request_id=rec.request_id, pool="aggregated", phase="prefill+decode", t_sent_s=sent,
                           t_first_token_s=first, t_done_s=done, engine_url=_base_url(self.session), point=point,
                           label=label, output_tokens=rec.output_tokens, ok=rec.ok, error=rec.error)

    async def prefill_baseline(self, requests, max_concurrency, point=None, label="measured") -> list[PrefillResult]:
        """The same requests as ``max_tokens=1`` non-streamed calls: the store-time baseline."""
        sem = asyncio.Semaphore(max(1, int(max_concurrency)))
        t0 = time.perf_counter()
        http = await self.http()
        name = self.session.backend.served_name

        async def one(req: GenerationRequest) -> PrefillResult:
            async with sem:
                sent = self.route_log.now()
                res = await prefill_request(http, _base_url(self.session), name, req, t0)
                done = sent + res.e2e_s if res.e2e_s is not None else None
                self.route_log.add(request_id=req.request_id, pool="aggregated", phase="prefill_baseline",
                                   t_sent_s=sent, t_first_token_s=done, t_done_s=done,
                                   engine_url=_base_url(self.session), point=point, label=label,
                                   output_tokens=res.output_tokens, ok=res.ok, error=res.error)
                return res

        return list(await asyncio.gather(*(one(r) for r in requests)))


class DisaggregatedScheduler(Scheduler):
    """A prefill pool (KV producer) and a decode pool (KV consumer) joined by a KV connector."""

    mode = "disaggregated"

    def __init__(self, prefill_session, decode_session, broker: KvBroker, cfg: dict[str, Any],
                 route_log: RouteLog | None = None, request_timeout_s: float = 900.0):
        super().__init__(route_log, request_timeout_s)
        self.prefill = prefill_session
        self.decode = decode_session
        self.broker = broker
        self.cfg = cfg
        self.connector = broker.connector

    async def serve(self, requests, max_concurrency, point=None, label="measured",
                    baseline_prefill_s: float | None = None, **kwargs) -> ServeResult:
        sem = asyncio.Semaphore(max(1, int(max_concurrency)))
        t0 = time.perf_counter()
        http = await self.http()
        prefill_name = self.prefill.backend.served_name
        handoffs: list[Handoff] = []
        producers: list[PrefillResult] = []
        stored: list[Handoff] = []

        async def one(req: GenerationRequest) -> RequestRecord:
            async with sem:
                h = self.broker.open(req.request_id, req.prompt)
                h.baseline_prefill_s = baseline_prefill_s
                h.label, h.concurrency = label, (point or {}).get("concurrency")
                handoffs.append(h)
                # The handoff id rides in both requests' ids: the engines' ledgers are joined on it.
                p2p_id = (connectors.p2p_request_id(self.cfg, f"{h.handoff_id}_{uuid.uuid4().hex}")
                          if self.connector == "P2pNcclConnector" else None)
                ids = {"request_id": p2p_id or h.handoff_id}
                preq = replace(req, extra={**req.extra, **ids, **connectors.producer_request_extra(
                    self.connector, self.cfg, p2p_id)})
                sent = self.route_log.now()
                pre = await prefill_request(http, _base_url(self.prefill), prefill_name, preq, t0)
                producers.append(pre)
                pdone = sent + pre.e2e_s if pre.e2e_s is not None else None
                self.route_log.add(request_id=req.request_id, handoff_id=h.handoff_id, pool="prefill",
                                   phase="prefill", t_sent_s=sent, t_first_token_s=pdone, t_done_s=pdone,
                                   engine_url=_base_url(self.prefill), point=point, label=label,
                                   output_tokens=pre.output_tokens, ok=pre.ok, error=pre.error)
                h.producer_e2e_s = pre.e2e_s
                if pre.start_s is not None:
                    h.t_producer_sent = t0 + pre.start_s
                    h.t_producer_replied = h.t_producer_sent + pre.e2e_s if pre.e2e_s is not None else None
                if not pre.ok:
                    h.error = f"prefill pool: {pre.error}"
                    return combine_records(pre, RequestRecord(req.request_id, req.prompt_tokens_target,
                                                              max_tokens=req.max_tokens), req.request_id)
                stored.append(h)   # the producer wrote the KV: measure it once nothing is timed
                try:
                    extra = connectors.consumer_request_extra(self.connector, pre.kv_transfer_params, p2p_id)
                except ValueError as exc:
                    h.error = str(exc)
                    rec = RequestRecord(req.request_id, req.prompt_tokens_target, max_tokens=req.max_tokens,
                                        error=str(exc))
                    return combine_records(pre, rec, req.request_id)
                dreq = replace(req, extra={**req.extra, **ids, **extra})
                dsent = self.route_log.now()
                rec = await self.decode.generate(dreq, t0)
                self.route_log.add(request_id=req.request_id, handoff_id=h.handoff_id, pool="decode",
                                   phase="decode", t_sent_s=dsent,
                                   t_first_token_s=dsent + rec.ttft_s if rec.ttft_s is not None else None,
                                   t_done_s=dsent + rec.e2e_s if rec.e2e_s is not None else None,
                                   engine_url=_base_url(self.decode), point=point, label=label,
                                   output_tokens=rec.output_tokens, ok=rec.ok, error=rec.error)
                h.consumer_ttft_s, h.consumer_e2e_s = rec.ttft_s, rec.e2e_s
                if rec.start_s is not None:
                    h.t_consumer_sent = t0 + rec.start_s
                    h.t_consumer_first_token = h.t_consumer_sent + rec.ttft_s if rec.ttft_s is not None else None
                h.ok = rec.ok
                h.error = None if rec.ok else f"decode pool: {rec.error}"
                return combine_records(pre, rec, req.request_id)

        records = await asyncio.gather(*(one(r) for r in requests))
        duration_s = time.perf_counter() - t0
        # Byte accounting (stat + safetensors headers of every per-layer file) runs after every
        # consumer request has completed: inside the requests it would count in the user-visible
        # TTFT/E2E and block the event loop under the other requests in flight. The connector's
        # folder stays until the end of the run, so nothing is lost by waiting.
        for h in stored:
            self.broker.account_store(h)
        by_id = {h.request_id: h for h in handoffs}
        ordered = [by_id[r.request_id] for r in requests if r.request_id in by_id]
        pre_by_id = {p.request_id: p for p in producers}
        return ServeResult(records=list(records), duration_s=duration_s, handoffs=ordered,
                           prefill=[pre_by_id[r.request_id] for r in requests if r.request_id in pre_by_id])
