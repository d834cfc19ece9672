"""What every RULER task shares: the word lists, per-sample seeds and random keys and values, and
the fitting of a haystack to the token budget (``fit``: the most haystack units whose prompt fits).
The tasks are ``ruler_retrieval`` and ``ruler_aggregation``; ``ruler`` registers them."""

from __future__ import annotations

import random
import uuid
from functools import lru_cache
from importlib.resources import files
from typing import Any, Callable, Sequence

from context_research.errors import ConfigError
from context_research.hashing import sha256_text

CountTokens = Callable[[str], int]
Builder = Callable[[int], dict]

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


class Stream:
    """A prefix-stable lazy sequence: ``take(n)`` always returns the same first n items."""

    def __init__(self, make: Callable[[random.Random], Any], seed: int):
        self._rng = random.Random(seed)
        self._make = make
        self._items: list = []

    def take(self, n: int) -> list:
        while len(self._items) < n:
            self._items.append(self._make(self._rng))
        return self._items[:n]


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def word_key(rng: random.Random) -> str:
    w = wordlists()
    return f"{rng.choice(w['adjectives'])}-{rng.choice(w['nouns'])}"


def make_of(kind: str, role: str) -> Callable[[random.Random], str]:
    if kind == "numbers":
        return random_number
    if kind == "uuids":
        return random_uuid
    if kind == "words":
        if role == "key":
            return word_key
        return lambda rng: rng.choice(wordlists()["all"])
    raise ConfigError(f"RULER: unknown {role}_type {kind!r}; choose one of {KEY_TYPES}")


def unique(make: Callable[[random.Random], str], rng: random.Random, n: int, taken: set[str]) -> list[str]:
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


def fit(build: Builder, count_tokens: CountTokens, budget: int, task: str, max_units: int | None = None) -> tuple[dict, int]:
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


def insert_units(units: Sequence[str], inserts: Sequence[tuple[float, str]]) -> list[str]:
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


def needle_depths(rng: random.Random, k: int, depths: Sequence[float] | None, task: str) -> list[float]:
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


def join_list(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def make_sample(task: str, i: int, seed: int, context_tokens: int, built: dict, length: int, metric: str,
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


def check_common(n_samples: int, context_tokens: int, reserve_tokens: int, task: str) -> int:
    if n_samples < 0:
        raise ConfigError(f"RULER {task}: n_samples must be >= 0, got {n_samples}")
    budget = int(context_tokens) - int(reserve_tokens)
    if budget <= 0:
        raise ConfigError(f"RULER {task}: context_tokens ({context_tokens}) minus reserve_tokens ({reserve_tokens}) must be > 0")
    return budget
