"""Answer scorers for RULER, LongBench, InfiniteBench and PG19, from their published definitions.

Every registered scorer has the signature ``(prediction: str, references: list[str], **kw)
-> float``. Scales follow each benchmark's own definition:

* RULER ``string_match_all`` / ``string_match_part``: 0-100 per sample.
* LongBench and InfiniteBench scorers: 0-1 per sample (the benchmarks multiply the mean by
  100 when reporting). ``score_percent`` returns any metric on a 0-100 scale.
* ``perplexity`` is not a per-answer scorer; it works on prompt logprobs.

LongBench takes the max over references (``qa_f1_score``, ``rouge_score``, ...);
InfiniteBench references for choice tasks are ``[option_text, letter]`` (see
``choice_references``).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Callable, Iterable, Sequence

from context_research.errors import ConfigError

Scorer = Callable[..., float]

# ----------------------------------------------------------------------------- RULER


def string_match_all(prediction: str, references: Sequence[str], **_: object) -> float:
    """RULER: percentage of gold strings contained (case-insensitive) in the prediction."""
    if not references:
        return 0.0
    pred = prediction.lower()
    return 100.0 * sum(1.0 for r in references if r.lower() in pred) / len(references)


def string_match_part(prediction: str, references: Sequence[str], **_: object) -> float:
    """RULER: 100 if any gold string is contained (case-insensitive) in the prediction."""
    pred = prediction.lower()
    return 100.0 * max((1.0 if r.lower() in pred else 0.0 for r in references), default=0.0)


# ----------------------------------------------------------------------------- LongBench

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop articles (a/an/the), collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _token_f1(pred_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_one(prediction: str, reference: str) -> float:
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def _max_over(fn: Callable[[str, str], float], prediction: str, references: Iterable[str]) -> float:
    return max((fn(prediction, r) for r in references), default=0.0)


def qa_f1_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """LongBench/SQuAD token F1 after ``normalize_answer``; max over references (0-1)."""
    return _max_over(qa_f1_one, prediction, references)


@lru_cache(maxsize=1)
def _rouge_l():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_one(prediction: str, reference: str) -> float:
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_rouge_l().score(reference, prediction)["rougeL"].fmeasure)


def rouge_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """ROUGE-L F-measure (``rouge-score`` package, no stemming); max over references (0-1).
    An empty prediction scores 0, as LongBench's exception path does."""
    return _max_over(rouge_one, prediction, references)


def classification_one(prediction: str, reference: str, all_classes: Sequence[str]) -> float:
    matched = [c for c in all_classes if c in prediction]
    # a class that is only a substring of the gold label does not count against it
    matched = [c for c in matched if not (c in reference and c != reference)]
    return 1.0 / len(matched) if reference in matched else 0.0


def classification_score(prediction: str, references: Sequence[str], *, all_classes: Sequence[str] = (), **_: object) -> float:
    """LongBench: 1/len(matched classes) if the gold class is among the classes named in the
    prediction, else 0; max over references (0-1)."""
    return max((classification_one(prediction, r, all_classes) for r in references), default=0.0)


def retrieval_one(prediction: str, reference: str) -> float:
    m = re.findall(r"Paragraph (\d+)", reference)
    if not m:
        return 0.0
    gold = m[0]
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(1 for n in numbers if n == gold) / len(numbers)


def retrieval_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """LongBench passage_retrieval_en: share of the numbers in the prediction equal to the gold
    paragraph number (parsed from "Paragraph N"); max over references (0-1)."""
    return _max_over(retrieval_one, prediction, references)


