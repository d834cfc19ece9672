#!/usr/bin/env python
"""Check E4 against the upstream suites' own code and files (not part of CI: it needs their
checkouts). Recomputes the ``expected`` value of every case in tests/fixtures/e4_parity/*.json
with the upstream scorer; scores InfiniteBench's published predictions (results/*/preds_*.jsonl)
with both upstream's compute_scores and ours; compares our prompt templates and generation
lengths (data/upstream_prompts.json, datasets/ruler.py) with upstream's.

    git clone https://github.com/THUDM/LongBench        # 2e00731f8d0bff23dc4325161044d0ed8af94c1e
    git clone https://github.com/OpenBMB/InfiniteBench  # 88b3daa6989da2fbe0077170d7a3c84c25d5ae58
    git clone https://github.com/NVIDIA/RULER           # c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a
    python scripts/e4_parity_upstream.py LongBench InfiniteBench RULER

Upstream modules import packages their scorers do not need here (jieba, evaluate, tqdm, their
argument parser); those are stubbed. Exit status 1 on any difference.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from context_research.quality import scorers as S  # noqa: E402

LONGBENCH_FIRST_LINE = ("trec", "triviaqa", "samsum", "lsht")


def _stub_imports() -> None:
    sys.modules.setdefault("jieba", types.ModuleType("jieba"))
    evaluate = types.ModuleType("evaluate")
    evaluate.load = lambda *a, **k: None
    sys.modules.setdefault("evaluate", evaluate)
    args = types.ModuleType("args")
    args.parse_args = lambda: None
    sys.modules.setdefault("args", args)
    sys.modules.setdefault("tqdm", types.SimpleNamespace(tqdm=lambda x: x))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upstream_value(case: dict, lb, ib, ruler) -> float | None:
    """The case's score by the upstream code; None where upstream raises."""
    pred, refs = case["prediction"], case["references"]
    try:
        if case["benchmark"] == "longbench":
            if case.get("task") in LONGBENCH_FIRST_LINE:
                pred = pred.lstrip("\n").split("\n")[0]
            score = 0.0
            for ref in refs:  # eval.py's max over the answers
                score = max(score, getattr(lb, case["metric"])(pred, ref, all_classes=case.get("all_classes") or []))
            return float(score)
        if case["benchmark"] == "ruler":
            cleaned = re.compile(r"[\x00-\x1f]").sub("\n", pred.strip()).strip()  # evaluate.py postprocess_pred
            return float(getattr(ruler, case["metric"])([cleaned], [refs]))
        return float(ib.get_score_one(pred, case["upstream_label"], case.get("task") or case["metric"], "e4"))
    except Exception:  # noqa: BLE001 - an upstream crash is a documented difference
        return None


