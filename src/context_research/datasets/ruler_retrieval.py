"""RULER's retrieval tasks: needles in a haystack (single, multi-key, multi-value, multi-query),
variable tracking (chains of assignments hidden in a haystack) and QA over distractor documents."""

from __future__ import annotations

import random
import string
from typing import Sequence

from context_research.errors import ConfigError

from .ruler_common import (HAYSTACKS, KEY_TYPES, NOISE_SENTENCES, VALUE_TYPES, CountTokens, Stream, check_common,
                           fit, insert_units, join_list, make_of, make_sample, needle_depths, random_number,
                           sample_seed, unique, wordlists)

# ----------------------------------------------------------------------------- NIAH


def _niah(
    task: str,
    n_samples: int,
    context_tokens: int,
    count_tokens: CountTokens,
    seed: int,
    *,
    haystack: str = "noise",
    key_type: str = "words",
    value_type: str = "numbers",
    num_needle_k: int = 1,
    num_needle_v: int = 1,
    num_needle_q: int = 1,
    depths: Sequence[float] | None = None,
    reserve_tokens: int = 0,
    max_new_tokens: int = 128,
) -> list[dict]:
    if haystack not in HAYSTACKS:
        raise ConfigError(f"RULER {task}: haystack must be one of {HAYSTACKS}, got {haystack!r}")
    if value_type not in VALUE_TYPES or key_type not in KEY_TYPES:
        raise ConfigError(f"RULER {task}: key_type in {KEY_TYPES}, value_type in {VALUE_TYPES}")
    if not (1 <= num_needle_q <= num_needle_k) or num_needle_v < 1:
        raise ConfigError(f"RULER {task}: need 1 <= num_needle_q <= num_needle_k and num_needle_v >= 1")
    budget = check_common(n_samples, context_tokens, reserve_tokens, task)
    params = dict(haystack=haystack, key_type=key_type, value_type=value_type, num_needle_k=num_needle_k,
                  num_needle_v=num_needle_v, num_needle_q=num_needle_q,
                  depths=list(depths) if depths is not None else None, reserve_tokens=reserve_tokens)
    make_key = make_of(key_type, "key")
    make_value = make_of(value_type, "value")
    out = []
    for i in range(n_samples):
        s = sample_seed(seed, task, context_tokens, i)
        rng = random.Random(s)
        taken: set[str] = set()
        keys = unique(make_key, rng, num_needle_k, taken)
        values = [unique(make_value, rng, num_needle_v, taken) for _ in keys]
        needles = [
            f"One of the special magic {value_type} for {k} is: {v}."
            for k, vs in zip(keys, values)
            for v in vs
        ]
        # needle order shuffled, then depths sorted: which needle lands where is seeded
        rng.shuffle(needles)
        where = needle_depths(rng, len(needles), depths, task)
        qidx = sorted(rng.sample(range(num_needle_k), num_needle_q))
        queries = [keys[j] for j in qidx]
        gold = [v for j in qidx for v in values[j]]
        query_text = join_list(queries)
        sep = "\n" if haystack == "needle" else " "

        if haystack == "noise":
            def units(n: int) -> list[str]:
                return [NOISE_SENTENCES[j % len(NOISE_SENTENCES)] for j in range(n)]
        elif haystack == "words":
            stream = Stream(lambda r: r.choice(wordlists()["all"]), s ^ 0x5EED)
            units = stream.take
        else:  # distractor needles with fresh keys/values
            dtaken = set(taken)

            def distractor(r: random.Random, _t=dtaken) -> str:
                k = unique(make_key, r, 1, _t)[0]
                v = unique(make_value, r, 1, _t)[0]
                return f"One of the special magic {value_type} for {k} is: {v}."

            units = Stream(distractor, s ^ 0xD157).take

        head = (f"Some special magic {value_type} are hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {value_type} afterwards.\n")
        question = f"\nWhat are all the special magic {value_type} for {query_text} mentioned in the provided text?"
        prefix = f" The special magic {value_type} for {query_text} mentioned in the provided text are"

        def build(n: int, _u=units, _w=where, _nd=needles, _h=head, _q=question, _p=prefix, _g=gold, _sep=sep) -> dict:
            body = _sep.join(insert_units(_u(n), list(zip(_w, _nd))))
            return {"input": _h + body + _q, "outputs": _g, "answer_prefix": _p}

        built, length = fit(build, count_tokens, budget, task)
        out.append(make_sample(task, i, seed, context_tokens, built, length, "string_match_all", max_new_tokens, params))
    return out


