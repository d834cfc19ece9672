"""E6: failure rows, failure classification, and the KV-dtype fallback pass (engine faked)."""

import json

import pandas as pd
import pytest

from context_research.config import validate_config
from context_research.experiments import e6
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.e6 import (classify_failure, engine_error_lines, failure_row, fallback_targets,
                                             final_outcomes)
from context_research.experiments.runner import run_declared

# Messages as vLLM 0.32 words them.
OVER_LENGTH = ('HTTP 400: {"error":{"message":"This model\'s maximum context length is 16384 tokens. However, your '
               'prompt contains 20000 input tokens, which exceeds this limit even without any output tokens."}}')
KV_CAPACITY = ("ValueError: To serve at least one request with the model's max seq len (16384), (0.01 GiB KV cache is "
               "needed, which is larger than the available KV cache memory (0.00 GiB). Based on the available memory, "
               "the estimated maximum model length is 8192. Try increasing `gpu_memory_utilization` or decreasing "
               "`max_model_len` when initializing the engine.")
FP8_CPU = "NotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX."
CUDA_OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."


@pytest.mark.parametrize("text, kind", [
    (OVER_LENGTH, "over_length_limit"), (KV_CAPACITY, "kv_cache_capacity"), (FP8_CPU, "unsupported"),
    (CUDA_OOM, "oom"), ("TimeoutError: request timed out", "timeout"),
    ("HTTP 500: Internal Server Error", "server_error"), ("", "server_error"),
    # What the H200 run recorded at 98,304 tokens before the SSE fix: a client-side read failure.
    ("LineTooLong: 400, message:\n  Got more than 524288 bytes when reading: b'data: {\"id\"...'", "client_error"),
])
def test_classify_failure(text, kind):
    assert classify_failure(text) == kind


def test_failure_rows_carry_kind_reason_and_context():
    row = failure_row(20000, OVER_LENGTH, context={"run_id": "r", "beyond_native": True})
    assert row["target_prompt_tokens"] == 20000 and row["status"] == "failed"
    assert row["failure_kind"] == "over_length_limit" and "maximum context length" in row["reason"]
    assert row["pass"] == "primary" and row["run_id"] == "r" and row["beyond_native"] is True
    assert "ttft_s" not in row  # no made-up measurements
    unsupported = failure_row(16000, FP8_CPU, pass_label="fallback-fp8", kv_cache_dtype="fp8")
    assert unsupported["status"] == "unsupported" and unsupported["kv_cache_dtype"] == "fp8"
    assert failure_row(1, "", kind="engine_died")["reason"] == "engine_died"
    assert len(failure_row(1, "x" * 5000)["reason"]) == 1000


def test_engine_error_lines_pick_the_error_not_the_traceback():
    log = ("INFO 11-23 [core.py:133] Initializing a V1 LLM engine\n"
           "WARNING pin_memory is not supported on this host\n"
           "(Worker pid=2) WARNING 11-23 17:24:02 [utils.py:597] Failed to create oneDNN linear, fallback to torch "
           "linear. Exception: could not create a primitive descriptor for the matmul primitive.\n"
           "Traceback (most recent call last):\n    raise ValueError(\n"
           f"(EngineCore pid=1) ERROR 11-23 17:25:18 [core.py:1510] {KV_CAPACITY}\n{KV_CAPACITY}\n"
           "RuntimeError: Engine core initialization failed. See root cause above.\n")
    lines = engine_error_lines(log)
    assert lines == KV_CAPACITY  # prefix stripped, logged twice, reported once; wrappers dropped
    assert "pin_memory" not in lines and "raise ValueError(" not in lines and "oneDNN" not in lines
    assert classify_failure(lines) == "kv_cache_capacity"
    # Only wrappers: they are the reason then.
    assert engine_error_lines("RuntimeError: Engine core initialization failed.\n").startswith("RuntimeError")


def test_only_memory_failures_are_retried():
    rows = [failure_row(8192, KV_CAPACITY), failure_row(20000, OVER_LENGTH), failure_row(4096, CUDA_OOM),
            failure_row(1, "x", kind="engine_died"), {"target_prompt_tokens": 2048, "status": "ok", "failure_kind": None},
            # Not memory: a lower-precision KV cache would not change these outcomes.
            failure_row(3000, "TimeoutError: request timed out"), failure_row(3001, "HTTP 500: Internal Server Error"),
            failure_row(3002, "LineTooLong: 400, message: Got more than 524288 bytes"), failure_row(3003, FP8_CPU)]
    assert [r["failure_kind"] for r in rows[-4:]] == ["timeout", "server_error", "client_error", "unsupported"]
    assert fallback_targets(rows) == [8192, 4096, 1]


def test_final_outcome_is_the_last_pass():
    rows = [failure_row(8192, KV_CAPACITY), {**failure_row(8192, FP8_CPU, pass_label="fallback-fp8")},
            {"target_prompt_tokens": 2048, "status": "ok", "pass": "primary", "failure_kind": None}]
    out = final_outcomes(rows)
    assert out["8192"] == {"status": "unsupported", "pass": "fallback-fp8", "failure_kind": "unsupported"}
    assert out["2048"]["status"] == "ok"




def _config(src, **e6cfg):
    return validate_config({"model_profile": "m", "models": {"m": {"source": str(src)}},
                            "experiments": {"e6": {"targets": [2048, 8192, 16000], **e6cfg}}}, experiments=EXPERIMENTS)


