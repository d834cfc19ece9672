"""E6: YaRN config derivation (both key styles), consistency errors naming keys, the derived folder."""

import json
import os

import pytest

from context_research.config import validate_config
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.e6_model import derive_rope_config, requested_rope_type, write_derived_model

TINY = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "vocab_size": 3072, "max_position_embeddings": 4096, "rope_scaling": None, "rope_theta": 1000000,
        "torch_dtype": "bfloat16"}
# Qwen3-8B ships max_position_embeddings 40960; Qwen's YaRN recipe uses original 32768 x 4.
QWEN3_8B = {**TINY, "hidden_size": 4096, "num_hidden_layers": 36, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 40960}


def e6(**over):
    cfg = {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "max_position_embeddings": None,
           "max_model_len": 16384}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("block", [{"rope_type": "yarn", "factor": 4.0}, {"type": "yarn", "factor": 4},
                                   {"rope_type": "yarn", "type": "yarn", "factor": 4.0}])
def test_both_key_styles_give_the_same_normalized_config(block):
    new, eff = derive_rope_config(e6(rope_scaling=block), TINY)
    assert new["rope_scaling"] == {"rope_type": "yarn", "type": "yarn", "factor": 4.0,
                                   "original_max_position_embeddings": 4096}
    assert new["max_position_embeddings"] == 16384 == eff["max_position_embeddings"]
    assert eff["original_max_position_embeddings"] == 4096 and eff["native_context"] == 4096
    assert eff["max_model_len"] == 16384 and eff["extension_ratio"] == 4.0
    assert eff["requested_type_keys"] == [k for k in ("rope_type", "type") if k in block]
    assert TINY["max_position_embeddings"] == 4096 and TINY["rope_scaling"] is None  # input untouched


def test_qwen3_8b_recipe_matches_facts():
    cfg = e6(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
             max_position_embeddings=131072, max_model_len=131072)
    new, eff = derive_rope_config(cfg, QWEN3_8B)
    assert new["max_position_embeddings"] == 131072 and eff["previous_max_position_embeddings"] == 40960
    assert new["rope_scaling"]["original_max_position_embeddings"] == 32768
    assert eff["original_max_position_embeddings_source"] == "experiments.e6.rope_scaling.original_max_position_embeddings"


def test_yarn_extras_and_existing_rope_parameters_are_kept():
    hf = {**TINY, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    new, eff = derive_rope_config(e6(rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 32}), hf)
    assert eff["rope_keys_written"] == ["rope_parameters"]
    assert new["rope_parameters"] == {"rope_type": "yarn", "type": "yarn", "factor": 4.0,
                                      "original_max_position_embeddings": 4096, "rope_theta": 5e5, "beta_fast": 32}


def test_conflicting_type_keys_name_both():
    with pytest.raises(ConfigError) as err:
        requested_rope_type({"rope_type": "yarn", "type": "linear"})
    assert "experiments.e6.rope_scaling.rope_type" in str(err.value)
    assert "experiments.e6.rope_scaling.type" in str(err.value)
    assert requested_rope_type({}) == ("yarn", [])


@pytest.mark.parametrize("over, key", [
    ({"max_position_embeddings": 8192}, "experiments.e6.max_position_embeddings"),
    ({"max_model_len": 20000}, "experiments.e6.max_model_len"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 1.0}}, "experiments.e6.rope_scaling.factor"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "experiments.e6.max_model_len"),
])
def test_inconsistent_lengths_name_the_key(over, key):
    with pytest.raises(ConfigError) as err:
        derive_rope_config(e6(**over), TINY)
    assert f"'{key}'" in str(err.value)


def test_existing_different_scaling_is_refused_naming_the_block():
    hf = {**TINY, "rope_scaling": {"type": "linear", "factor": 2.0}}
    with pytest.raises(ConfigError) as err:
        derive_rope_config(e6(), hf)
    assert "experiments.e6.rope_scaling" in str(err.value) and "linear" in str(err.value)


def test_missing_native_length_names_the_key():
    hf = {k: v for k, v in TINY.items() if k != "max_position_embeddings"}
    with pytest.raises(ConfigError, match="experiments.e6.rope_scaling.original_max_position_embeddings"):
        derive_rope_config(e6(), hf)
    with pytest.raises(ConfigError, match="models.<profile>.source"):
        derive_rope_config(e6(), None)


def test_schema_defaults_are_consistent_for_the_embedded_model(tmp_path):
    config = validate_config({"model_profile": "m", "models": {"m": {"source": str(tmp_path)}}},
                             experiments=EXPERIMENTS)
    cfg = config["experiments"]["e6"]
    new, eff = derive_rope_config(cfg, TINY)
    assert eff["max_position_embeddings"] == cfg["max_model_len"] == 16384
    assert max(t for t in cfg["targets"] if t <= cfg["max_model_len"]) > 4096  # past the native length
    bad = {"model_profile": "m", "models": {"m": {"source": str(tmp_path)}},
           "experiments": {"e6": {"rope_scaling": {"type": "yarn"}}}}
    with pytest.raises(ConfigError, match="experiments.e6.rope_scaling.factor"):
        validate_config(bad, experiments=EXPERIMENTS)


def test_derived_folder_links_files_and_rewrites_configs(tmp_path):
    src = tmp_path / "resources" / "model"
    src.mkdir(parents=True)
    (src / "config.json").write_text(json.dumps(TINY))
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "tokenizer.json").write_text("{}")
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096, "eos_token": "x"}))
    (src / "manifest.json").write_text("{}")
    new, eff = derive_rope_config(e6(), TINY)
    dest = tmp_path / "results" / "e6" / "model"
    info = write_derived_model(src, new, dest, eff)
    assert sorted(info["linked_files"]) == ["model.safetensors", "tokenizer.json"]
    assert os.path.islink(dest / "model.safetensors") and not os.path.isabs(os.readlink(dest / "model.safetensors"))
    assert (dest / "model.safetensors").read_bytes() == b"weights"
    written = json.loads((dest / "config.json").read_text())
    assert written["rope_scaling"]["rope_type"] == written["rope_scaling"]["type"] == "yarn"
    assert written["max_position_embeddings"] == 16384
    assert json.loads((dest / "tokenizer_config.json").read_text()) == {"model_max_length": 16384, "eos_token": "x"}
    assert not (dest / "manifest.json").exists()  # the source's manifest describes the source, not this folder
    assert json.loads((dest / "derived_from.json").read_text())["rope"]["factor"] == 4.0
    # Rebuilding replaces the folder whole.
    write_derived_model(src, new, dest, eff)
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "derived_from.json", "model.safetensors",
                                                       "tokenizer.json", "tokenizer_config.json"]