def check_fixtures(lb, ib, ruler) -> int:
    bad = checked = 0
    for path in sorted((REPO / "tests" / "fixtures" / "e4_parity").glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
            up = upstream_value(case, lb, ib, ruler)
            checked += 1
            if up is None and case.get("upstream_raises"):
                continue
            if up is None or abs(up - case["expected"]) > 1e-9:
                bad += 1
                print(f"{path.name}: {case['metric']} {case['prediction']!r}: upstream {up}, table {case['expected']}")
    print(f"parity table: {checked} cases, {bad} differ from upstream")
    return bad


def check_infinitebench_predictions(ib, root: Path) -> int:
    bad = checked = 0
    for path in sorted(root.glob("results/*/preds_*.jsonl")):
        task = path.stem.removeprefix("preds_")
        if task not in S.METRICS:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            pred, label = row.get("prediction", row.get("pred")), row.get("ground_truth", row.get("label"))
            refs = [str(x) for x in label] if isinstance(label, list) else [str(label)]
            try:
                up = float(ib.get_score_one(pred, label, task, path.parent.name))
            except Exception:  # noqa: BLE001
                up = None
            ours = S.score(task, pred, refs)
            checked += 1
            if up is None or abs(up - ours) > 1e-9:
                bad += 1
                print(f"{path.relative_to(root)}: {pred[:60]!r}: upstream {up}, ours {ours}")
    print(f"InfiniteBench published predictions: {checked} scored, {bad} differ from compute_scores")
    return bad


def check_prompts(longbench: Path, infinitebench: Path, ruler_repo: Path) -> int:
    from context_research.datasets import ruler as R
    from context_research.datasets import templates as T

    bad = []
    lb_prompts = json.loads((longbench / "LongBench" / "config" / "dataset2prompt.json").read_text(encoding="utf-8"))
    lb_maxlen = json.loads((longbench / "LongBench" / "config" / "dataset2maxlen.json").read_text(encoding="utf-8"))
    for task, spec in T.LONGBENCH_TASKS.items():
        if spec.template != lb_prompts[task] or spec.max_new_tokens != lb_maxlen[task]:
            bad.append(f"longbench {task}")
    sys.path.insert(0, str(infinitebench / "src"))
    sys.modules.setdefault("rouge", types.SimpleNamespace(Rouge=object))
    ib_utils = _load("ib_eval_utils", infinitebench / "src" / "eval_utils.py")
    ib_prompt = sys.modules["prompt"]
    for task, spec in T.INFINITEBENCH_TASKS.items():
        if spec.template != ib_prompt.gpt4_templates[task] or \
                spec.max_new_tokens != ib_utils.DATA_NAME_TO_MAX_NEW_TOKENS[task]:
            bad.append(f"infinitebench {task}")
    tasks = _load("ruler_data_constants", ruler_repo / "scripts" / "data" / "synthetic" / "constants.py").TASKS
    words = lambda text: len(text.split())  # noqa: E731

    def split(template: str, **fields) -> tuple[str, str]:
        head, tail = template.format(context="\x00", **fields).split("\x00")
        return head, tail

    niah = R.generate("niah_single_1", 1, 600, words, seed=0)[0]
    query = niah["answer_prefix"].split(" for ")[1].split(" mentioned")[0]
    vt = R.generate("vt", 1, 600, words, seed=0)[0]
    value = vt["input"].rsplit("assigned the value ", 1)[1].split(" ")[0]
    expect = {
        "niah": (niah, split(tasks["niah"]["template"], type_needle_v="numbers", query=query),
                 tasks["niah"]["answer_prefix"].format(type_needle_v="numbers", query=query)),
        "variable_tracking": (vt, split(tasks["variable_tracking"]["template"], query=value),
                              tasks["variable_tracking"]["answer_prefix"].format(num_v=len(vt["outputs"]), query=value)),
        "common_words_extraction": (R.generate("cwe", 1, 3000, words, seed=0)[0],
                                    split(tasks["common_words_extraction"]["template"]),
                                    tasks["common_words_extraction"]["answer_prefix"]),
        "freq_words_extraction": (R.generate("fwe", 1, 800, words, seed=0)[0],
                                  split(tasks["freq_words_extraction"]["template"]),
                                  tasks["freq_words_extraction"]["answer_prefix"]),
    }
    for name, (sample, (head, tail), prefix) in expect.items():
        if not (sample["input"].startswith(head) and sample["input"].endswith(tail) and sample["answer_prefix"] == prefix):
            bad.append(f"ruler {name}")
    for item in bad:
        print(f"prompt differs from upstream: {item}")
    print(f"prompts: {len(T.LONGBENCH_TASKS)} LongBench, {len(T.INFINITEBENCH_TASKS)} InfiniteBench templates and "
          f"{len(expect)} RULER templates compared, {len(bad)} differ")
    return len(bad)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__)
        return 2
    longbench, infinitebench, ruler_repo = (Path(a) for a in argv)
    warnings.simplefilter("ignore")
    _stub_imports()
    lb = _load("lb_metrics", longbench / "LongBench" / "metrics.py")
    ib = _load("ib_compute_scores", infinitebench / "src" / "compute_scores.py")
    ruler = _load("ruler_constants", ruler_repo / "scripts" / "eval" / "synthetic" / "constants.py")
    bad = (check_fixtures(lb, ib, ruler) + check_infinitebench_predictions(ib, infinitebench)
           + check_prompts(longbench, infinitebench, ruler_repo))
    print("parity: ok" if not bad else f"parity: {bad} difference(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
