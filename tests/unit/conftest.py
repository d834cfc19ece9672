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


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path_factory, monkeypatch):
    """Engine locks of unit tests live in a folder of their own: a test that builds a real backend
    must neither wait for nor block an engine running on the host."""
    monkeypatch.setenv("CONTEXT_RESEARCH_LOCK_DIR", str(tmp_path_factory.mktemp("locks")))
