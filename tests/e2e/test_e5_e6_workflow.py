"""E5 (memory decomposition) and E6 (YaRN stress) end to end on the real engine."""

import json
import math
import re

import pandas as pd
import pytest

from context_research.analysis.memory import parse_vllm_memory_log

from .conftest import copy_checkout, run_snakemake, texts

pytestmark = pytest.mark.e2e

TARGETS = ("results/e5/memory.csv", "results/e6/stress.csv", "reports/e5.md", "reports/e6.md")


@pytest.fixture(scope="module")
def wf(workflow_dir):
    """The shared workflow folder with E5 and E6 built (a no-op when report.experiments has them)."""
    proc = run_snakemake(workflow_dir, *TARGETS)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((workflow_dir / "logs").glob("e[56]*.log")))
        pytest.fail(f"snakemake {' '.join(TARGETS)} failed:\n{proc.stderr[-4000:]}\n{logs}")
    return workflow_dir


def _json(path):
    return json.loads(path.read_text())


# -- E5 ------------------------------------------------------------------------------------------

def test_e5_has_a_row_per_length_with_components_from_the_engine_log(wf):
    meta = _json(wf / "results/e5/run_metadata.json")
    cfg = meta["hash_inputs"]["experiment_config"]
    frame = pd.read_csv(wf / "results/e5/memory.csv")
    assert list(frame["mode"]) == ["aggregated"] * len(cfg["prompt_tokens"])
    assert list(frame["prompt_tokens_target"]) == cfg["prompt_tokens"]
    assert (frame["status"] == "ok").all(), frame["reason"].tolist()
    assert (frame["prompt_tokens"] == frame["prompt_tokens_target"]).all()
    assert (frame["output_tokens"] == cfg["max_tokens"]).all()
    assert (frame["backend_mode"] == "real").all() and (frame["run_id"] == meta["run_id"]).all()

    log = (wf / "results/e5/engine.log").read_text(errors="replace")
    parsed = parse_vllm_memory_log(log)
    assert (frame["kv_cache_allocated_gib"] == parsed["kv_cache_gib"]).all() and parsed["kv_cache_gib"] > 0
    assert (frame["kv_cache_tokens"] == parsed["kv_cache_tokens"]).all()
    gpu = json.loads((wf / "results/e5/gpu_stats.json").read_text())["nvml"]
    if gpu["available"]:
        assert (frame["weights_gib"] > 0).all() and (frame["nvml_peak_used_gib"] > 0).all()
        assert (frame["nvml_peak_used_gib"] <= frame["nvml_total_gib"]).all()
    else:
        # vLLM-CPU: the worker's KV reservation line, read here independently of the parser.
        m = re.search(r"(?:Explicitly|Auto) set \(([\d.]+)/[\d.]+\) GiB for KV cache", log)
        assert m and (frame["cpu_kv_cache_gib"] == float(m.group(1))).all()
        tokens = int(re.search(r"CPU KV cache size: ([\d,]+) tokens", log).group(1).replace(",", ""))
        assert (frame["kv_cache_tokens"] == tokens).all() and (frame["kv_cache_device"] == "CPU").all()
        assert (frame["process_rss_gib"] > 0).all()
        env = meta["engine"]["env"].get("VLLM_CPU_KVCACHE_SPACE")
        assert env is None or (frame["cpu_kvcache_space_env_gib"] == float(env)).all()


def test_e5_kv_used_analytical_vs_engine(wf):
    frame = pd.read_csv(wf / "results/e5/memory.csv")
    # The engine's own pool bytes / pool tokens equals the analytical bytes/token at its KV dtype.
    assert frame["kv_bytes_per_token_engine"].tolist() == pytest.approx(
        frame["kv_bytes_per_token_analytical"].tolist(), rel=0.01)
    held = frame["prompt_tokens"] + frame["output_tokens"] - 1
    assert (frame["kv_tokens_held"] == held).all()
    assert frame["kv_blocks_analytical"].tolist() == [math.ceil(h / b) for h, b in zip(held, frame["block_size"])]
    assert set(frame["kv_check_verdict"]) <= {"agree", "partial", "inconclusive", "not_observed"}, \
        frame[["kv_check_verdict", "kv_check_note"]].to_string()
    agree = frame[frame["kv_check_verdict"] == "agree"]
    assert (agree["kv_gauge_relative_error"].abs() <= agree["kv_check_tolerance"]).all()
    seen = frame[frame["kv_blocks_gauge"].notna() & (frame["kv_usage_peak"] > 0)]
    # Whatever the gauge saw is whole blocks, never more than the request can hold.
    assert ((seen["kv_blocks_gauge"] - seen["kv_blocks_gauge"].round()).abs() < 0.05).all()
    assert (seen["kv_blocks_gauge"].round() <= seen["kv_blocks_analytical"]).all()
    assert texts(frame.loc[frame["kv_check_verdict"] != "agree", "kv_check_note"]).str.len().gt(0).all()