def test_fallback_pass_retries_memory_failures_with_fp8(tiny_model, tmp_path, monkeypatch):
    calls = []

    def fake_pass(backend, cfg, targets, *, pass_label, context, native):
        served, serving, log_name = backend.model, backend.serving, backend.log_path.name
        calls.append({"targets": list(targets), "extra_args": list(serving.get("extra_args", [])),
                      "path": served["path"], "max_model_len": served["max_model_len"], "log": log_name})
        if pass_label == "primary":
            rows = [{"target_prompt_tokens": 2048, "pass": pass_label, "status": "ok", "failure_kind": None,
                     "ttft_s": 0.1, **context},
                    failure_row(8192, CUDA_OOM, pass_label=pass_label, context=context),
                    failure_row(16000, KV_CAPACITY, pass_label=pass_label, context=context)]
        else:
            rows = [failure_row(t, FP8_CPU, pass_label=pass_label, kv_cache_dtype="fp8", context=context)
                    for t in targets]
        return {"pass": pass_label, "log": log_name, "kv_cache_dtype_requested": e6._kv_dtype_arg(serving),
                "targets": list(targets), "backend_mode": "real", "started": pass_label == "primary",
                "info": {"device": "cpu"}, "engine": {}, "rows": rows}

    monkeypatch.setattr(e6, "serve_pass", fake_pass)
    outdir = tmp_path / "results" / "e6"
    meta = run_declared(e6.EXPERIMENT, _config(tiny_model, kv_cache_dtype_fallback="fp8"), outdir)
    assert [c["targets"] for c in calls] == [[2048, 8192, 16000], [8192, 16000]]
    assert calls[0]["extra_args"] == [] and calls[1]["extra_args"][-2:] == ["--kv-cache-dtype", "fp8"]
    assert calls[1]["log"] == "engine_fallback.log"
    assert calls[0]["max_model_len"] == 16384 and calls[0]["path"] == str((outdir / "model").resolve())
    frame = pd.read_csv(outdir / "stress.csv")
    assert list(frame["pass"]) == ["primary"] * 3 + ["fallback-fp8"] * 2
    assert set(frame.loc[frame["pass"] == "fallback-fp8", "status"]) == {"unsupported"}
    assert (frame["rope_type"] == "yarn").all() and (frame["max_model_len"] == 16384).all()
    assert meta["result_summary"]["final_outcome"]["8192"]["status"] == "unsupported"
    assert meta["rope"]["max_position_embeddings"] == 16384 and meta["model_config"]["max_position_embeddings"] == 16384
    assert meta["weights"] == "real" and meta["model_id"] == str(tiny_model)
    assert [p["pass"] for p in meta["engine_passes"]] == ["primary", "fallback-fp8"]
    assert any("--kv-cache-dtype fp8" in n for n in meta["notes"])
    written = json.loads((outdir / "model" / "config.json").read_text())
    assert written["rope_scaling"]["type"] == written["rope_scaling"]["rope_type"] == "yarn"
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["native_context"] == 4096 and summary["rope"]["factor"] == 4.0


def test_no_fallback_without_the_config_key(tiny_model, tmp_path, monkeypatch):
    calls = []

    def fake_pass(backend, cfg, targets, *, pass_label, context, **kw):
        calls.append(pass_label)
        return {"pass": pass_label, "kv_cache_dtype_requested": "auto", "backend_mode": "real", "started": False,
                "info": {}, "engine": {}, "rows": [failure_row(t, KV_CAPACITY, pass_label=pass_label, context=context)
                                                   for t in targets]}

    monkeypatch.setattr(e6, "serve_pass", fake_pass)
    run_declared(e6.EXPERIMENT, _config(tiny_model), tmp_path / "e6")
    assert calls == ["primary"]
    frame = pd.read_csv(tmp_path / "e6" / "stress.csv")
    assert len(frame) == 3 and (frame["status"] == "failed").all() and frame["reason"].str.contains("KV cache").all()


def test_an_engine_death_no_pass_made_up_for_fails_the_run(tiny_model, tmp_path, monkeypatch):
    """The engine died after the first target and no fallback pass served the others: stress.csv
    keeps every row, and the rule fails naming the targets left unmeasured."""
    from context_research.errors import EngineDiedError

    died = "engine process exited before this point: RuntimeError: worker died"

    def fake_pass(backend, cfg, targets, *, pass_label, context, **kw):
        rows = [{"target_prompt_tokens": targets[0], "pass": pass_label, "status": "ok", "failure_kind": None,
                 **context}] + [failure_row(t, died, kind="engine_died", pass_label=pass_label, context=context)
                                for t in targets[1:]]
        return {"pass": pass_label, "kv_cache_dtype_requested": "auto", "backend_mode": "real", "started": True,
                "info": {}, "engine": {}, "rows": rows}

    monkeypatch.setattr(e6, "serve_pass", fake_pass)
    out = tmp_path / "results" / "e6"
    with pytest.raises(EngineDiedError, match=r"target\(s\) 8192, 16000 were left unmeasured .*worker died"):
        run_declared(e6.EXPERIMENT, _config(tiny_model), out)
    kept = next(out.with_name("e6.partial").iterdir())
    frame = pd.read_csv(kept / "stress.csv")
    assert list(frame["status"]) == ["ok", "failed", "failed"] and (kept / "summary.json").exists()
