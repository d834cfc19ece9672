"""One engine start serving every point of an experiment."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Iterable

from ..engine_metrics import WATCHED_GAUGES, MetricsSnapshot, engine_summary
from ..errors import EngineDiedError
from ..records import GenerationRequest, RequestRecord
from .base import ServingBackend


# How often a running E2 point samples the engine's gauges. Up to bf77132 each sample was a full
# /metrics scrape (~600 lines rendered in the API server's process, parsed with prometheus_client
# in the client's, both under the GIL their event loops need: 5 and 9 ms of CPU per sample on the
# idle 2-core host), and E2's mean TTFT was 1.46 x vllm bench serve's at concurrency 256 on an
# H100. Now a sample asks for two gauges (engine_metrics.gauge_path): 0.5 and 0.3 ms.
WATCH_INTERVAL_S = 0.25


class EngineSession:
    """What an experiment body sees: a started backend, its model, and workload helpers."""

    def __init__(self, backend: ServingBackend, model: dict[str, Any], progress: bool = True):
        self.backend = backend
        self.model = model
        self.progress = progress and sys.stderr.isatty()
        self._kv_peak: float | None = None
        self.scrape_error: str | None = None
        self._in_flight = 0  # client: requests sent and not finished (run_requests)
        self.warmups: list[dict[str, Any]] = []  # every warm-up's result (warmup.warm_session)

    @property
    def backend_mode(self) -> str:
        return self.backend.mode

    def snapshot(self) -> MetricsSnapshot | None:
        """The engine's /metrics now; None if it has none or the scrape failed (an engine that
        died mid-sweep must not cost the points already measured): ``scrape_error`` says why."""
        try:
            text = self.backend.metrics_text()
        except OSError as exc:  # URLError, connection refused, timeout
            self.scrape_error = f"/metrics scrape failed: {exc}"
            return None
        self.scrape_error = None if text is not None else "backend exposes no /metrics"
        return MetricsSnapshot.parse(text) if text is not None else None

    def gauges(self, names: tuple[str, ...] = WATCHED_GAUGES) -> dict[str, float] | None:
        """The engine's gauges ``names`` now, fetched alone (``backend.gauges``); None without
        /metrics or when the scrape failed (``scrape_error`` says why)."""
        try:
            return self.backend.gauges(names)
        except OSError as exc:
            self.scrape_error = f"/metrics scrape failed: {exc}"
            return None

    def exit_reason(self) -> str | None:
        """None while the engine runs; once it has exited, why."""
        return self.backend.exit_reason()

    def raise_if_died(self) -> None:
        """After a sweep has written its rows: fail the run if the engine died along the way."""
        reason = self.exit_reason()
        if reason:
            raise EngineDiedError(f"{reason}. The points measured before that were written; the points after it "
                                  "are failed rows with this reason.")

    async def generate(self, req: GenerationRequest, run_t0: float | None = None) -> RequestRecord:
        return await self.backend.generate(req, time.perf_counter() if run_t0 is None else run_t0)

    async def run_requests(self, requests: Iterable[GenerationRequest], max_concurrency: int | None = None,
                           use_schedule: bool = False, desc: str = "requests",
                           sample_kv_usage: bool = False, monitor: Any = None) -> tuple[list[RequestRecord], float]:
        """Serve ``requests`` and return their records (in input order) and the wall duration.

        ``max_concurrency`` bounds requests in flight; with ``use_schedule`` each request is sent at
        its ``scheduled_offset_s`` (an open-loop arrival process) rather than as soon as a slot frees.
        ``monitor`` (E2's ``analysis.saturation.SaturationMonitor``) gets the client's in-flight count
        and the engine's waiting queue every sample and each completed record; once its
        ``stop_reason()`` says so, requests not yet sent are skipped (no record) and those in flight
        finish.
        """
        reqs = list(requests)
        self._in_flight = 0
        stop_sending = asyncio.Event()
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(reqs), desc=desc, unit="req", leave=False)
        t0 = time.perf_counter()

        async def one(req: GenerationRequest) -> RequestRecord:
            lag = None
            if use_schedule and req.scheduled_offset_s is not None:
                delay = t0 + req.scheduled_offset_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # a late send (an event loop starved of CPU) offers less load than the point names
                lag = max(0.0, time.perf_counter() - t0 - req.scheduled_offset_s)
            if sem is None:
                rec = await self._send(req, t0, stop_sending)
            else:
                async with sem:
                    rec = await self._send(req, t0, stop_sending)
            if rec is not None:
                rec.send_lag_s = lag
            if bar is not None:
                bar.update(1)
            if rec is not None and monitor is not None:
                monitor.on_completion(rec)
                if monitor.stop_reason():
                    stop_sending.set()
            return rec

        stop_sampler = asyncio.Event()
        sampler = asyncio.create_task(self._sample_kv(stop_sampler, monitor=monitor, t0=t0, stop_sending=stop_sending)) \
            if sample_kv_usage or monitor is not None else None
        self._kv_peak = None
        try:
            records = [r for r in await asyncio.gather(*(one(r) for r in reqs)) if r is not None]
        finally:
            stop_sampler.set()
            if sampler is not None:
                await sampler
            if bar is not None:
                bar.close()
        return list(records), time.perf_counter() - t0

    async def _send(self, req: GenerationRequest, t0: float, stop_sending: asyncio.Event) -> RequestRecord | None:
        if stop_sending.is_set():
            return None
        self._in_flight += 1
        try:
            return await self.backend.generate(req, t0)
        finally:
            self._in_flight -= 1

    async def _sample_kv(self, stop: asyncio.Event, interval_s: float = WATCH_INTERVAL_S, monitor: Any = None,
                         t0: float = 0.0, stop_sending: asyncio.Event | None = None) -> None:
        """Peak of vllm:kv_cache_usage_perc while a workload runs (the gauge is instantaneous);
        with a ``monitor``, also the load it watches for over-saturation. Each sample fetches the
        two ``WATCHED_GAUGES`` alone, off the event loop (see ``WATCH_INTERVAL_S``)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                gauges = await loop.run_in_executor(None, self.gauges)
                value = gauges.get("vllm:kv_cache_usage_perc") if gauges else None
                if value is not None:
                    self._kv_peak = max(self._kv_peak or 0.0, value)
                if monitor is not None:
                    monitor.on_sample(time.perf_counter() - t0, self._in_flight,
                                      gauges.get("vllm:num_requests_waiting") if gauges else None)
                    if monitor.stop_reason() and stop_sending is not None:
                        stop_sending.set()
            except Exception:
                pass
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass

    async def measure(self, requests: list[GenerationRequest], **kwargs) -> dict[str, Any]:
        """Run a workload between two /metrics snapshots; returns records, duration and engine view."""
        before = self.snapshot()
        records, duration = await self.run_requests(requests, **kwargs)
        after = self.snapshot()
        engine = engine_summary(before, after) if before is not None and after is not None else {
            "measured_on": "engine", "available": False, "reason": self.scrape_error or "no /metrics snapshot"}
        engine["engine_kv_cache_usage_peak"] = self._kv_peak
        return {"records": records, "duration_s": duration, "engine": engine}

    async def aclose(self) -> None:
        close = getattr(self.backend, "close_client", None)
        if close is not None:
            await close()
