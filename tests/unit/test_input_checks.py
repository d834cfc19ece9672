"""Settings no run can serve are refused by validation, before any engine starts (issue 26): each
message names the config key and the file that set it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from context_research import cli
from context_research.config import load_config, validate_config
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "config" / "config.yaml"


def _overlay(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _refused(tmp_path: Path, data: dict) -> str:
    overlay = _overlay(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(BASE, [overlay], experiments=EXPERIMENTS)
    message = str(err.value)
    assert f"Invalid configuration ({overlay})" in message, message   # the file that set the key
    return message


@pytest.mark.parametrize("experiment, block, key", [
    ("e0", {"max_tokens": 100000}, "experiments.e0.max_tokens"),
    ("e1", {"max_tokens": 100000}, "experiments.e1.max_tokens"),
    ("e1", {"prompt_tokens": [3000, 4000]}, "experiments.e1.prompt_tokens"),
    ("e2", {"max_tokens": 2048}, "experiments.e2.max_tokens"),
    ("e3", {"max_tokens": 5000}, "experiments.e3.max_tokens"),
    ("e5", {"prompt_tokens": [2040], "max_tokens": 16}, "experiments.e5.prompt_tokens"),
    ("e6", {"max_model_len": 4096, "targets": [5000]}, "experiments.e6.targets"),   # E6's own context
])
def test_an_experiment_none_of_whose_requests_fits_the_context_is_refused(tmp_path, experiment, block, key):
    message = _refused(tmp_path, {"experiments": {experiment: block}})
    assert f"config key '{key}'" in message and "no request of" in message


def test_lengths_that_partly_fit_stay_failed_rows_of_the_run(tmp_path):
    """A length past the context is one failed row with its reason (E1's documented behaviour),
    and an experiment the config does not set is not judged on its defaults (a small model)."""
    config = load_config(BASE, [_overlay(tmp_path, {"experiments": {"e1": {"prompt_tokens": [128, 4000]}}})],
                         experiments=EXPERIMENTS)
    assert config["experiments"]["e1"]["prompt_tokens"] == [128, 4000]
    small = load_config(BASE, [_overlay(tmp_path, {"models": {"embedded": {"max_model_len": 256}},
                                                   "experiments": {"e0": {"prompt_tokens": 64, "max_tokens": 16}}})],
                        experiments=EXPERIMENTS)
    assert small["experiments"]["e5"]["prompt_tokens"] == [256, 1024, 1920]   # defaults, not run here


@pytest.mark.parametrize("source", ["/nonexistent/model/dir", "./no-such-model", "../no/such/model", "a/b/c"])
def test_a_model_path_where_nothing_is_is_refused(tmp_path, source):
    message = _refused(tmp_path, {"models": {"embedded": {"source": source}}})
    assert "config key 'models.embedded.source'" in message and repr(source) in message


def test_a_hub_id_and_an_existing_folder_pass(tmp_path, tiny_model):
    for source in ("Qwen/NotCachedHere-0B", str(tiny_model)):
        validate_config({"model_profile": "m", "models": {"m": {"source": source, "max_model_len": 512}}},
                        experiments=EXPERIMENTS)


def test_a_truncated_tokenizer_is_refused_naming_the_file(tmp_path, tiny_model):
    tok = tiny_model / "tokenizer.json"
    tok.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, ')
    with pytest.raises(ConfigError) as err:
        validate_config({"model_profile": "m", "models": {"m": {"source": str(tiny_model), "max_model_len": 512}}},
                        experiments=EXPERIMENTS)
    assert "config key 'models.m.source'" in str(err.value) and f"{tok} does not parse" in str(err.value)
    tok.write_text("{}")
    validate_config({"model_profile": "m", "models": {"m": {"source": str(tiny_model), "max_model_len": 512}}},
                    experiments=EXPERIMENTS)


@pytest.mark.parametrize("lines, says", [
    (None, "does not exist"),
    (['{"arrival_offset_s": 0, "input_tokens": 10, "output_tokens": 5}', "not json"], ":2: not a trace line"),
    (['{"arrival_offset_s": -1.5, "input_tokens": 10, "output_tokens": 5}'], ":1: negative offset"),
    (['{"arrival_offset_s": NaN, "input_tokens": 10, "output_tokens": 5}'], ":1: negative offset"),
    (['{"arrival_offset_s": 0, "input_tokens": 10}'], ":1: not a trace line"),
    (['{"arrival_offset_s": 0, "input_tokens": 2040, "output_tokens": 50}'], "exceed models.embedded.max_model_len"),
])
def test_a_bad_trace_file_is_refused(tmp_path, lines, says):
    trace = tmp_path / "trace.jsonl"
    if lines is not None:
        trace.write_text("\n".join(lines) + "\n")
    message = _refused(tmp_path, {"experiments": {"e2": {"trace_file": str(trace)}}})
    assert "config key 'experiments.e2.trace_file'" in message and says in message and str(trace) in message


def test_the_example_trace_passes():
    load_config(BASE, [], experiments=EXPERIMENTS)
    validate_config({**yaml.safe_load(BASE.read_text()),
                     "experiments": {"e2": {"trace_file": str(REPO / "config" / "traces" / "example.jsonl")}}},
                    experiments=EXPERIMENTS)


def test_a_run_refuses_before_any_engine_starts(tmp_path, monkeypatch, capsys):
    """``context-research run`` with the rule's --config-json: one error line, exit 2, no engine."""
    from context_research.backends import vllm_server

    monkeypatch.setattr(vllm_server.VllmServerBackend, "start",
                        lambda self: pytest.fail("an engine was started"))
    config = validate_config(yaml.safe_load(BASE.read_text()), experiments=EXPERIMENTS)
    config["experiments"] = {"e1": {**config["experiments"]["e1"], "max_tokens": 100000}}
    code = cli.main(["run", "e1", "--outdir", str(tmp_path / "e1"), "--config-json", json.dumps(config)])
    err = capsys.readouterr().err
    assert code == 2 and "config key 'experiments.e1.max_tokens'" in err and "--config-json" in err
    assert not (tmp_path / "e1").exists()
