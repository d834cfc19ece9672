"""The sampling's own cost, A/B/C in one engine start: E2's closed-loop driver (``measure_point``)
without sampling, with E2's sampling (two gauges every 0.25 s) and with bf77132's (the full
/metrics text every 0.25 s), in a rotating order, ``--repeats`` times per level. No third-party
client runs in between (``vllm bench serve`` starts a Python process that takes the CPU for ~10 s
before each of its runs), so more repeats fit and each triple is taken back to back.

    python docs/evidence/2026-12-07-cpu-e2-sampling/sampling_ab.py --concurrency 16 64 --out X.json
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from pathlib import Path

from context_research.io import write_json
from context_research.metadata import engine_distribution, git_commit, hardware, hardware_label
from context_research.workload.prompts import PromptFactory

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench_e2_vs_vllm_bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CLIENTS = {"none": dict(sample_kv_usage=False), "gauges": dict(sample_kv_usage=True),
           "full_scrape": dict(sample_kv_usage=True, full_scrape=True)}


def gm(xs):
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    p.add_argument("--num-prompts", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    names = list(CLIENTS)
    runs = {str(c): {n: [] for n in names} for c in args.concurrency}
    t0 = time.perf_counter()
    with bench.engine_for(args.configfile, args.out + ".engine.log", "sampling_ab") as (model, backend, guard):
        factory = PromptFactory(model, args.seed)
        for c in args.concurrency:  # warm every path
            bench.run_ours(backend, model, args, factory, 16, concurrency=c, **CLIENTS["full_scrape"])
        for k in range(args.repeats):
            for c, n in zip(args.concurrency, args.num_prompts):
                for name in names[k % 3:] + names[:k % 3]:
                    r = bench.run_ours(backend, model, args, factory, n, concurrency=c, **CLIENTS[name])
                    r.update(repeat=k, concurrency=c, sampling=name)
                    runs[str(c)][name].append(r)
                    print(f"c={c} k={k} {name:<12} {r['output_throughput_tok_s']:8.1f} tok/s  TTFT "
                          f"{r['mean_ttft_ms']:8.2f} ms", file=sys.stderr, flush=True)
    summary = {}
    for c, by in runs.items():
        summary[c] = {}
        for name in ("gauges", "full_scrape"):
            pairs = list(zip(by[name], by["none"]))
            ttft = [a["mean_ttft_ms"] / b["mean_ttft_ms"] for a, b in pairs]
            tput = [a["output_throughput_tok_s"] / b["output_throughput_tok_s"] for a, b in pairs]
            summary[c][name + "_over_none"] = {
                "mean_ttft_ratio_median": statistics.median(ttft), "mean_ttft_ratio_geomean": gm(ttft),
                "mean_ttft_ratio_per_repeat": ttft, "throughput_ratio_median": statistics.median(tput),
                "throughput_ratio_geomean": gm(tput), "throughput_ratio_per_repeat": tput}
    write_json(args.out, {"commit": git_commit(), "engine": engine_distribution(), "hardware": hardware_label(hardware()),
                          "model": model["path"], "weights": model["weights"], "workload": vars(args),
                          "contention": guard.metadata().get("contention"), "runs": runs, "summary": summary,
                          "wall_s": time.perf_counter() - t0, "measured_on": "client"})
    for c, s in summary.items():
        for name, r in s.items():
            print(f"c={c} {name}: TTFT ratio median {r['mean_ttft_ratio_median']:.3f} (geomean "
                  f"{r['mean_ttft_ratio_geomean']:.3f}), throughput ratio median {r['throughput_ratio_median']:.3f} "
                  f"(geomean {r['throughput_ratio_geomean']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
