"""What one /metrics sample costs on the CPU engine, E2's old way and its new one.

Starts the configured engine once (the device lock held, as a run holds it) and, for each way,

* ``full`` (up to bf77132): GET /metrics, ``MetricsSnapshot.parse`` (prometheus_client's parser);
* ``gauges`` (now): GET ``engine_metrics.gauge_path()`` (two gauges), ``parse_gauges``;

takes ``--samples`` samples back to back on an idle server and reports per sample: the response's
lines and bytes, the wall time, the API server's CPU time (``/proc/<pid>/stat`` of the ``vllm
serve`` process, which runs the API server; EngineCore is its child) and the sampling thread's CPU
time (``time.thread_time``: request + parse). Then, under a closed loop of ``--concurrency``
streams, the wall time of samples taken every 0.25 s (how long the request waited on the busy
API server). Run: ``python docs/evidence/2026-12-07-cpu-e2-sampling/scrape_cost.py --out X.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
import importlib.util
import urllib.request
from pathlib import Path

from context_research.backends.client import auth_headers
from context_research.engine_metrics import MetricsSnapshot, gauge_path, parse_gauges
from context_research.backends.session import EngineSession
from context_research.io import write_json
from context_research.metadata import engine_distribution, git_commit, hardware, hardware_label
from context_research.workload.prompts import PromptFactory

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench_e2_vs_vllm_bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime + stime


def sample(backend, way: str) -> dict:
    t0, c0 = time.perf_counter(), time.thread_time()
    path = "/metrics" if way == "full" else gauge_path()
    with urllib.request.urlopen(urllib.request.Request(backend.base_url + path,
                                                       headers=auth_headers(backend.api_key)), timeout=30) as r:
        body = r.read()
    wall = time.perf_counter() - t0
    text = body.decode()
    if way == "full":
        MetricsSnapshot.parse(text).total("vllm:kv_cache_usage_perc")
    else:
        parse_gauges(text)
    return {"wall_ms": wall * 1e3, "client_cpu_ms": (time.thread_time() - c0) * 1e3,
            "lines": text.count("\n"), "bytes": len(body)}


def idle(backend, way: str, n: int) -> dict:
    pid = backend.proc.pid
    sample(backend, way)
    s0 = cpu_s(pid)
    runs = [sample(backend, way) for _ in range(n)]
    server = (cpu_s(pid) - s0) * 1e3 / n
    return {"samples": n, "server_cpu_ms_per_sample": server, **summary(runs)}


def summary(runs: list[dict]) -> dict:
    return {f"{k}_median": statistics.median(r[k] for r in runs) for k in runs[0]} | \
           {f"{k}_max": max(r[k] for r in runs) for k in ("wall_ms",)}


def under_load(backend, model, way: str, concurrency: int, requests: int, args) -> dict:
    factory = PromptFactory(model, args.seed)
    reqs = factory.requests(f"{way}-load", requests, args.input_len, args.output_len)
    runs: list[dict] = []
    stop = threading.Event()

    def watcher():
        while not stop.wait(0.25):
            runs.append(sample(backend, way))

    async def go():
        session = EngineSession(backend, model, progress=False)
        try:
            return await session.run_requests(reqs, max_concurrency=concurrency)
        finally:
            await session.aclose()

    thread = threading.Thread(target=watcher, daemon=True)
    pid, s0, t0 = backend.proc.pid, cpu_s(backend.proc.pid), time.perf_counter()
    thread.start()
    records, duration = asyncio.run(go())
    stop.set()
    thread.join()
    ttft = [r.ttft_s * 1e3 for r in records if r.ok]
    return {"concurrency": concurrency, "requests": len(records), "duration_s": duration,
            "server_cpu_share": (cpu_s(pid) - s0) / (time.perf_counter() - t0), "samples": len(runs),
            "client_ttft_ms_mean": statistics.mean(ttft), **summary(runs)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"])
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    with bench.engine_for(args.configfile, args.out + ".engine.log", "scrape_cost") as (model, backend, guard):
        out = {"commit": git_commit(), "engine": engine_distribution(), "hardware": hardware_label(hardware()),
               "model": model["path"], "weights": model["weights"], "idle": {}, "load": {}}
        for way in ("full", "gauges", "full", "gauges"):
            out["idle"].setdefault(way, []).append(idle(backend, way, args.samples))
        for way in ("full", "gauges", "full", "gauges"):
            out["load"].setdefault(way, []).append(under_load(backend, model, way, args.concurrency,
                                                              args.requests, args))
            print(way, out["load"][way][-1], file=sys.stderr, flush=True)
    out["contention"] = guard.metadata().get("contention")
    write_json(args.out, out)
    for way, rows in out["idle"].items():
        print("idle", way, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
