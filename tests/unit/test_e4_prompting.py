"""E4 prompt helpers: middle truncation and chat messages."""

import pytest

from context_research.quality.prompting import build_chat_messages, truncate_middle, truncate_middle_text


def test_truncate_middle_keeps_both_ends():
    assert truncate_middle(list(range(10)), 4) == ([0, 1, 8, 9], True)
    assert truncate_middle(list(range(10)), 5) == ([0, 1, 7, 8, 9], True)
    assert truncate_middle(list(range(10)), 10) == (list(range(10)), False)
    assert truncate_middle((1, 2, 3), 8) == ([1, 2, 3], False)
    assert truncate_middle(list(range(10)), 0) == ([], True)
    assert truncate_middle(list(range(10)), 1) == ([9], True)
    with pytest.raises(ValueError):
        truncate_middle([1], -1)


def test_truncate_middle_text():
    count = lambda t: len(t.split())  # noqa: E731
    text = " ".join(f"w{i}" for i in range(100))
    out, truncated = truncate_middle_text(text, 10, count)
    assert truncated and out.split() == [f"w{i}" for i in range(5)] + [f"w{i}" for i in range(95, 100)]
    assert truncate_middle_text(text, 100, count) == (text, False)


def test_build_chat_messages():
    sample = {"input": "Q?", "answer_prefix": "Answer:"}
    assert build_chat_messages(sample) == [{"role": "user", "content": "Q?"}]
    msgs = build_chat_messages(sample, system_prompt="Be brief.", prefill_answer=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[-1]["content"] == "Answer:"
    assert build_chat_messages({"input": "x", "answer_prefix": ""}, prefill_answer=True) == [{"role": "user", "content": "x"}]
