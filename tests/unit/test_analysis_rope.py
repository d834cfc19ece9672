import pytest

from context_research.analysis.rope import normalize_rope_scaling
from context_research.errors import ConfigError

BASE = {"model_type": "qwen3", "max_position_embeddings": 40960, "rope_theta": 1000000, "rope_scaling": None}


def test_no_block_creates_rope_scaling():
    cfg, eff = normalize_rope_scaling(BASE, 4.0, 32768, 131072)
    assert cfg["rope_scaling"] == {"rope_type": "yarn", "type": "yarn", "factor": 4.0,
                                   "original_max_position_embeddings": 32768}
    assert cfg["max_position_embeddings"] == 131072 == eff["max_position_embeddings"]
    assert eff["previous_max_position_embeddings"] == 40960 and eff["rope_keys_written"] == ["rope_scaling"]
    assert eff["extension_ratio"] == 4.0 and eff["rope_theta"] == 1000000
    assert BASE["rope_scaling"] is None  # input untouched


@pytest.mark.parametrize("key_style", ["rope_type", "type"])
def test_both_key_styles(key_style):
    src = {**BASE, "rope_scaling": {key_style: "yarn", "factor": 2.0, "original_max_position_embeddings": 32768,
                                    "beta_fast": 32}}
    cfg, eff = normalize_rope_scaling(src, 4.0, 32768, 100_000)
    block = cfg["rope_scaling"]
    assert block["rope_type"] == block["type"] == "yarn"
    assert block["factor"] == 4.0 and block["beta_fast"] == 32
    assert eff["previous_rope_blocks"]["rope_scaling"]["factor"] == 2.0


def test_rope_parameters_transformers5():
    src = {**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000}}
    del src["rope_scaling"]
    cfg, eff = normalize_rope_scaling(src, 4.0, 32768, 131072)
    assert "rope_scaling" not in cfg
    assert cfg["rope_parameters"] == {"rope_type": "yarn", "type": "yarn", "rope_theta": 1000000, "factor": 4.0,
                                      "original_max_position_embeddings": 32768}
    assert eff["rope_keys_written"] == ["rope_parameters"]
    both = {**src, "rope_scaling": {"type": "yarn", "factor": 4.0}}
    cfg, eff = normalize_rope_scaling(both, 4.0, 32768, 131072)
    assert cfg["rope_scaling"]["rope_type"] == cfg["rope_parameters"]["rope_type"] == "yarn"
    assert eff["rope_keys_written"] == ["rope_scaling", "rope_parameters"]


@pytest.mark.parametrize("kwargs,cfg,match", [
    ({"factor": 1.0}, BASE, "factor"),
    ({"factor": 0.5}, BASE, "factor"),
    ({"target_max_model_len": 131073}, BASE, "max_model_len"),
    ({"original_max": 0}, BASE, "original_max_position_embeddings"),
    ({"rope_type": "bogus"}, BASE, "rope_type"),
    ({}, {**BASE, "rope_scaling": {"type": "yarnish", "factor": 4.0}}, "rope_scaling.rope_type"),
    ({}, {**BASE, "rope_scaling": {"rope_type": "yarn", "type": "linear"}}, "rope_scaling"),
    ({}, {**BASE, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.rope_type"),
    ({}, {**BASE, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}},
     "original_max_position_embeddings"),
    ({}, {**BASE, "rope_parameters": {"full_attention": {"rope_type": "default"},
                                      "sliding_attention": {"rope_type": "default"}}}, "rope_parameters"),
])
def test_errors(kwargs, cfg, match):
    args = {"factor": 4.0, "original_max": 32768, "target_max_model_len": 131072, **kwargs}
    with pytest.raises(ConfigError, match=match):
        normalize_rope_scaling(cfg, **args)