def test_e5_figure_and_report(wf):
    meta = _json(wf / "results/e5/run_metadata.json")
    svg = (wf / "results/e5/memory.svg").read_text()
    assert meta["run_id"] in svg and "KV allocated, unused" in svg
    md = (wf / "reports/e5.md").read_text()
    assert meta["run_id"] in md and "KV check" in md


# -- E6 ------------------------------------------------------------------------------------------

def test_e6_stress_has_a_row_per_target(wf):
    meta = _json(wf / "results/e6/run_metadata.json")
    cfg = meta["hash_inputs"]["experiment_config"]
    frame = pd.read_csv(wf / "results/e6/stress.csv")
    primary = frame[frame["pass"] == "primary"]
    assert list(primary["target_prompt_tokens"]) == cfg["targets"]
    native = meta["rope"]["original_max_position_embeddings"]
    ok = primary[primary["status"] == "ok"]
    assert (ok["prompt_tokens"] == ok["target_prompt_tokens"]).all()
    assert (ok["output_tokens"] == cfg["max_tokens"]).all()
    assert (ok["target_prompt_tokens"] > native).any(), "no target was served past the native length"
    # A stream a starved API server flushed all at once has no client TPOT (records.finalize_timing);
    # the engine's inter-token histogram always has one.
    assert (ok["ttft_s"] > 0).all() and (ok["engine_ttft_s"] > 0).all() and (ok["engine_itl_s"] > 0).all()
    assert (ok["tpot_s"].dropna() > 0).all() and (ok["engine_prefill_s"] > 0).all()
    assert (ok["kv_used_analytical_gib"] > 0).all()
    assert (ok["process_rss_peak_gib"] > 0).all() or (ok["nvml_peak_used_gib"] > 0).all()
    failed = frame[frame["status"] == "failed"]
    assert texts(failed["reason"]).str.len().gt(0).all() and failed["failure_kind"].notna().all()
    # a served row the integrity checks rejected says why
    implausible = frame[frame["status"] == "implausible"]
    assert texts(implausible["reason"]).str.len().gt(0).all() and implausible["integrity_note"].notna().all()
    too_long = primary[primary["target_prompt_tokens"] + cfg["max_tokens"] > cfg["max_model_len"]]
    assert (too_long["status"] == "failed").all() and (too_long["failure_kind"] == "over_length_limit").all()
    assert texts(too_long["reason"]).str.contains("maximum context length").all()


def test_e6_serves_the_derived_yarn_config(wf):
    meta = _json(wf / "results/e6/run_metadata.json")
    cfg = meta["hash_inputs"]["experiment_config"]
    written = _json(wf / "results/e6/model/config.json")
    block = written["rope_scaling"]
    assert block["rope_type"] == block["type"] == "yarn"
    assert block["factor"] == cfg["rope_scaling"]["factor"]
    assert written["max_position_embeddings"] == block["original_max_position_embeddings"] * block["factor"]
    assert cfg["max_model_len"] <= written["max_position_embeddings"]
    assert meta["rope"]["rope_blocks_written"]["rope_scaling"] == block
    assert meta["model_config"] == written and meta["weights"] == "random-embedded"
    command = meta["engine"]["command"]
    assert command[command.index("--max-model-len") + 1] == str(cfg["max_model_len"])
    assert command[command.index("serve") + 1].endswith("results/e6/model")
    log = (wf / "results/e6/engine.log").read_text(errors="replace")
    assert f"Using max model len {cfg['max_model_len']}" in log


def test_e6_figure_and_report(wf):
    meta = _json(wf / "results/e6/run_metadata.json")
    assert meta["run_id"] in (wf / "results/e6/stress.svg").read_text()
    md = (wf / "reports/e6.md").read_text()
    assert meta["run_id"] in md and "yarn" in md


def test_e5_e6_targets_resolve_from_a_fresh_copy(tmp_path):
    fresh = copy_checkout(tmp_path / "fresh")
    proc = run_snakemake(fresh, "-n", "results/e5/memory.csv", "results/e6/stress.csv")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for rule in ("embedded_model", "e5", "e6"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out, rule
