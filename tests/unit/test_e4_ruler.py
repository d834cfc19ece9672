"""E4 RULER generators: determinism, exact length fitting, well-formed answers."""

from collections import Counter

import pytest

from context_research.datasets import ruler, ruler_common
from context_research.errors import ConfigError


def ws_count(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def bpe_count():
    """A real subword tokenizer, trained offline on the wonderwords lists (no download)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["[UNK]"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = ruler_common.wordlists()["all"]
    corpus = [" ".join(words[i:i + 40]) for i in range(0, len(words), 40)]
    corpus += [" ".join(ruler_common.NOISE_SENTENCES)] * 10
    tok.train_from_iterator(corpus, trainer)
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


SYNTH = sorted(ruler.SYNTHETIC_TASKS)
KEYS = {"id", "task", "input", "outputs", "length", "metric", "max_new_tokens"}


@pytest.mark.parametrize("task", SYNTH)
def test_deterministic_and_seed_sensitive(task):
    a = ruler.generate(task, 2, 1000, ws_count, seed=7)
    b = ruler.generate(task, 2, 1000, ws_count, seed=7)
    c = ruler.generate(task, 2, 1000, ws_count, seed=8)
    assert a == b
    assert [s["input"] for s in a] != [s["input"] for s in c]
    assert a[0]["input"] != a[1]["input"]
    # a sample does not depend on how many samples are requested
    assert ruler.generate(task, 1, 1000, ws_count, seed=7) == a[:1]
    for s in a:
        assert KEYS <= set(s)
        assert s["task"] == task
        assert s["metric"] == "string_match_all"
        assert s["outputs"] and all(isinstance(o, str) for o in s["outputs"])


@pytest.mark.parametrize("task", SYNTH)
@pytest.mark.parametrize("target", [1000, 3000])
def test_hits_target_length_whitespace(task, target):
    for s in ruler.generate(task, 2, target, ws_count, seed=1):
        assert s["length"] == ws_count(s["input"])
        assert s["length"] <= target
        # one haystack unit is at most ~12 whitespace tokens (a needle line, a cwe word x3)
        assert s["length"] >= target - 12, (task, s["length"])


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2", "niah_multikey_3", "niah_multivalue", "vt", "cwe", "fwe"])
def test_hits_target_length_real_tokenizer(task, bpe_count):
    target = 4096
    # the margin is one haystack unit: a uuid-keyed distractor needle is ~70 BPE tokens here
    margin = 100 if task == "niah_multikey_3" else 40
    for s in ruler.generate(task, 1, target, bpe_count, seed=3):
        assert s["length"] == bpe_count(s["input"])
        assert target - margin <= s["length"] <= target, (task, s["length"])


def test_reserve_tokens():
    s = ruler.generate("niah_single", 1, 1000, ws_count, seed=0, reserve_tokens=200)[0]
    assert 790 <= s["length"] <= 800


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
                                  "niah_single_2", "niah_multikey_2", "niah_multikey_3", "vt"])
def test_gold_is_in_context(task):
    for s in ruler.generate(task, 3, 1500, ws_count, seed=2):
        body = s["input"]
        for gold in s["outputs"]:
            assert gold in body
        assert s["answer_prefix"]


def test_niah_shapes():
    mv = ruler.generate("niah_multivalue", 1, 800, ws_count, seed=0)[0]
    mq = ruler.generate("niah_multiquery", 1, 800, ws_count, seed=0)[0]
    mk = ruler.generate("niah_multikey", 1, 800, ws_count, seed=0)[0]
    assert len(mv["outputs"]) == 4 and len(mq["outputs"]) == 4 and len(mk["outputs"]) == 1
    assert mk["input"].count("One of the special magic numbers for") == 4
    uu = ruler.generate("niah_single_3", 1, 800, ws_count, seed=0)[0]
    assert len(uu["outputs"][0]) == 36 and uu["outputs"][0].count("-") == 4


def test_depths_place_needles():
    first = ruler.generate("niah_single", 1, 500, ws_count, seed=0, depths=[0])[0]
    last = ruler.generate("niah_single", 1, 500, ws_count, seed=0, depths=[100])[0]
    needle = f"is: {first['outputs'][0]}."
    head, _, _ = first["input"].partition(needle)
    assert "The grass is green." not in head
    tail = last["input"].split(f"is: {last['outputs'][0]}.")[1]
    assert "The grass is green." not in tail and "What are all the special magic" in tail
    with pytest.raises(ConfigError):
        ruler.generate("niah_single", 1, 500, ws_count, seed=0, depths=[150])


def test_cwe_and_fwe_answers_are_the_most_frequent():
    s = ruler.generate("cwe", 1, 2000, ws_count, seed=4)[0]
    body = s["input"].split("\n")[1]  # RULER's template: instruction, list, question on their own lines
    words = [tok for tok in body.split() if not tok.endswith(".")]
    counts = Counter(words)
    assert {w for w, _ in counts.most_common(10)} == set(s["outputs"])
    assert all(counts[w] == 30 for w in s["outputs"])
    f = ruler.generate("fwe", 1, 2000, ws_count, seed=4)[0]
    body = f["input"].split("coded words. ", 1)[1].split("\nQuestion:")[0]
    top = Counter(body.split()).most_common(4)
    assert [w for w, _ in top[:3]] == f["outputs"]
    assert top[0][1] > top[1][1] > top[2][1] > top[3][1]


def test_vt_chain():
    s = ruler.generate("vt", 1, 1000, ws_count, seed=5, num_hops=3)[0]
    assert len(s["outputs"]) == 4
    value = s["input"].split("assigned the value ")[1].split(" ")[0]
    assert f"VAR {s['outputs'][0]} = {value}." in s["input"]
    for prev, cur in zip(s["outputs"], s["outputs"][1:]):
        assert f"VAR {cur} = {prev}." in s["input"]


def test_qa_needs_records_and_uses_them():
    with pytest.raises(ConfigError):
        ruler.generate("qa", 1, 500, ws_count, seed=0)
    records = [
        {"id": f"q{i}", "question": f"What colour is object {i}?",
         "context": f"Object {i} is painted colour{i} and sits on shelf {i}. " * 3, "answers": {"text": [f"colour{i}"]}}
        for i in range(30)
    ]
    out = ruler.generate("qa", 3, 400, ws_count, seed=0, records=records)
    assert out == ruler.generate("qa", 3, 400, ws_count, seed=0, records=records)
    for s in out:
        assert s["metric"] == "string_match_part"
        assert s["outputs"][0] in s["input"]
        assert 370 <= s["length"] <= 400


def test_too_small_budget_and_unknown_task():
    with pytest.raises(ConfigError):
        ruler.generate("niah_single", 1, 10, ws_count, seed=0)
    with pytest.raises(ConfigError):
        ruler.generate("nope", 1, 1000, ws_count, seed=0)


def test_sample_seed_values_are_pinned():
    # materialized subsets (RULER samples, PG19 window starts) depend on these exact values
    assert ruler_common.sample_seed(0, "vt", 512, 0) == 1344329270180507786
    assert ruler_common.sample_seed(7, "niah_single_1", 4096, -1) == 4248118157216682375
    assert ruler_common.sample_seed(3, "pg19", 300, "pg19-123") == 15541109574044505472


def test_prompts_are_rulers_templates():
    assert len(ruler.PROMPT_SOURCE["commit"]) == 40
    s = ruler.generate("niah_single_1", 1, 500, ws_count, seed=1)[0]
    assert s["input"].startswith("Some special magic numbers are hidden within the following text. Make sure to "
                                 "memorize it. I will quiz you about the numbers afterwards.\n")
    assert s["answer_prefix"].startswith(" The special magic numbers for ")
    assert s["answer_prefix"].endswith(" mentioned in the provided text are")
    f = ruler.generate("fwe", 1, 800, ws_count, seed=1)[0]
    assert f["answer_prefix"] == " Answer: According to the coded text above, the three most frequently appeared words are:"
    c = ruler.generate("cwe", 1, 2000, ws_count, seed=1)[0]
    assert c["input"].endswith("\nQuestion: What are the 10 most common words in the above list?")
