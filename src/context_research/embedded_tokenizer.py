"""The embedded model's tokenizer: a byte-level BPE trained here on sentences of random words
(``wonderwords``), with Qwen3's special tokens, think tokens and a Qwen3-style chat template
(``embedded_model`` builds the model around it)."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

import numpy as np

CORPUS_SENTENCES = 4000

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Trained first, so they get ids 0, 1, 2 (special=True, as in Qwen3).
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
# Added after training as ordinary added tokens (special=False, as in Qwen3), so decoding with
# skip_special_tokens=True keeps them and reasoning parsers can see them.
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)

# Qwen3's chat template without tool-call rendering: system/user/assistant/tool turns, the
# reasoning-content handling of assistant turns after the last user query, and the empty think
# block for enable_thinking=false.
CHAT_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""


def _word_list(name: str) -> list[str]:
    from importlib.resources import files

    text = files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    return sorted({w.strip() for w in text.splitlines() if w.strip()})


def generate_corpus(seed: int, n_sentences: int = CORPUS_SENTENCES) -> list[str]:
    """Sentences of random words (wonderwords' noun/verb/adjective lists, no profanity list)."""
    nouns = _word_list("nounlist.txt")
    verbs = _word_list("verblist.txt")
    adjectives = _word_list("adjectivelist.txt")
    pools = (nouns, verbs, adjectives)
    # A stream of its own, so the corpus and the weights never share random draws.
    rng = np.random.default_rng([seed, 1])
    punctuation = (".", ".", ".", "?", "!", ";", ":")
    sentences = []
    for _ in range(n_sentences):
        n_words = int(rng.integers(4, 17))
        words = []
        for _ in range(n_words):
            pool = pools[int(rng.choice(3, p=(0.55, 0.25, 0.20)))]
            words.append(pool[int(rng.integers(len(pool)))])
            roll = rng.random()
            if roll < 0.05:
                words[-1] += ","
            elif roll < 0.07:
                words.append(str(int(rng.integers(0, 10_000))))
        words[0] = words[0][:1].upper() + words[0][1:]
        sentences.append(" ".join(words) + punctuation[int(rng.integers(len(punctuation)))])
    return sentences


@contextlib.contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    keys = ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["RAYON_RS_NUM_CPUS"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` with Qwen3's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    with _single_threaded_tokenizers():
        tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def token_id(tok, token: str) -> int:
    idx = tok.token_to_id(token)
    if idx is None:  # pragma: no cover - the trainer always adds them
        raise RuntimeError(f"tokenizer lacks {token!r}")
    return int(idx)


def tokenizer_config(cfg: Mapping[str, Any], tok) -> dict:
    """tokenizer_config.json of the trained ``tok`` (``cfg``: the resolved embedded_model block)."""
    decoder = {}
    for token in SPECIAL_TOKENS + THINK_TOKENS:
        decoder[str(token_id(tok, token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token in SPECIAL_TOKENS,
        }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": cfg["max_position_embeddings"],
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
