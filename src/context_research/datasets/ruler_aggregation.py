"""RULER's aggregation tasks: common-words extraction (the most common words of a numbered list)
and frequent-words extraction (the most frequent words of a Zipf-distributed coded text)."""

from __future__ import annotations

import bisect
import random
import string

from context_research.errors import ConfigError

from .ruler_common import CountTokens, Stream, check_common, fit, make_sample, sample_seed, unique, word_key, wordlists

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
                 10: "ten"}

# ----------------------------------------------------------------------------- CWE


def _vocabulary(rng: random.Random, need: int) -> list[str]:
    """Shuffled wonderwords words; extended with adjective-noun compounds if more are needed."""
    w = wordlists()
    base = list(w["all"])
    rng.shuffle(base)
    if need <= len(base):
        return base[:need]
    seen = set(base)
    extra = unique(word_key, rng, need - len(base), seen)
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
    budget = check_common(n_samples, context_tokens, reserve_tokens, task)
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

        built, length = fit(build, count_tokens, budget, task, max_units=len(rare))
        out.append(make_sample(task, i, seed, context_tokens, built, length, "string_match_all", max_new_tokens, params))
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
    budget = check_common(n_samples, context_tokens, reserve_tokens, task)
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
            words = unique(_coded_word, rng, vocab_size, set())
        else:
            words = _vocabulary(rng, vocab_size)
        draws = Stream(lambda r: min(bisect.bisect_left(cdf, r.random()), vocab_size - 1), s ^ 0xF3E).take
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

        built, length = fit(build, count_tokens, budget, task)
        if len(built["outputs"]) < num_top:
            raise ConfigError(f"RULER {task}: context_tokens={context_tokens} is too small for {num_top} distinct top words")
        out.append(make_sample(task, i, seed, context_tokens, built, length, "string_match_all", max_new_tokens, params))
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
