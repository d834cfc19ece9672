"""Answer scorers for RULER, LongBench and InfiniteBench, with each suite's own definition.

Every registered scorer has the signature ``(prediction: str, references: list[str], **kw)
-> float``. Each one reproduces the upstream scorer, quirks included, so scores compare with
the suites' papers and leaderboards:

* RULER (NVIDIA/RULER ``scripts/eval/synthetic/constants.py``): ``string_match_all`` /
  ``string_match_part`` on the post-processed prediction, 0-100 per sample.
* LongBench (THUDM/LongBench ``LongBench/metrics.py`` + ``eval.py``): 0-1 per sample, max over
  the references; ROUGE-L from the ``rouge`` package and code similarity from ``fuzzywuzzy``,
  the packages upstream calls.
* InfiniteBench (OpenBMB/InfiniteBench ``src/compute_scores.py``): 0-1 per sample; choice
  references are ``[option_text, letter]`` (``choice_references``, upstream's ``get_answer``).

Where upstream crashes (an exception ends its evaluation) we score 0 instead; each such case
and every other remaining difference is listed in docs/e4-parity.md and pinned by the cases in
tests/fixtures/e4_parity/. ``score_percent`` returns any metric on a 0-100 scale.
"""

from __future__ import annotations

import difflib
import math
import re
import string
import warnings
from collections import Counter
from functools import lru_cache
from typing import Callable, Iterable, Sequence

from context_research.errors import ConfigError

Scorer = Callable[..., float]

# ----------------------------------------------------------------------------- RULER

_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def ruler_postprocess(prediction: str) -> str:
    """RULER's ``postprocess_pred``: strip, control characters to newlines, strip again."""
    return _CONTROL_CHARS.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str], **_: object) -> float:
    """RULER: percentage of gold strings contained (case-insensitive) in the prediction."""
    if not references:
        return 0.0
    pred = ruler_postprocess(prediction).lower()
    return 100.0 * sum(1.0 for r in references if r.lower() in pred) / len(references)


def string_match_part(prediction: str, references: Sequence[str], **_: object) -> float:
    """RULER: 100 if any gold string is contained (case-insensitive) in the prediction."""
    pred = ruler_postprocess(prediction).lower()
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
    # upstream starts from 0. and keeps the max, so no reference scores 0
    return max((fn(prediction, r) for r in references), default=0.0)


def qa_f1_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """LongBench/SQuAD token F1 after ``normalize_answer``; max over references (0-1)."""
    return _max_over(qa_f1_one, prediction, references)


@lru_cache(maxsize=1)
def _rouge():
    from rouge import Rouge  # pltrdy's package, as LongBench's metrics.py calls it

    return Rouge()


def rouge_one(prediction: str, reference: str) -> float:
    """``Rouge().get_scores([pred], [ref], avg=True)["rouge-l"]["f"]``; any exception (an empty
    or punctuation-only hypothesis or reference) scores 0, as upstream's bare ``except`` does.
    The package is case-sensitive, keeps punctuation and splits sentences on "."."""
    try:
        return float(_rouge().get_scores([prediction], [reference], avg=True)["rouge-l"]["f"])
    except Exception:  # noqa: BLE001 - upstream catches everything here
        return 0.0


def rouge_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """LongBench ROUGE-L F (the ``rouge`` package); max over references (0-1)."""
    return _max_over(rouge_one, prediction, references)


def classification_one(prediction: str, reference: str, all_classes: Sequence[str]) -> float:
    """LongBench's rule, including its quirk: a class that is a strict substring of the gold
    label is removed from the matches *while iterating over them*, so the match right after a
    removed one is never checked (Python's list iterator advances past the shifted item)."""
    matched = [c for c in all_classes if c in prediction]
    i = 0
    while i < len(matched):
        term = matched[i]
        if term in reference and term != reference:
            matched.remove(term)  # the first equal item, as list.remove does upstream
        i += 1
    return 1.0 / len(matched) if reference in matched else 0.0


def classification_score(prediction: str, references: Sequence[str], *, all_classes: Sequence[str] = (), **_: object) -> float:
    """LongBench: 1/len(matched classes) if the gold class is among the classes named in the
    prediction, else 0; max over references (0-1). (Upstream's difflib fallback sits behind
    ``em_match_list != 0``, which is always true, so it never runs.)"""
    return max((classification_one(prediction, r, all_classes) for r in references), default=0.0)


def retrieval_one(prediction: str, reference: str) -> float:
    m = re.findall(r"Paragraph (\d+)", reference)
    if not m:
        return 0.0  # upstream raises IndexError here (a reference without "Paragraph N")
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(1 for n in numbers if n == m[0]) / len(numbers)


def retrieval_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """LongBench passage_retrieval_en: share of the numbers in the prediction equal to the gold
    paragraph number (parsed from "Paragraph N"); max over references (0-1)."""
    return _max_over(retrieval_one, prediction, references)


