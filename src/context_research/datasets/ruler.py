"""RULER synthetic long-context tasks, written from the paper's description.

Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?" (arXiv:2404.06654). Task families: needle-in-a-haystack (single, multi-key,
multi-value, multi-query), variable tracking (vt), common-words extraction (cwe),
frequent-words extraction (fwe) and QA over distractor documents (qa, only when source
records are supplied). Prompt wording and answer prefixes are RULER's own
(``scripts/data/synthetic/constants.py`` at ``PROMPT_SOURCE``); the haystacks are generated
here (noise sentences, wonderwords words or distractor needles; no Paul Graham essays).

Every generator has the signature::

    gen(n_samples, context_tokens, count_tokens, seed, **task_params) -> list[dict]

and returns samples ``{"id", "task", "input", "outputs", "length", "metric",
"max_new_tokens", "answer_prefix", "params"}``. ``input`` is the full prompt (context and
question); ``answer_prefix`` is RULER's answer lead-in, kept separate (not in ``input``)
so chat-mode callers can decide whether to prefill it. ``length == count_tokens(input)``
and is the largest achievable size ``<= context_tokens - reserve_tokens``: the number of
haystack units is found by bracketing plus binary search on ``count_tokens`` of the whole
prompt. Each sample draws from its own ``random.Random(sample_seed)`` where
``sample_seed`` is derived from ``(seed, task, context_tokens, index)``; output does not
depend on ``PYTHONHASHSEED`` or on the other samples.

Modules: ``ruler_common`` (words, seeds, fitting), ``ruler_retrieval`` (NIAH, variable tracking,
QA), ``ruler_aggregation`` (common- and frequent-words extraction); this one registers them
(``GENERATORS``) and dispatches (``generate``).
"""

from __future__ import annotations

from typing import Callable

from context_research.errors import ConfigError

from .ruler_aggregation import common_words_extraction, frequent_words_extraction
from .ruler_common import CountTokens
from .ruler_retrieval import niah_multikey, niah_multiquery, niah_multivalue, niah_single, qa, variable_tracking

# Recorded in each RULER manifest. The tasks' templates (ruler_retrieval, ruler_aggregation) are
# upstream's TASKS[*]["template"] and ["answer_prefix"] (the count words of cwe/fwe are upstream's at
# the default num_cw / num_top).
PROMPT_SOURCE = {"repo": "NVIDIA/RULER", "commit": "c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a",
                 "suite": "RULER synthetic tasks",
                 "prompt": "scripts/data/synthetic/constants.py TASKS template + answer_prefix",
                 "metric": "scripts/eval/synthetic/constants.py string_match_all / string_match_part",
                 "chat_template": "the served model's (RULER's model template), the answer prefix continued as "
                                  "the assistant turn",
                 "haystack": "generated here: noise sentences, wonderwords words or distractor needles (no essays)"}


# ----------------------------------------------------------------------------- registry

def _preset(fn: Callable, name: str, **fixed) -> Callable[..., list[dict]]:
    def gen(n_samples, context_tokens, count_tokens, seed, **params):
        merged = dict(fixed)
        merged.update(params)
        merged.setdefault("task_name", name)
        return fn(n_samples, context_tokens, count_tokens, seed, **merged)

    gen.__name__ = name
    gen.__doc__ = f"RULER preset {name}: {fn.__name__}({', '.join(f'{k}={v!r}' for k, v in fixed.items())})"
    return gen


GENERATORS: dict[str, Callable[..., list[dict]]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "vt": variable_tracking,
    "cwe": common_words_extraction,
    "fwe": frequent_words_extraction,
    "qa": qa,
    # presets in the spirit of RULER's 13-task suite ("words" haystack stands in for essays)
    "niah_single_1": _preset(niah_single, "niah_single_1", haystack="noise", key_type="words", value_type="numbers"),
    "niah_single_2": _preset(niah_single, "niah_single_2", haystack="words", key_type="words", value_type="numbers"),
    "niah_single_3": _preset(niah_single, "niah_single_3", haystack="words", key_type="words", value_type="uuids"),
    "niah_multikey_1": _preset(niah_multikey, "niah_multikey_1", haystack="words", key_type="words", value_type="numbers"),
    "niah_multikey_2": _preset(niah_multikey, "niah_multikey_2", haystack="needle", key_type="words", value_type="numbers"),
    "niah_multikey_3": _preset(niah_multikey, "niah_multikey_3", haystack="needle", key_type="uuids", value_type="uuids"),
}

SYNTHETIC_TASKS = tuple(k for k in GENERATORS if k != "qa")


def generate(task: str, n_samples: int, context_tokens: int, count_tokens: CountTokens, seed: int, **params) -> list[dict]:
    """Dispatch to ``GENERATORS[task]``; unknown names raise ConfigError."""
    try:
        fn = GENERATORS[task]
    except KeyError:
        raise ConfigError(f"RULER: unknown task {task!r}; known: {sorted(GENERATORS)}") from None
    return fn(n_samples, context_tokens, count_tokens, seed, **params)
