import copy

import pytest
import yaml

from context_research.config import (REPO_ROOT, experiment_hash, load_config, model_profile,
                                     validate_config)
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS

DEFAULT = REPO_ROOT / "config" / "config.yaml"


def base():
    return yaml.safe_load(DEFAULT.read_text())


def test_default_config_is_valid_and_defaults_are_filled():
    cfg = load_config(DEFAULT, experiments=EXPERIMENTS)
    assert cfg["model_profile"] == "embedded"
    assert cfg["serving"]["host"] == "127.0.0.1"          # from the schema's default
    assert cfg["serving"]["extra_args"] == []
    assert cfg["experiments"]["e0"]["cv_threshold"] == 0.05
    assert model_profile(cfg)["name"] == "embedded"


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["serving"].update(backend="vlm"), "serving.backend"),
    (lambda c: c["experiments"]["e0"].update(repeats="five"), "experiments.e0.repeats"),
    (lambda c: c["experiments"]["e0"].update(repeats=1), "experiments.e0.repeats"),
    (lambda c: c.update(bogus=1), "bogus"),
    (lambda c: c["models"]["embedded"].update(load_format="fast"), "models.embedded.load_format"),
    (lambda c: c["models"]["embedded"].pop("source"), "models.embedded.source"),
    (lambda c: c.update(model_profile="nope"), "model_profile"),
    (lambda c: c["serving"].update(gpu_memory_utilization=1.5), "serving.gpu_memory_utilization"),
    (lambda c: c["serving"].update(host="0.0.0.0"), "serving.host"),          # needs serving.allow_remote
    (lambda c: c["serving"].update(allow_remote="yes"), "serving.allow_remote"),
])
def test_bad_config_names_the_key(mutate, key):
    cfg = base()
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, experiments=EXPERIMENTS)
    assert f"'{key}'" in str(err.value)
    assert "\n" not in str(err.value)  # one line


def test_simulated_backend_needs_explicit_opt_in(monkeypatch):
    cfg = base()
    cfg["serving"]["backend"] = "simulated"
    monkeypatch.delenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", raising=False)
    with pytest.raises(ConfigError, match="CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND=1"):
        validate_config(copy.deepcopy(cfg), experiments=EXPERIMENTS)
    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")
    assert validate_config(cfg, experiments=EXPERIMENTS)["serving"]["backend"] == "simulated"


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", experiments=EXPERIMENTS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_profile: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad, experiments=EXPERIMENTS)


def test_overlay_merges_deeply(tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("serving:\n  enforce_eager: true\n")
    cfg = load_config(DEFAULT, [overlay], experiments=EXPERIMENTS)
    assert cfg["serving"]["enforce_eager"] is True
    assert cfg["serving"]["backend"] == "vllm"


def test_overlay_error_names_the_overlay_not_the_base(tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("serving:\n  enforce_eager: maybe\n")
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, [overlay], experiments=EXPERIMENTS)
    assert str(err.value).startswith(f"Invalid configuration ({overlay}): config key 'serving.enforce_eager'")


def test_experiment_hash_tracks_exactly_its_inputs():
    cfg = load_config(DEFAULT, experiments=EXPERIMENTS)
    h0 = experiment_hash(cfg, EXPERIMENTS["e0"])
    assert len(h0) == 64 and h0 == experiment_hash(copy.deepcopy(cfg), EXPERIMENTS["e0"])
    changed = copy.deepcopy(cfg)
    changed["experiments"]["e0"]["max_tokens"] += 1
    assert experiment_hash(changed, EXPERIMENTS["e0"]) != h0
    serving = copy.deepcopy(cfg)
    serving["serving"]["enforce_eager"] = True
    assert experiment_hash(serving, EXPERIMENTS["e0"]) != h0
    other_model = copy.deepcopy(cfg)
    other_model["models"]["qwen3-8b"]["max_model_len"] = 1024  # not the served profile
    assert experiment_hash(other_model, EXPERIMENTS["e0"]) == h0
    assert experiment_hash(cfg, EXPERIMENTS["e0"], dataset_manifest_sha256="ab" * 32) != h0


def test_experiment_view_is_a_valid_config_holding_only_the_hashed_inputs():
    from context_research.config import experiment_view, hash_inputs

    cfg = load_config(DEFAULT, experiments=EXPERIMENTS)
    view = experiment_view(cfg, EXPERIMENTS["e0"])
    assert set(view["models"]) == {"embedded"} and set(view["experiments"]) == {"e0"}
    revalidated = validate_config(copy.deepcopy(view), experiments=EXPERIMENTS)
    assert experiment_hash(revalidated, EXPERIMENTS["e0"]) == experiment_hash(cfg, EXPERIMENTS["e0"])
    assert hash_inputs(revalidated, EXPERIMENTS["e0"]) == hash_inputs(cfg, EXPERIMENTS["e0"])