def niah_single(n_samples, context_tokens, count_tokens, seed, **params) -> list[dict]:
    """One needle (key -> value) in the haystack; retrieve its value."""
    params.setdefault("num_needle_k", 1)
    params.setdefault("num_needle_v", 1)
    params.setdefault("num_needle_q", 1)
    return _niah(params.pop("task_name", "niah_single"), n_samples, context_tokens, count_tokens, seed, **params)


def niah_multikey(n_samples, context_tokens, count_tokens, seed, **params) -> list[dict]:
    """Several needles with distinct keys (distractors); retrieve the value of one key."""
    params.setdefault("num_needle_k", 4)
    params.setdefault("num_needle_q", 1)
    return _niah(params.pop("task_name", "niah_multikey"), n_samples, context_tokens, count_tokens, seed, **params)


def niah_multivalue(n_samples, context_tokens, count_tokens, seed, **params) -> list[dict]:
    """One key with several values spread in the haystack; retrieve all of them."""
    params.setdefault("num_needle_v", 4)
    return _niah(params.pop("task_name", "niah_multivalue"), n_samples, context_tokens, count_tokens, seed, **params)


def niah_multiquery(n_samples, context_tokens, count_tokens, seed, **params) -> list[dict]:
    """Several needles; ask for the values of all of their keys at once."""
    params.setdefault("num_needle_k", 4)
    params.setdefault("num_needle_q", 4)
    return _niah(params.pop("task_name", "niah_multiquery"), n_samples, context_tokens, count_tokens, seed, **params)


# ----------------------------------------------------------------------------- VT


def _var_name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


def variable_tracking(
    n_samples: int,
    context_tokens: int,
    count_tokens: CountTokens,
    seed: int,
    *,
    num_chains: int = 1,
    num_hops: int = 4,
    haystack: str = "noise",
    reserve_tokens: int = 0,
    max_new_tokens: int = 30,
    task_name: str = "vt",
) -> list[dict]:
    """Chains ``VAR A = 12345``, ``VAR B = A``, ... hidden in the haystack; the model must list
    every variable that ends up holding the queried value (the first chain's value)."""
    task = task_name
    if num_chains < 1 or num_hops < 1:
        raise ConfigError(f"RULER {task}: num_chains and num_hops must be >= 1")
    if haystack not in ("noise", "words"):
        raise ConfigError(f"RULER {task}: haystack must be 'noise' or 'words', got {haystack!r}")
    budget = check_common(n_samples, context_tokens, reserve_tokens, task)
    params = dict(num_chains=num_chains, num_hops=num_hops, haystack=haystack, reserve_tokens=reserve_tokens)
    out = []
    for i in range(n_samples):
        s = sample_seed(seed, task, context_tokens, i)
        rng = random.Random(s)
        names = unique(_var_name, rng, num_chains * (num_hops + 1), set())
        vals = unique(lambda r: random_number(r, 5), rng, num_chains, set())
        chains: list[list[str]] = []
        for c in range(num_chains):
            vs = names[c * (num_hops + 1):(c + 1) * (num_hops + 1)]
            stmts = [f"VAR {vs[0]} = {vals[c]}."] + [f"VAR {vs[h]} = {vs[h - 1]}." for h in range(1, num_hops + 1)]
            chains.append(stmts)
        # each chain keeps its order (sorted depths); chains interleave at seeded depths
        inserts: list[tuple[float, str]] = []
        for stmts in chains:
            inserts.extend(zip(sorted(rng.uniform(0, 1) for _ in stmts), stmts))
        gold = names[: num_hops + 1]
        value = vals[0]
        if haystack == "noise":
            def units(n: int) -> list[str]:
                return [NOISE_SENTENCES[j % len(NOISE_SENTENCES)] for j in range(n)]
        else:
            units = Stream(lambda r: r.choice(wordlists()["all"]), s ^ 0x5EED).take
        head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
        question = f"\nQuestion: Find all variables that are assigned the value {value} in the text above."
        prefix = (f" Answer: According to the chain(s) of variable assignment in the text above, "
                  f"{num_hops + 1} variables are assigned the value {value}, they are: ")

        def build(n: int, _u=units, _ins=inserts, _h=head, _q=question, _p=prefix, _g=gold) -> dict:
            return {"input": _h + " ".join(insert_units(_u(n), _ins)) + _q, "outputs": _g, "answer_prefix": _p}

        built, length = fit(build, count_tokens, budget, task)
        out.append(make_sample(task, i, seed, context_tokens, built, length, "string_match_all", max_new_tokens, params))
    return out


