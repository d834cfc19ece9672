"""E4 scorers against the upstream suites: every case of tests/fixtures/e4_parity/*.json.

Each case's ``expected`` was obtained by running the upstream scorer named in its ``how`` on
the case's inputs; ``old`` is what E4 scored before issue #16. The cases go through
``score_sample``, so LongBench's first-line rule for trec/triviaqa/samsum/lsht applies."""

import json
from pathlib import Path

import pytest

from context_research.quality import scorers as S

PARITY_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "e4_parity"
TABLES = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(PARITY_DIR.glob("*.json"))}
CASES = [(name, i, case) for name, table in TABLES.items() for i, case in enumerate(table["cases"])]


def _ours(case: dict) -> float:
    kwargs = {"all_classes": case["all_classes"]} if "all_classes" in case else {}
    sample = {"benchmark": case["benchmark"], "task": case.get("task"), "metric": case["metric"],
              "outputs": case["references"], "metric_kwargs": kwargs}
    value, _ = S.score_sample(sample, case["prediction"])
    return value


@pytest.mark.parametrize("table,index,case", CASES, ids=[f"{t}-{i}-{c['metric']}" for t, i, c in CASES])
def test_matches_upstream(table, index, case):
    ours = _ours(case)
    if table == "ruler":
        # RULER reports round(score, 2) per task; a one-sample task is that rounding of the sample
        assert round(ours, 2) == pytest.approx(case["expected"], abs=1e-9), case["note"]
    else:
        assert ours == pytest.approx(case["expected"], abs=1e-9), case["note"]


def test_every_benchmark_has_cases_that_the_old_scorer_got_wrong():
    assert set(TABLES) == {"longbench", "infinitebench", "ruler"}
    for name, table in TABLES.items():
        assert any(c["disagrees_with_old"] for c in table["cases"]), name
        assert all(c.get("how") for c in table["cases"]), name


def test_every_registered_metric_has_parity_cases():
    covered = {c["metric"] for _, _, c in CASES}
    assert set(S.METRICS) <= covered, set(S.METRICS) - covered


def test_issue_16_examples():
    assert S.rouge_score("Profits ROSE 5% in 2023", ["profits rose 5 percent in 2023."]) == pytest.approx(4 / 11, abs=1e-7)
    assert S.rouge_score("the the the cat", ["the cat cat cat"]) == pytest.approx(1.0, abs=1e-7)


def test_fuzzywuzzy_runs_on_difflib_as_upstream():
    # python-Levenshtein, if installed, changes fuzz.ratio for some pairs (see docs/e4-parity.md)
    assert S.fuzz_backend() == "difflib"