def count_one(prediction: str, reference: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(1 for n in numbers if n == str(reference).strip()) / len(numbers)


def count_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """LongBench passage_count: share of the numbers in the prediction equal to the gold count
    (0-1); max over references."""
    return _max_over(count_one, prediction, references)


def first_code_line(prediction: str) -> str:
    """The first line that is not a comment or a markdown fence (LongBench's rule: skip lines
    containing '`', '#' or '//')."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim_one(prediction: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(first_code_line(prediction), reference) / 100.0


def code_sim_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """LongBench lcc/repobench-p: ``rapidfuzz.fuzz.ratio / 100`` between the first code line of
    the prediction and the reference; max over references (0-1)."""
    return _max_over(code_sim_one, prediction, references)


# LongBench evaluates only the first line of the prediction for these datasets
LONGBENCH_FIRST_LINE = frozenset({"trec", "triviaqa", "samsum", "lsht"})


# ----------------------------------------------------------------------------- InfiniteBench


def first_int(text: str) -> str | None:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


def passkey_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench passkey: the first integer in the prediction equals the gold key (0/1)."""
    got = first_int(prediction)
    return 1.0 if got is not None and references and got == str(references[0]).strip() else 0.0


def number_string_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench number_string: same rule as passkey (first integer equals the gold)."""
    return passkey_score(prediction, references)


def kv_retrieval_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench kv_retrieval: the gold value appears as a whole word of the prediction
    after replacing punctuation/quotes/braces with spaces (0/1)."""
    pred = prediction
    for ch in ["\n", ":", '"', "'", ".", ",", "?", "!", "{", "}"]:
        pred = pred.replace(ch, " ")
    words = set(pred.split())
    return 1.0 if any(str(r).strip() in words for r in references) else 0.0


def _squash(text: str, chars: Sequence[str]) -> str:
    for ch in chars:
        text = text.replace(ch, " ")
    return " ".join(text.split())


def choice_references(answer: Sequence[str] | str, options: Sequence[str], letters: str = "ABCD") -> list[str]:
    """InfiniteBench choice gold ``[option_text, letter]`` from a record's answer and options."""
    text = answer if isinstance(answer, str) else answer[0]
    letter = letters[list(options).index(text)] if text in options else ""
    return [text, letter] if letter else [text]


def longbook_choice_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench longbook_choice_eng (0/1): a leading A-D letter decides; else an exact gold
    match; else what follows "answer is:", "answer:", "answer is" or "option is" must start
    with the gold text or letter; else the first standalone A-D word decides.
    ``references`` = ``[option_text, letter]``."""
    pred = prediction.strip()
    if not pred:
        return 0.0
    gold = [str(r) for r in references if str(r)]
    if pred[0] in "ABCD":
        return 1.0 if pred[0] in gold else 0.0
    if pred in gold:
        return 1.0
    pred = _squash(pred, ["\n", '"', "'", ".", ",", "?", "!", "{", "}"])
    for prefix in ("answer is:", "answer:", "answer is", "option is"):
        idx = pred.find(prefix)
        if idx == -1:
            continue
        after = pred[idx + len(prefix) + 1:]
        if not after:
            return 0.0
        return 1.0 if any(after.startswith(g) for g in gold) else 0.0
    for word in pred.split():
        if word in ("A", "B", "C", "D"):
            return 1.0 if word in gold else 0.0
    return 0.0


def code_debug_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench code_debug (0/1): ``references`` = ``[function_name, letter]``. Correct if
    the prediction starts with "X." / "X:", with the letter or the function name, or if the
    text after an answer prefix ("answer is:", "is:", "answer:", "correct option is:") does."""
    gold = [str(r) for r in references if str(r)]
    letter = gold[1] if len(gold) > 1 else ""
    pred = prediction.strip()
    if letter and pred[:2] in (f"{letter}.", f"{letter}:"):
        return 1.0
    pred = _squash(pred, ["\n", "`", "'", '"', "-", "*", "Option", "option"])
    if any(pred.startswith(g) for g in gold):
        return 1.0
    for prefix in ("answer is:", "is:", "answer:", "correct option is:"):
        idx = pred.find(prefix)
        if idx == -1:
            continue
        after = pred[idx + len(prefix) + 1:]
        return 1.0 if after and any(after.startswith(g) for g in gold) else 0.0
    return 0.0


def math_find_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench math_find (0/1): the first number in the prediction equals the gold
    (compared as int when the gold is an integer, else as float)."""
    if not references:
        return 0.0
    gold = str(references[0]).strip()
    m = re.search(r"-?\d+\.\d+|-?\d+", prediction)
    if m is None:
        return 0.0
    got = m.group(0)
    try:
        if re.fullmatch(r"-?\d+", gold):
            return 1.0 if float(got) == int(gold) else 0.0
        return 1.0 if math.isclose(float(got), float(gold), rel_tol=0, abs_tol=1e-9) else 0.0
    except ValueError:
        return 0.0


def longbook_qa_f1_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench longbook_qa_eng: token F1 (same normalisation as LongBench), max over refs."""
    return qa_f1_score(prediction, references)


# ----------------------------------------------------------------------------- PG19


def perplexity(logprobs: Sequence[float | None]) -> float:
    """exp(mean negative logprob) over the non-None entries (the first prompt token has no
    logprob in vLLM's ``prompt_logprobs``). Raises ValueError if none are usable."""
    vals = [float(x) for x in logprobs if x is not None]
    if not vals:
        raise ValueError("perplexity: no token logprobs to average")
    if any(math.isnan(v) for v in vals):
        raise ValueError("perplexity: a logprob is NaN")
    return math.exp(-sum(vals) / len(vals))


# ----------------------------------------------------------------------------- registry

METRICS: dict[str, Scorer] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
    "qa_f1_score": qa_f1_score,
    "rouge_score": rouge_score,
    "classification_score": classification_score,
    "retrieval_score": retrieval_score,
    "count_score": count_score,
    "code_sim_score": code_sim_score,
    "passkey": passkey_score,
    "number_string": number_string_score,
    "kv_retrieval": kv_retrieval_score,
    "longbook_choice_eng": longbook_choice_score,
    "longbook_qa_eng": longbook_qa_f1_score,
    "math_find": math_find_score,
    "code_debug": code_debug_score,
}

# multiply by this to get 0-100
METRIC_SCALE: dict[str, float] = {name: (1.0 if name.startswith("string_match") else 100.0) for name in METRICS}


def get_scorer(name: str) -> Scorer:
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from None


def score(metric: str, prediction: str, references: Sequence[str], **kw: object) -> float:
    """The metric on its native scale."""
    return get_scorer(metric)(prediction, list(references), **kw)


def score_percent(metric: str, prediction: str, references: Sequence[str], **kw: object) -> float:
    """The metric on a 0-100 scale."""
    return score(metric, prediction, references, **kw) * METRIC_SCALE[metric]


def score_sample(sample: dict, prediction: str) -> tuple[float, float]:
    """(native score, 0-100 score) of one answer to a materialized sample, with the sample's
    ``metric``, ``outputs`` and ``metric_kwargs`` (each task's metric is its
    ``datasets.templates`` TaskSpec's) and LongBench's first-line rule."""
    if sample.get("benchmark") == "longbench" and sample.get("task") in LONGBENCH_FIRST_LINE:
        prediction = prediction.lstrip("\n").split("\n")[0]
    value = score(sample["metric"], prediction, sample["outputs"], **(sample.get("metric_kwargs") or {}))
    return value, value * METRIC_SCALE[sample["metric"]]
