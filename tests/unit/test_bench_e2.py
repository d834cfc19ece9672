"""benchmarks/bench_e2_vs_vllm_bench.py without an engine: its levels, its interleaving, its verdicts."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_e2_vs_vllm_bench.py"
spec = importlib.util.spec_from_file_location("bench_e2_vs_vllm_bench", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_one_engine_start_serves_every_level():
    args = bench.parse_args(["--concurrency", "16", "64", "--num-prompts", "128", "256"])
    assert args.concurrency == [16, 64] and args.num_prompts == [128, 256]
    assert bench.parse_args(["--concurrency", "4", "8", "--num-prompts", "32"]).num_prompts == [32, 32]
    assert bench.parse_args(["--max-concurrency", "4"]).concurrency == [4]     # the old spelling
    with pytest.raises(SystemExit):
        bench.parse_args(["--concurrency", "4", "8", "16", "--num-prompts", "1", "2"])


def test_repeats_interleave_levels_and_rotate_the_clients(monkeypatch):
    order = []
    monkeypatch.setattr(bench, "run_ours", lambda *a, **k: {})
    monkeypatch.setattr(bench, "run_vllm_bench", lambda *a, **k: {})
    monkeypatch.setattr(bench, "one_run", lambda label, k, level, n, *a: order.append((k, level, label)) or {})
    args = bench.parse_args(["--concurrency", "4", "8", "--repeats", "3", "--num-prompts", "8"])
    runs = bench.measure(None, {}, args, None)
    assert [o for o in order if o[0] == 0] == [(0, 4, "ours"), (0, 4, "vllm_bench"), (0, 4, "ours_no_kv_sampling"),
                                               (0, 8, "ours"), (0, 8, "vllm_bench"), (0, 8, "ours_no_kv_sampling")]
    assert [o[2] for o in order if o[:2] == (1, 4)] == ["vllm_bench", "ours_no_kv_sampling", "ours"]
    assert all(len(runs[level][label]) == 3 for level in (4, 8) for label in bench.LABELS)


def test_ratios_and_targets_per_level():
    ours = [{"output_throughput_tok_s": 99.0, "mean_ttft_ms": 104.0}, {"output_throughput_tok_s": 100.0,
                                                                       "mean_ttft_ms": 100.0}]
    theirs = [{"output_throughput_tok_s": 100.0, "mean_ttft_ms": 100.0}] * 2
    ratios = bench.ratio_summary(ours, theirs)
    assert ratios["output_throughput_ratio"] == pytest.approx(0.995)
    assert ratios["mean_ttft_ratio_per_repeat"] == pytest.approx([1.04, 1.0])
    assert bench.targets_met(ratios) == {"throughput_target_met": True, "ttft_target_met": True}
    slow = bench.ratio_summary([{"output_throughput_tok_s": 97.0, "mean_ttft_ms": 146.0}], theirs[:1])
    assert bench.targets_met(slow) == {"throughput_target_met": False, "ttft_target_met": False}
    assert bench.targets_met(bench.ratio_summary([{}], theirs[:1])) == {"throughput_target_met": False,
                                                                        "ttft_target_met": False}
