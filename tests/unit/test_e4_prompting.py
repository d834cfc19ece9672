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


class _CharTokenizer:
    """One token per character; ``decode`` joins them, so the cut is visible exactly."""

    chat_template = "yes"

    def encode(self, text, add_special_tokens=False):
        return list(text)

    def decode(self, ids, skip_special_tokens=False):
        return "".join(ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True,
                            continue_final_message=False, enable_thinking=True):
        assert enable_thinking is False
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + ("[a]" if add_generation_prompt else "")


def test_upstream_middle_cut_styles():
    from context_research.quality.prompting import upstream_middle_cut

    tok, ids = _CharTokenizer(), list("0123456789")
    # LongBench: half = int(5 / 2) = 2 on each side, an odd budget loses one token
    assert upstream_middle_cut(tok, ids, 5, "longbench") == "0189"
    assert upstream_middle_cut(tok, ids, 4, "longbench") == "0189"
    # InfiniteBench: ids[:5 // 2] + ids[-5 // 2:] -> head 2, tail 3
    assert upstream_middle_cut(tok, ids, 5, "infinitebench") == "01789"
    assert upstream_middle_cut(tok, ids, 5, None) == "01789"


def test_chat_template_and_system_prompt_follow_the_sample():
    from context_research.quality.prompting import ChatPrompter

    p = ChatPrompter(_CharTokenizer(), system_prompt="SYS")
    # LongBench's trec: the raw prompt, no template, no system message, to /v1/completions
    raw, _ = p.messages({"input": "Q", "chat_template": False, "system_prompt": None})
    assert raw == "Q"
    fitted = p.fit({"input": "Q", "chat_template": False, "system_prompt": None}, limit=10)
    assert p.request_fields(fitted) == {"prompt": "Q", "chat": False}
    # InfiniteBench: upstream's system message replaces the configured one
    msgs, _ = p.messages({"input": "Q", "system_prompt": "You are a helpful assistant"})
    assert msgs[0] == {"role": "system", "content": "You are a helpful assistant"}
    # RULER (no key): the configured system prompt
    assert p.messages({"input": "Q"})[0][0] == {"role": "system", "content": "SYS"}
    # LongBench chat tasks: the template, no system message
    assert p.messages({"input": "Q", "system_prompt": None})[0] == [{"role": "user", "content": "Q"}]


def test_fit_cuts_longbench_content_as_upstream():
    from context_research.quality.prompting import ChatPrompter

    p = ChatPrompter(_CharTokenizer())
    sample = {"input": "ABCDEFGHIJ" * 3, "system_prompt": None, "truncation": "longbench"}
    fitted = p.fit(sample, limit=6 + 10)  # "[user]" + "[a]" = 9 chars of template
    content = fitted.prompt[0]["content"]
    assert fitted.truncated and content == "ABC" + "HIJ" and fitted.prompt_tokens == 15