# ----------------------------------------------------------------------------- QA


def _qa_fields(rec: dict, j: int) -> tuple[str, str, str, list[str]]:
    rid = str(rec.get("id", rec.get("_id", j)))
    question = rec.get("question")
    context = rec.get("context")
    answers = rec.get("answers", rec.get("answer"))
    if isinstance(answers, dict):  # HF squad: {"text": [...], "answer_start": [...]}
        answers = answers.get("text")
    if isinstance(answers, str):
        answers = [answers]
    if not question or not context or not answers:
        raise ConfigError(f"RULER qa: record {rid!r} needs 'question', 'context' and 'answers'")
    return rid, str(question), str(context), [str(a) for a in answers]


def qa(
    n_samples: int,
    context_tokens: int,
    count_tokens: CountTokens,
    seed: int,
    *,
    records: Sequence[dict] | None = None,
    reserve_tokens: int = 0,
    max_new_tokens: int = 32,
    task_name: str = "qa",
) -> list[dict]:
    """QA with the golden paragraph hidden among distractor paragraphs from other records.

    ``records`` are SQuAD-style dicts ``{"id", "question", "context", "answers"}`` (answers
    as a list or HF's ``{"text": [...]}``). The haystack unit is one distractor document;
    if the distractors run out, the sample is shorter than the budget.
    """
    task = task_name
    if not records:
        raise ConfigError(f"RULER {task}: needs SQuAD-style `records` (question/context/answers); none were supplied")
    budget = check_common(n_samples, context_tokens, reserve_tokens, task)
    parsed = sorted((_qa_fields(r, j) for j, r in enumerate(records)), key=lambda t: t[0])
    contexts = sorted({p[2] for p in parsed})
    pick_rng = random.Random(sample_seed(seed, task, context_tokens, -1))
    picks = [parsed[j] for j in pick_rng.sample(range(len(parsed)), min(n_samples, len(parsed)))]
    if n_samples > len(parsed):
        picks += [parsed[j] for j in pick_rng.choices(range(len(parsed)), k=n_samples - len(parsed))]
    params = dict(reserve_tokens=reserve_tokens, n_records=len(parsed))
    instr = "Answer the question based on the given documents. Only give me the answer and do not output any other words."
    out = []
    for i, (rid, question, golden, answers) in enumerate(picks):
        s = sample_seed(seed, task, context_tokens, i)
        rng = random.Random(s)
        distractors = [c for c in contexts if c != golden]
        rng.shuffle(distractors)
        depth = rng.uniform(0, 1)
        q = f"\n\n{instr}\n\nQuestion: {question}"  # RULER's qa template: instruction, documents, again

        def build(n: int, _d=distractors, _g=golden, _dp=depth, _q=q, _a=answers) -> dict:
            docs = insert_units(_d[:n], [(_dp, _g)])
            body = "\n\n".join(f"Document {j + 1}:\n{t}" for j, t in enumerate(docs))
            return {"input": f"{instr}\n\nThe following are given documents.\n\n{body}{_q}", "outputs": _a,
                    "answer_prefix": " Answer:"}

        built, length = fit(build, count_tokens, budget, task, max_units=len(distractors))
        sample = make_sample(task, i, seed, context_tokens, built, length, "string_match_part", max_new_tokens,
                         dict(params, source_id=rid))
        out.append(sample)
    return out
