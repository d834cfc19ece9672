#!/usr/bin/env python
"""Check E4's scorers against the upstream suites' own code (not part of CI: it needs their
checkouts). Recomputes the ``expected`` value of every case in tests/fixtures/e4_parity/*.json
with the upstream scorer, and scores InfiniteBench's published predictions (results/*/preds_*.jsonl)
with both upstream's compute_scores and ours.

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
    bad = check_fixtures(lb, ib, ruler) + check_infinitebench_predictions(ib, infinitebench)
    print("parity: ok" if not bad else f"parity: {bad} difference(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
