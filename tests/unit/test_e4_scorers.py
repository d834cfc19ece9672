"""E4 scorers against hand-computed cases."""

import math

import pytest

from context_research.datasets import templates as T
from context_research.errors import ConfigError
from context_research.quality import scorers as S


def test_normalize_answer():
    assert S.normalize_answer("The  Cat, sat!  on a mat.") == "cat sat on mat"


def test_qa_f1_by_hand():
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]
    # common 2; P = 2/2, R = 2/3; F1 = 2*1*(2/3)/(1+2/3) = 0.8
    assert S.qa_f1_score("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    assert S.qa_f1_score("Cat, sat!", ["cat sat"]) == pytest.approx(1.0)
    assert S.qa_f1_score("dog", ["cat"]) == 0.0
    # max over references
    assert S.qa_f1_score("the cat sat", ["dog", "cat sat"]) == pytest.approx(1.0)
    # repeated tokens: pred [cat, cat], gold [cat] -> common 1, P=1/2, R=1 -> 2/3
    assert S.qa_f1_score("cat cat", ["cat"]) == pytest.approx(2 / 3)


def test_string_match_all_and_part():
    pred = "The numbers are 123 and 456."
    assert S.string_match_all(pred, ["123", "456", "789"]) == pytest.approx(200 / 3)
    assert S.string_match_part(pred, ["123", "456", "789"]) == 100.0
    assert S.string_match_part(pred, ["789"]) == 0.0
    assert S.string_match_all("ALPHA beta", ["alpha", "Beta"]) == 100.0
    assert S.string_match_all("x", []) == 0.0


def test_rouge_l_known_pair():
    # the rouge package (LongBench's): LCS 5 of 6 tokens, F with its beta and 1e-8 smoothing = 0.8
    assert S.rouge_score("the cat sat on the mat", ["the cat was on the mat"]) == pytest.approx(0.8, abs=1e-7)
    assert S.rouge_score("", ["anything"]) == 0.0


def test_classification_retrieval_count():
    classes = ["Location", "Number", "Person"]
    assert S.classification_score("Location or Number", ["Location"], all_classes=classes) == pytest.approx(0.5)
    assert S.classification_score("Location", ["Location"], all_classes=classes) == 1.0
    assert S.classification_score("Person", ["Location"], all_classes=classes) == 0.0
    # a class contained in the gold label is not counted against it
    assert S.classification_score("Entity Type", ["Entity Type"], all_classes=["Entity", "Entity Type"]) == 1.0
    assert S.retrieval_score("Paragraph 3 or maybe Paragraph 5", ["Paragraph 3"]) == pytest.approx(0.5)
    assert S.retrieval_score("Paragraph 3", ["Paragraph 3"]) == 1.0
    assert S.retrieval_score("no idea", ["Paragraph 3"]) == 0.0
    assert S.count_score("There are 4 distinct paragraphs.", ["4"]) == 1.0
    assert S.count_score("4 or 5", ["4"]) == pytest.approx(0.5)
    assert S.count_score("four", ["4"]) == 0.0


def test_code_sim():
    pred = "```python\n# the next line\nx = foo(1)\n```"
    assert S.first_code_line(pred) == "x = foo(1)"
    assert S.code_sim_score(pred, ["x = foo(1)"]) == pytest.approx(1.0)
    # difflib ratio: 2*3 matching chars / (4+4) = 0.75; fuzzywuzzy rounds to a whole percent
    assert S.code_sim_score("abcd", ["abce"]) == pytest.approx(0.75)
    assert S.code_sim_score("abc", ["abd"]) == pytest.approx(0.67)


def _longbench(task, outputs, all_classes=()):
    return {"benchmark": "longbench", "task": task, "metric": T.LONGBENCH_TASKS[task].metric, "outputs": outputs,
            "metric_kwargs": {"all_classes": list(all_classes)}}


def test_score_sample_longbench_first_line_rule():
    classes = ["Location", "Number"]
    assert S.score_sample(_longbench("trec", ["Location"], classes), "Location\nNumber") == (1.0, 100.0)
    native, percent = S.score_sample(_longbench("qasper", ["a cat sat down"]), "the cat sat")
    assert native == pytest.approx(0.8) and percent == pytest.approx(80.0)


def test_infinitebench_scorers():
    assert S.passkey_score("The pass key is 71432.", ["71432"]) == 1.0
    assert S.passkey_score("Key 12, then 71432", ["71432"]) == 0.0
    assert S.number_string_score("9876543210", ["9876543210"]) == 1.0
    assert S.kv_retrieval_score('The value is "abc-123".', ["abc-123"]) == 1.0
    assert S.kv_retrieval_score("The value is abc-1234", ["abc-123"]) == 0.0
    gold = S.choice_references(["Yellow"], ["Green", "Yellow", "Red", "Blue"])
    assert gold == ["Yellow", "B"]
    assert S.longbook_choice_score("B", gold) == 1.0
    assert S.longbook_choice_score("C. Red", gold) == 0.0
    assert S.longbook_choice_score("The answer is: Yellow", gold) == 1.0
    assert S.longbook_choice_score("I would say the answer is C", gold) == 0.0
    assert S.longbook_choice_score("I pick option B here", gold) == 1.0
    assert S.longbook_choice_score("", gold) == 0.0
    assert S.longbook_qa_f1_score("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    assert S.math_find_score("The largest number is 97.", ["97"]) == 1.0
    assert S.math_find_score("It is -3", ["-3"]) == 0.0  # upstream's regex has no sign
    assert S.math_find_score("2.5 then 7", ["2.5"]) == 1.0
    assert S.math_find_score("none", ["1"]) == 0.0
    dbg = ["func_b", "B"]
    assert S.code_debug_score("B. func_b", dbg) == 1.0
    assert S.code_debug_score("func_b has the bug", dbg) == 0.0  # no answer prefix upstream
    assert S.code_debug_score("The correct answer is: B", dbg) == 1.0
    assert S.code_debug_score("A", dbg) == 0.0


def test_perplexity():
    lps = [None, math.log(0.5), math.log(0.25)]
    # mean NLL = (ln 2 + ln 4) / 2 = 1.5 ln 2 -> ppl = 2 ** 1.5
    assert S.perplexity(lps) == pytest.approx(2 ** 1.5)
    assert S.perplexity([0.0, 0.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        S.perplexity([None])


def test_registry_signature_and_scale():
    for name, fn in S.METRICS.items():
        value = fn("some prediction 1", ["gold 1"], all_classes=["gold 1"])
        assert isinstance(value, float), name
        assert 0.0 <= S.score_percent(name, "some prediction 1", ["gold 1"], all_classes=["gold 1"]) <= 100.0
    assert S.score_percent("qa_f1_score", "the cat sat", ["a cat sat down"]) == pytest.approx(80.0)
    assert S.score_percent("string_match_all", "123", ["123"]) == 100.0
    with pytest.raises(ConfigError):
        S.get_scorer("nope")
    for task, spec in {**T.LONGBENCH_TASKS, **T.INFINITEBENCH_TASKS}.items():
        assert spec.metric in S.METRICS, task
