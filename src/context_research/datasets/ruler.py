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
"""

from __future__ import annotations

import bisect
import random
import string
import uuid
from functools import lru_cache
from importlib.resources import files
from typing import Any, Callable, Sequence

from context_research.errors import ConfigError
from context_research.hashing import sha256_text

CountTokens = Callable[[str], int]
Builder = Callable[[int], dict]

# Recorded in each RULER manifest. The templates below are upstream's TASKS[*]["template"] and
# ["answer_prefix"] (the count words of cwe/fwe are upstream's at the default num_cw / num_top).
PROMPT_SOURCE = {"repo": "NVIDIA/RULER", "commit": "c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a",
                 "suite": "RULER synthetic tasks",
                 "prompt": "scripts/data/synthetic/constants.py TASKS template + answer_prefix",
                 "metric": "scripts/eval/synthetic/constants.py string_match_all / string_match_part",
                 "chat_template": "the served model's (RULER's model template), the answer prefix continued as "
                                  "the assistant turn",
                 "haystack": "generated here: noise sentences, wonderwords words or distractor needles (no essays)"}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
                 10: "ten"}

NOISE_SENTENCES = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

HAYSTACKS = ("noise", "words", "needle")
KEY_TYPES = ("words", "numbers", "uuids")
VALUE_TYPES = ("numbers", "words", "uuids")

# ----------------------------------------------------------------------------- words


def _read_wordlist(name: str) -> list[str]:
    text = files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        w = line.strip().lower()
        if w and w.isascii() and w.isalpha():
            out.append(w)
    return out


@lru_cache(maxsize=None)
def wordlists() -> dict[str, tuple[str, ...]]:
    """The wonderwords noun/adjective/verb lists (offline package data), deduplicated,
    single lowercase ASCII words only, in a fixed (sorted) order."""
    nouns = tuple(sorted(set(_read_wordlist("nounlist.txt"))))
    adjs = tuple(sorted(set(_read_wordlist("adjectivelist.txt"))))
    verbs = tuple(sorted(set(_read_wordlist("verblist.txt"))))
    allw = tuple(sorted(set(nouns) | set(adjs) | set(verbs)))
    return {"nouns": nouns, "adjectives": adjs, "verbs": verbs, "all": allw}


def sample_seed(seed: int, task: str, context_tokens: int, index: int | str) -> int:
    """A per-sample integer seed, stable across processes and Python versions."""
    return int(sha256_text(f"{seed}|{task}|{context_tokens}|{index}")[:16], 16)


class _Stream:
    """A prefix-stable lazy sequence: ``take(n)`` always returns the same first n items."""

    def __init__(self, make: Callable[[random.Random], Any], seed: int):
        self._rng = random.Random(seed)
        self._make = make
        self._items: list = []

    def take(self, n: int) -> list:
        while len(self._items) < n:
            self._items.append(self._make(self._rng))
        return self._items[:n]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _word_key(rng: random.Random) -> str:
    w = wordlists()
    return f"{rng.choice(w['adjectives'])}-{rng.choice(w['nouns'])}"


def _make_of(kind: str, role: str) -> Callable[[random.Random], str]:
    if kind == "numbers":
        return _number
    if kind == "uuids":
        return _uuid
    if kind == "words":
        if role == "key":
            return _word_key
        return lambda rng: rng.choice(wordlists()["all"])
    raise ConfigError(f"RULER: unknown {role}_type {kind!r}; choose one of {KEY_TYPES}")


def _unique(make: Callable[[random.Random], str], rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    tries = 0
    while len(out) < n:
        v = make(rng)
        tries += 1
        if v not in taken:
            taken.add(v)
            out.append(v)
        elif tries > 1000 * (n + 1):
            raise ConfigError("RULER: could not draw enough distinct keys/values; use another key/value type")
    return out


# ----------------------------------------------------------------------------- fitting


def _fit(build: Builder, count_tokens: CountTokens, budget: int, task: str, max_units: int | None = None) -> tuple[dict, int]:
    """Largest ``n`` (haystack units) whose prompt has ``count_tokens(input) <= budget``.

    Estimate from a small probe, bracket by galloping, then binary search. Returns the
    built sample for that ``n`` and its token count.
    """
    cache: dict[int, tuple[int, dict]] = {}

    def length(n: int) -> int:
        if n not in cache:
            s = build(n)
            cache[n] = (int(count_tokens(s["input"])), s)
        return cache[n][0]

    cap = max_units if max_units is not None else 1 << 40
    base = length(0)
    if base > budget:
        raise ConfigError(
            f"RULER {task}: the prompt without any haystack already has {base} tokens, more than the "
            f"budget of {budget}; raise context_tokens (for cwe, or lower freq_cw / num_cw)"
        )
    if cap == 0:
        return cache[0][1], base
    probe = min(cap, 32)
    lp = length(probe)
    if lp <= budget and probe == cap:
        return cache[probe][1], lp
    per_unit = max((lp - base) / probe, 1e-6)
    guess = int(min(cap, max(0, (budget - base) / per_unit)))
    if lp > budget:
        lo, hi = 0, probe
    elif length(guess) <= budget:
        lo = guess
        step = max(1, guess // 256)
        hi = min(cap, lo + step)
        while hi > lo and length(hi) <= budget:
            lo = hi
            step *= 2
            hi = min(cap, lo + step)
        if hi == lo:  # reached the cap
            return cache[lo][1], cache[lo][0]
    else:
        hi = guess
        step = max(1, guess // 256)
        lo = max(0, hi - step)
        while length(lo) > budget:
            hi = lo
            step *= 2
            lo = max(0, hi - step)
    # invariant: length(lo) <= budget < length(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if length(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return cache[lo][1], cache[lo][0]


def _insert(units: Sequence[str], inserts: Sequence[tuple[float, str]]) -> list[str]:
    """Place each ``(depth in [0,1], text)`` before unit ``round(depth * len(units))``."""
    n = len(units)
    at: dict[int, list[str]] = {}
    for depth, text in inserts:
        at.setdefault(int(round(depth * n)), []).append(text)
    out: list[str] = []
    for i in range(n + 1):
        out.extend(at.get(i, ()))
        if i < n:
            out.append(units[i])
    return out


def _depths(rng: random.Random, k: int, depths: Sequence[float] | None, task: str) -> list[float]:
    """Needle depths as fractions; ``depths`` from the caller are percents (0-100)."""
    if depths is None:
        return sorted(rng.uniform(0.0, 1.0) for _ in range(k))
    d = [float(x) / 100.0 for x in depths]
    if any(not 0.0 <= x <= 1.0 for x in d):
        raise ConfigError(f"RULER {task}: depths are percents in [0, 100], got {list(depths)}")
    if len(d) == 1:
        d = d * k
    if len(d) != k:
        raise ConfigError(f"RULER {task}: give one depth or {k} depths, got {len(d)}")
    return d


def _join_list(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def _sample(task: str, i: int, seed: int, context_tokens: int, built: dict, length: int, metric: str,
            max_new_tokens: int, params: dict) -> dict:
    return {
        "id": f"{task}-{context_tokens}-s{seed}-{i:05d}",
        "task": task,
        "input": built["input"],
        "outputs": list(built["outputs"]),
        "answer_prefix": built.get("answer_prefix", ""),
        "length": length,
        "metric": metric,
        "max_new_tokens": max_new_tokens,
        "params": params,
    }


def _check_common(n_samples: int, context_tokens: int, reserve_tokens: int, task: str) -> int:
    if n_samples < 0:
        raise ConfigError(f"RULER {task}: n_samples must be >= 0, got {n_samples}")
    budget = int(context_tokens) - int(reserve_tokens)
    if budget <= 0:
        raise ConfigError(f"RULER {task}: context_tokens ({context_tokens}) minus reserve_tokens ({reserve_tokens}) must be > 0")
    return budget


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
    budget = _check_common(n_samples, context_tokens, reserve_tokens, task)
    params = dict(haystack=haystack, key_type=key_type, value_type=value_type, num_needle_k=num_needle_k,
                  num_needle_v=num_needle_v, num_needle_q=num_needle_q,
                  depths=list(depths) if depths is not None else None, reserve_tokens=reserve_tokens)
    make_key = _make_of(key_type, "key")
    make_value = _make_of(value_type, "value")
    out = []
    for i in range(n_samples):
        s = sample_seed(seed, task, context_tokens, i)
        rng = random.Random(s)
        taken: set[str] = set()
        keys = _unique(make_key, rng, num_needle_k, taken)
        values = [_unique(make_value, rng, num_needle_v, taken) for _ in keys]
        needles = [
            f"One of the special magic {value_type} for {k} is: {v}."
            for k, vs in zip(keys, values)
            for v in vs
        ]
        # needle order shuffled, then depths sorted: which needle lands where is seeded
        rng.shuffle(needles)
        where = _depths(rng, len(needles), depths, task)
        qidx = sorted(rng.sample(range(num_needle_k), num_needle_q))
        queries = [keys[j] for j in qidx]
        gold = [v for j in qidx for v in values[j]]
        query_text = _join_list(queries)
        sep = "\n" if haystack == "needle" else " "

        if haystack == "noise":
            def units(n: int) -> list[str]:
                return [NOISE_SENTENCES[j % len(NOISE_SENTENCES)] for j in range(n)]
        elif haystack == "words":
            stream = _Stream(lambda r: r.choice(wordlists()["all"]), s ^ 0x5EED)
            units = stream.take
        else:  # distractor needles with fresh keys/values
            dtaken = set(taken)

            def distractor(r: random.Random, _t=dtaken) -> str:
                k = _unique(make_key, r, 1, _t)[0]
                v = _unique(make_value, r, 1, _t)[0]
                return f"One of the special magic {value_type} for {k} is: {v}."

            units = _Stream(distractor, s ^ 0xD157).take

        head = (f"Some special magic {value_type} are hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {value_type} afterwards.\n")
        question = f"\nWhat are all the special magic {value_type} for {query_text} mentioned in the provided text?"
        prefix = f" The special magic {value_type} for {query_text} mentioned in the provided text are"

        def build(n: int, _u=units, _w=where, _nd=needles, _h=head, _q=question, _p=prefix, _g=gold, _sep=sep) -> dict:
            body = _sep.join(_insert(_u(n), list(zip(_w, _nd))))
            return {"input": _h + body + _q, "outputs": _g, "answer_prefix": _p}

        built, length = _fit(build, count_tokens, budget, task)
        out.append(_sample(task, i, seed, context_tokens, built, length, "string_match_all", max_new_tokens, params))
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
    budget = _check_common(n_samples, context_tokens, reserve_tokens, task)
    params = dict(num_chains=num_chains, num_hops=num_hops, haystack=haystack, reserve_tokens=reserve_tokens)
    out = []
    for i in range(n_samples):
        s = sample_seed(seed, task, context_tokens, i)
        rng = random.Random(s)
        names = _unique(_var_name, rng, num_chains * (num_hops + 1), set())
        vals = _unique(lambda r: _number(r, 5), rng, num_chains, set())
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
            units = _Stream(lambda r: r.choice(wordlists()["all"]), s ^ 0x5EED).take
        head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
        question = f"\nQuestion: Find all variables that are assigned the value {value} in the text above."
        prefix = (f" Answer: According to the chain(s) of variable assignment in the text above, "
                  f"{num_hops + 1} variables are assigned the value {value}, they are: ")

        def build(n: int, _u=units, _ins=inserts, _h=head, _q=question, _p=prefix, _g=gold) -> dict:
            return {"input": _h + " ".join(_insert(_u(n), _ins)) + _q, "outputs": _g, "answer_prefix": _p}

        built, length = _fit(build, count_tokens, budget, task)
        out.append(_sample(task, i, seed, context_tokens, built, length, "string_match_all", max_new_tokens, params))
    return out


# ----------------------------------------------------------------------------- CWE


def _vocabulary(rng: random.Random, need: int) -> list[str]:
    """Shuffled wonderwords words; extended with adjective-noun compounds if more are needed."""
    w = wordlists()
    base = list(w["all"])
    rng.shuffle(base)
    if need <= len(base):
        return base[:need]
    seen = set(base)
    extra = _unique(_word_key, rng, need - len(base), seen)
    return base + extra


def common_words_extraction(
    n_samples: int,
    context_tokens: int,
    count_tokens: CountTokens,
    seed: int,
    *,
    num_cw: int = 10,
    freq_cw: int = 30,
    freq_ucw: int = 3,
    max_unique_words: int = 60000,
    reserve_tokens: int = 0,
    max_new_tokens: int = 120,
    task_name: str = "cwe",
) -> list[dict]:
    """A numbered word list in which ``num_cw`` words occur ``freq_cw`` times and every other
    word ``freq_ucw`` times; name the ``num_cw`` most common words. The haystack unit is one
    uncommon word (``freq_ucw`` list entries)."""
    task = task_name
    if not freq_cw > freq_ucw >= 1 or num_cw < 1:
        raise ConfigError(f"RULER {task}: need freq_cw > freq_ucw >= 1 and num_cw >= 1")
    budget = _check_common(n_samples, context_tokens, reserve_tokens, task)
    params = dict(num_cw=num_cw, freq_cw=freq_cw, freq_ucw=freq_ucw, reserve_tokens=reserve_tokens)
    out = []
    for i in range(n_samples):
        s = sample_seed(seed, task, context_tokens, i)
        rng = random.Random(s)
        # each uncommon word costs >= freq_ucw tokens, so budget // freq_ucw bounds the need
        vocab = _vocabulary(rng, num_cw + min(max_unique_words, budget // freq_ucw + 1))
        common, rare = vocab[:num_cw], vocab[num_cw:]
        head = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n")
        question = f"\nQuestion: What are the {num_cw} most common words in the above list?"
        prefix = f" Answer: The top {num_cw} words that appear most often in the list are:"

        def build(n: int, _s=s, _c=common, _r=rare, _h=head, _q=question, _p=prefix) -> dict:
            entries = [w for w in _c for _ in range(freq_cw)] + [w for w in _r[:n] for _ in range(freq_ucw)]
            random.Random(_s ^ (n * 0x9E3779B1)).shuffle(entries)
            body = " ".join(f"{j + 1}. {w}" for j, w in enumerate(entries))
            return {"input": _h + body + _q, "outputs": _c, "answer_prefix": _p}

        built, length = _fit(build, count_tokens, budget, task, max_units=len(rare))
        out.append(_sample(task, i, seed, context_tokens, built, length, "string_match_all", max_new_tokens, params))
    return out


# ----------------------------------------------------------------------------- FWE


def _coded_word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 7)))


def frequent_words_extraction(
    n_samples: int,
    context_tokens: int,
    count_tokens: CountTokens,
    seed: int,
    *,
    alpha: float = 2.0,
    vocab_size: int = 2000,
    num_top: int = 3,
    vocab: str = "coded",
    reserve_tokens: int = 0,
    max_new_tokens: int = 50,
    task_name: str = "fwe",
) -> list[dict]:
    """Coded text whose words follow a (truncated) Zipf/zeta law with exponent ``alpha``;
    name the ``num_top`` most frequent words. ``vocab="coded"`` uses random letter strings
    (RULER's "coded words"); ``vocab="words"`` uses wonderwords words. Ties among the top
    ``num_top + 1`` counts are broken by re-assigning tail occurrences, so the answer is
    unique. The haystack unit is one word occurrence."""
    task = task_name
    if alpha <= 1.0 or vocab_size <= num_top or num_top < 1:
        raise ConfigError(f"RULER {task}: need alpha > 1 and vocab_size > num_top >= 1")
    if vocab not in ("coded", "words"):
        raise ConfigError(f"RULER {task}: vocab must be 'coded' or 'words', got {vocab!r}")
    budget = _check_common(n_samples, context_tokens, reserve_tokens, task)
    params = dict(alpha=alpha, vocab_size=vocab_size, num_top=num_top, vocab=vocab, reserve_tokens=reserve_tokens)
    weights = [1.0 / (k ** alpha) for k in range(1, vocab_size + 1)]
    total = sum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(acc)
    out = []
    for i in range(n_samples):
        s = sample_seed(seed, task, context_tokens, i)
        rng = random.Random(s)
        if vocab == "coded":
            words = _unique(_coded_word, rng, vocab_size, set())
        else:
            words = _vocabulary(rng, vocab_size)
        draws = _Stream(lambda r: min(bisect.bisect_left(cdf, r.random()), vocab_size - 1), s ^ 0xF3E).take
        top = _NUMBER_WORDS.get(num_top, str(num_top))
        head = ("Read the following coded text and track the frequency of each coded word. "
                f"Find the {top} most frequently appeared coded words. ")
        question = (f"\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the {top} "
                    "most frequently appeared words in the above coded text?")
        prefix = f" Answer: According to the coded text above, the {top} most frequently appeared words are:"

        def build(n: int, _d=draws, _w=words, _h=head, _q=question, _p=prefix) -> dict:
            ranks = list(_d(n))
            ranks = _strict_top(ranks, num_top)
            counts: dict[int, int] = {}
            for r in ranks:
                counts[r] = counts.get(r, 0) + 1
            order = sorted(counts, key=lambda r: (-counts[r], r))
            gold = [_w[r] for r in order[:num_top]]
            return {"input": _h + " ".join(_w[r] for r in ranks) + _q, "outputs": gold, "answer_prefix": _p}

        built, length = _fit(build, count_tokens, budget, task)
        if len(built["outputs"]) < num_top:
            raise ConfigError(f"RULER {task}: context_tokens={context_tokens} is too small for {num_top} distinct top words")
        out.append(_sample(task, i, seed, context_tokens, built, length, "string_match_all", max_new_tokens, params))
    return out


def _strict_top(ranks: list[int], k: int) -> list[int]:
    """Make the top-``k`` counts strictly decreasing and above the (k+1)-th, by rewriting
    occurrences of the rarest words (from the end of the text) into the word that needs one
    more. Length is unchanged; returns a new list."""
    ranks = list(ranks)
    for _ in range(len(ranks)):
        counts: dict[int, int] = {}
        for r in ranks:
            counts[r] = counts.get(r, 0) + 1
        order = sorted(counts, key=lambda r: (-counts[r], r))
        fix = None
        for j in range(min(k, len(order))):
            nxt = counts[order[j + 1]] if j + 1 < len(order) else -1
            if counts[order[j]] <= nxt:
                fix = order[j]
                break
        if fix is None:
            return ranks
        protected = set(order[:k + 1])
        for pos in range(len(ranks) - 1, -1, -1):
            if ranks[pos] not in protected:
                ranks[pos] = fix
                break
        else:
            return ranks  # too short to separate; caller checks the gold size
    return ranks


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
    budget = _check_common(n_samples, context_tokens, reserve_tokens, task)
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
            docs = _insert(_d[:n], [(_dp, _g)])
            body = "\n\n".join(f"Document {j + 1}:\n{t}" for j, t in enumerate(docs))
            return {"input": f"{instr}\n\nThe following are given documents.\n\n{body}{_q}", "outputs": _a,
                    "answer_prefix": " Answer:"}

        built, length = _fit(build, count_tokens, budget, task, max_units=len(distractors))
        sample = _sample(task, i, seed, context_tokens, built, length, "string_match_part", max_new_tokens,
                         dict(params, source_id=rid))
        out.append(sample)
    return out


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
