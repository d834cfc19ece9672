import json

from context_research import prompts
from context_research.prompts import regular_token_range, token_id_prompt


def _tok(tmp_path, added, n_regular):
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "added_tokens": [{"id": i, "content": f"<s{i}>", "special": True} for i in added],
        "model": {"vocab": {f"w{i}": i for i in range(n_regular)}}}))
    return {"path": str(tmp_path), "hf_config": {"vocab_size": n_regular + len(added)}}


def test_specials_before_the_vocab(tmp_path):
    model = _tok(tmp_path, [0, 1, 2], 3070)
    assert regular_token_range(model) == (3 + 256, 3070)


def test_specials_after_the_vocab_from_config_ids():
    model = {"path": "nowhere", "hf_config": {"vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645}}
    assert regular_token_range(model) == (256, 151643)


def test_prompts_are_exact_seeded_and_prefix_unique(tmp_path):
    model = _tok(tmp_path, [0, 1, 2], 3070)
    a = token_id_prompt(100, 7, model)
    assert len(a) == 100 and a == token_id_prompt(100, 7, model) and a != token_id_prompt(100, 8, model)
    low, high = regular_token_range(model)
    assert all(low <= t < high for t in a)
    p0, p1 = (token_id_prompt(100, 7, model, unique_prefix=i) for i in (0, 1))
    assert p0[:2] != p1[:2] and p0[2:] == p1[2:]


def test_tokenizer_json_is_parsed_once_per_file_version(tmp_path, monkeypatch):
    model = _tok(tmp_path, [0, 1, 2], 3070)
    reads = []
    real = prompts.Path.read_text

    def counting(self, *a, **k):
        reads.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(prompts.Path, "read_text", counting)
    first = regular_token_range(model)
    for seed in range(5):
        token_id_prompt(64, seed, model)
    assert reads == ["tokenizer.json"] and regular_token_range(model) == first
    # A changed file is read again.
    _tok(tmp_path, [0, 1, 2, 3], 3060)
    assert regular_token_range(model) == (4 + 256, 3060) and reads == ["tokenizer.json"] * 2
