"""The embedded tiny Qwen3 model: byte-stable builds, a complete manifest, loadable by HF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import context_research
from context_research import embedded_model as em
from context_research.embedded_tokenizer import CHAT_TEMPLATE
from context_research.errors import ConfigError
from context_research.hashing import sha256_file

EMPTY_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
TEXTS = [
    "The purple elephant quietly negotiates a treaty.",
    "  leading spaces, trailing tabs\t\tand\nnew\n\nlines  ",
    "Ünïcödé façade — naïve café 🙂 日本語 12345.6789",
    "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("embedded") / "model"
    return out, em.build_embedded_model(out, {})


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())}


def test_same_config_gives_same_bytes_in_another_process(built, tmp_path):
    out, _ = built
    other = tmp_path / "again"
    src = str(Path(context_research.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["PYTHONHASHSEED"] = "12345"  # a different hash seed must not change the tokenizer
    for key in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        env.pop(key, None)
    subprocess.run(
        [sys.executable, "-m", "context_research.embedded_model", "--out", str(other),
         "--config-json", "{}"],
        check=True, env=env, capture_output=True, timeout=300,
    )
    assert _hashes(other) == _hashes(out)


def test_forced_rebuild_in_process_gives_same_bytes(built, tmp_path):
    out, manifest = built
    again = em.build_embedded_model(tmp_path / "m", {"seed": 1234}, force=True)
    assert again == manifest
    assert _hashes(tmp_path / "m") == _hashes(out)


def test_other_seed_gives_other_weights(built, tmp_path):
    _, manifest = built
    other = em.build_embedded_model(tmp_path / "m", {"seed": 7})
    by_name = lambda m: {f["name"]: f["sha256"] for f in m["files"]}  # noqa: E731
    assert by_name(other)["model.safetensors"] != by_name(manifest)["model.safetensors"]
    assert by_name(other)["tokenizer.json"] != by_name(manifest)["tokenizer.json"]


def test_manifest_lists_every_file_with_its_hash(built):
    out, manifest = built
    on_disk = {p.name for p in out.iterdir()}
    listed = {f["name"] for f in manifest["files"]}
    assert on_disk == listed | {"manifest.json"}
    for entry in manifest["files"]:
        path = out / entry["name"]
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == sha256_file(path)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["cfg"] == em.resolve_config({})
    assert manifest["seed"] == 1234
    assert {"numpy", "safetensors", "tokenizers"} <= set(manifest["versions"])
    assert em.verify_embedded_model(out) == manifest
    # No temp leftovers beside the model directory.
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_existing_complete_build_is_kept(built):
    out, manifest = built
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert em.build_embedded_model(out, {}) == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_damaged_build_is_replaced(tmp_path):
    out = tmp_path / "m"
    manifest = em.build_embedded_model(out, {})
    (out / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="config.json"):
        em.verify_embedded_model(out)
    assert em.build_embedded_model(out, {}) == manifest
    em.verify_embedded_model(out)


def test_config_shapes(built):
    out, manifest = built
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["model_type"] == "qwen3"
    assert config["head_dim"] >= 32
    assert config["head_dim"] in em.CPU_ATTENTION_HEAD_DIMS
    assert config["num_attention_heads"] % config["num_key_value_heads"] == 0
    assert config["vocab_size"] % 64 == 0
    assert config["vocab_size"] >= manifest["tokenizer_size"]
    assert config["torch_dtype"] == em.TORCH_DTYPE
    assert config["tie_word_embeddings"] is False
    ids = manifest["special_token_ids"]
    assert config["eos_token_id"] == ids["<|im_end|>"]
    assert config["bos_token_id"] == config["pad_token_id"] == ids["<|endoftext|>"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert not {"temperature", "top_p", "top_k", "do_sample"} & set(generation)


def test_weights_names_shapes_and_dtype(built):
    out, _ = built
    config = json.loads((out / "config.json").read_text())
    expected = dict(em.weight_shapes(em.resolve_config({}), config["vocab_size"]))
    header_len = int.from_bytes((out / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((out / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert header.pop("__metadata__") == {"format": "pt"}
    assert {k: tuple(v["shape"]) for k, v in header.items()} == expected
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    assert "model.layers.1.self_attn.q_norm.weight" in expected
    assert expected["model.layers.0.self_attn.k_norm.weight"] == (config["head_dim"],)


def test_weights_are_the_seeded_reference_in_bfloat16(built):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    out, _ = built
    config = json.loads((out / "config.json").read_text())
    reference = em.random_weights(em.resolve_config({}), config["vocab_size"])
    loaded = load_file(out / "model.safetensors")
    assert set(loaded) == set(reference)
    for name, tensor in loaded.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, torch.from_numpy(reference[name]).to(torch.bfloat16)), name
    assert torch.all(loaded["model.norm.weight"] == 1)


def test_tokenizer_round_trips_text(built):
    from tokenizers import Tokenizer

    out, manifest = built
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == manifest["tokenizer_size"]
    for text in TEXTS:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    for token, idx in manifest["special_token_ids"].items():
        assert tok.encode(token).ids == [idx]


def test_transformers_tokenizer_and_chat_template(built):
    transformers = pytest.importorskip("transformers")
    out, manifest = built
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for text in TEXTS:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    messages = [{"role": "user", "content": "hi"}]
    no_think = tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think == "<|im_start|>user\nhi<|im_end|>\n" + EMPTY_THINK
    assert no_think.endswith(EMPTY_THINK)
    thinking = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert thinking == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    history = tok.apply_chat_template(
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\na1"},
            {"role": "user", "content": "q2"},
        ],
        tokenize=False,
    )
    assert history == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n"
    )
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE


def test_transformers_model_loads_every_weight(built):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    out, _ = built
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert not info.get("error_msgs")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[-1] == json.loads((out / "config.json").read_text())["vocab_size"]
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"head_dim": 16}, "head_dim"),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, "num_key_value_heads"),
        ({"hidden_sizes": 64}, "unknown"),
        ({"num_hidden_layers": "2"}, "num_hidden_layers"),
        ({"vocab_size": 100}, "vocab_size"),
    ],
)
def test_bad_config_names_the_key(cfg, key, tmp_path):
    with pytest.raises(ConfigError, match=key):
        em.build_embedded_model(tmp_path / "m", cfg)
    assert not (tmp_path / "m").exists()


def test_cli_builds_the_same_model(built, tmp_path):
    out, manifest = built
    assert em.main(["--out", str(tmp_path / "cli"), "--config-json", '{"seed": 1234}']) == 0
    assert _hashes(tmp_path / "cli") == _hashes(out)
