import json

import pytest


@pytest.fixture
def tiny_model(tmp_path):
    """A Qwen3-shaped model folder (config.json and a tokenizer file) for simulated runs."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 3072,
        "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}))
    (src / "tokenizer.json").write_text("{}")
    return src