def count_one(prediction: str, reference: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    # compared as strings, unstripped, as upstream does
    return sum(1 for n in numbers if n == str(reference)) / len(numbers)


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


@lru_cache(maxsize=1)
def _fuzz():
    # fuzzywuzzy falls back to difflib's SequenceMatcher without python-Levenshtein, which is
    # what LongBench's requirements install; it warns about speed on import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from fuzzywuzzy import fuzz
    return fuzz


def fuzz_backend() -> str:
    """Which matcher fuzzywuzzy uses: ``difflib`` (upstream's setup) or ``python-Levenshtein``
    (which changes some ratios; the parity tests require difflib)."""
    return "difflib" if _fuzz().SequenceMatcher is difflib.SequenceMatcher else "python-Levenshtein"


def code_sim_one(prediction: str, reference: str) -> float:
    return _fuzz().ratio(first_code_line(prediction), reference) / 100


def code_sim_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """LongBench lcc/repobench-p: ``fuzzywuzzy.fuzz.ratio / 100`` (an integer percent) between
    the first code line of the prediction and the reference; max over references (0-1)."""
    return _max_over(code_sim_one, prediction, references)


# LongBench evaluates only the first line of the prediction for these datasets (eval.py)
LONGBENCH_FIRST_LINE = frozenset({"trec", "triviaqa", "samsum", "lsht"})


# ----------------------------------------------------------------------------- InfiniteBench


def first_int_match(text: str) -> str:
    """InfiniteBench's ``first_int_match``: the first run of digits, or "" when there is none."""
    return next((item for item in re.split("[^0-9]", text) if item != ""), "")


def _label(references: Sequence[str]) -> str | None:
    # upstream's label is one value (a list label is reduced to its first item)
    return str(references[0]) if references else None


def passkey_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench passkey: the first run of digits equals the gold key (0/1)."""
    label = _label(references)
    return 1.0 if label is not None and label == first_int_match(prediction) else 0.0


def number_string_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench number_string: same rule as passkey."""
    return passkey_score(prediction, references)


def _blank(text: str, chars: Sequence[str]) -> str:
    for ch in chars:
        text = text.replace(ch, " ")
    return text


def _collapse_double_spaces(text: str) -> str:
    # upstream collapses runs of spaces only (tabs and leading/trailing spaces survive)
    while "  " in text:
        text = text.replace("  ", " ")
    return text


def kv_retrieval_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench kv_retrieval: the gold value is a whole word of the prediction after
    replacing newlines, colons, quotes, . , ? ! and braces with spaces (0/1)."""
    label = _label(references)
    words = _blank(prediction, ["\n", ":", '"', "'", ".", ",", "?", "!", "{", "}"]).split()
    return 1.0 if label is not None and label in words else 0.0


def choice_references(answer: Sequence[str] | str, options: Sequence[str], letters: str = "ABCD") -> list[str]:
    """InfiniteBench choice gold ``[option_text, letter]`` from a record's answer and options
    (upstream's ``get_answer``; an answer already given as ``[text, letter]`` is kept)."""
    if not isinstance(answer, str) and len(answer) == 2 and answer[1] in list(letters):
        return [str(answer[0]), str(answer[1])]
    text = answer if isinstance(answer, str) else answer[0]
    letter = letters[list(options).index(text)] if text in options else ""
    return [text, letter] if letter else [text]


def longbook_choice_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench longbook_choice_eng (0/1), ``references`` = ``[option_text, letter]``:
    a leading A-D character decides; else an exact gold match; else what follows "answer is:",
    "answer:", "answer is" or "option is" must start with the gold text or letter; else the
    first word that is a substring of "ABCD" (so also "AB", "BCD", ...) decides."""
    label = [str(r) for r in references]
    pred = prediction.strip()
    if pred == "":
        return 0.0
    if pred[0] in "ABCD":
        return 1.0 if pred[0] in label else 0.0
    if pred in label:
        return 1.0
    pred = _collapse_double_spaces(_blank(pred, ["\n", '"', "'", ".", ",", "?", "!", "{", "}"]))
    for prefix in ("answer is:", "answer:", "answer is", "option is"):
        idx = pred.find(prefix)
        if idx == -1:
            continue
        if len(pred) < idx + len(prefix) + 1:
            return 0.0
        after = pred[idx + len(prefix) + 1:]
        return 1.0 if any(after.startswith(s) for s in label) else 0.0
    for word in pred.split():
        if word in "ABCD":  # a substring test upstream, kept
            return 1.0 if word in label else 0.0
    return 0.0


def code_debug_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench code_debug (0/1), ``references`` = ``[function_name, letter]``: correct if
    the stripped prediction starts with "X." or "X:", or if the text after the first answer
    prefix found ("answer is:", "is:", "answer:", "correct option is:") starts with the letter
    or the function name."""
    if len(references) < 2:
        return 0.0  # upstream indexes label[1]: a reference without a letter would raise
    fn_name, letter = str(references[0]), str(references[1])
    pred = prediction.strip()
    if pred[:2] in (f"{letter}.", f"{letter}:"):
        return 1.0
    pred = _collapse_double_spaces(_blank(pred, ["\n", "`", "'", '"', "-", "*", "Option", "option"]))
    for prefix in ("answer is:", "is:", "answer:", "correct option is:"):
        idx = pred.find(prefix)
        if idx == -1:
            continue
        if len(pred) < idx + len(prefix) + 1:
            return 0.0
        after = pred[idx + len(prefix) + 1:]
        return 1.0 if after.startswith(letter) or after.startswith(fn_name) else 0.0
    return 0.0


_INT = re.compile(r"-?\d+")


def math_find_score(prediction: str, references: Sequence[str], **_: object) -> float:
    """InfiniteBench math_find (0/1): the first number (``\\d+\\.\\d+|\\d+``, no sign) equals
    the gold, compared as int when the gold is an integer and as float otherwise. Upstream
    keeps the label's JSON type; ours is its string, so "88" is an int and "88.0" a float."""
    label = _label(references)
    if label is None:
        return 0.0
    m = re.search(r"\d+\.\d+|\d+", prediction)
    if m is None:
        return 0.0
    got = m.group(0).strip()
    try:
        if _INT.fullmatch(label.strip()):
            return 1.0 if int(got) == int(label) else 0.0  # int("2.5") raises upstream: 0 here
        return 1.0 if float(got) == float(label) else 0.0
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
