"""`context-research recheck` re-judges saved results with today's checks and changes no number."""

import csv
import json
import shutil

from context_research.cli import main
from context_research.config import REPO_ROOT

H200 = REPO_ROOT / "docs" / "evidence" / "2026-11-23-h200" / "results"
TABLES = ("e1/latency.csv", "e2/concurrency.csv", "e3/mode_comparison.csv", "e5/memory.csv", "e6/stress.csv")
JUDGEMENTS = ("status", "reason", "integrity_note")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_the_h200_packet_as_first_committed_is_rejudged(tmp_path):
    """As first committed, the H200 packet said ok to an E6 TPOT below the engine's ITL and passed an
    E0 whose TTFT CV was over its criterion; today's checks say otherwise, and leave every measured
    cell alone."""
    root = tmp_path / "results"
    shutil.copytree(H200, root)
    # Restore the judgements as they were first committed (commit 422f3a1).
    e6 = _rows(root / "e6/stress.csv")
    e6[0].update(status="ok", reason="", integrity_note="")
    _write_rows(root / "e6/stress.csv", e6)
    summary = json.loads((root / "e0/summary.json").read_text())
    summary.update(passed=True, failed_because=[])
    (root / "e0/summary.json").write_text(json.dumps(summary))

    assert main(["recheck", str(root)]) == 0
    e6 = _rows(root / "e6/stress.csv")
    assert e6[0]["status"] == "implausible" and "below 0.8 x engine ITL" in e6[0]["reason"]
    summary = json.loads((root / "e0/summary.json").read_text())
    assert summary["passed"] is False and summary["failed_because"][0].startswith("TTFT CV")
    for table in TABLES:
        before, after = _rows(H200 / table), _rows(root / table)
        assert len(before) == len(after)
        for old, new in zip(before, after):
            assert {k: v for k, v in old.items() if k not in JUDGEMENTS} == \
                   {k: v for k, v in new.items() if k not in JUDGEMENTS}
    report = (root / "RECHECKED.md").read_text()
    assert "e6/stress.csv row 0: ok -> implausible" in report and "e0/summary.json: passed True -> False" in report


def test_the_committed_h200_packet_agrees_with_todays_checks(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(H200, root)
    main(["recheck", str(root)])
    sections = (root / "RECHECKED.md").read_text().split("## Re-judged at commit")
    assert len(sections) >= 3 and "- no judgement changed" in sections[-1]  # the committed history kept
    for table in TABLES:
        assert [r["status"] for r in _rows(H200 / table)] == [r["status"] for r in _rows(root / table)]


def test_recheck_applies_the_checks_each_declaration_names(tmp_path):
    """recheck receives the declarations: a row check declared on a toy copy of E5 is applied to
    E5's table, and an experiment that declares none is left alone."""
    import dataclasses

    from context_research.analysis.findings import Findings
    from context_research.experiments.catalog import get
    from context_research.recheck import recheck

    root = tmp_path / "results"
    shutil.copytree(H200, root)
    flag = dataclasses.replace(get("e5"), row_checks=(("memory", lambda row, gpu, cfg: Findings(["toy check"])),))
    before = _rows(root / "e6/stress.csv")
    changes = recheck(root, {"e5": flag, "e6": dataclasses.replace(get("e6"), row_checks=())})
    rows = _rows(root / "e5/memory.csv")
    ok_before = [r for r in _rows(H200 / "e5/memory.csv") if r["status"] == "ok"]
    assert ok_before and len(changes) == len(ok_before)
    assert all(r["status"] != "ok" for r in rows) and any("toy check" in r["reason"] for r in rows)
    assert _rows(root / "e6/stress.csv") == before


def test_a_row_implausible_before_keeps_its_flags_and_a_newly_implausible_one_gets_them(tmp_path):
    from context_research.analysis.findings import Findings
    import pandas as pd

    from context_research.recheck import recheck_table

    path = tmp_path / "t.csv"
    pd.DataFrame({"status": ["implausible", "ok"], "reason": ["client delivery: 3 of 5 streams arrived whole", ""],
                  "client_delivery_only": [True, False], "engine_timings_stand": [True, False],
                  "integrity_note": ["", ""]}).to_csv(path, index=False)
    # a table row alone cannot redo the record-level delivery check: the recheck finds only this
    found = lambda row, gpu, hf: Findings(reasons=["client TPOT 1 ms is below 0.8 x engine ITL 2 ms (row)"])
    recheck_table(path, found, None, None)
    out = pd.read_csv(path)
    assert list(out["status"]) == ["implausible", "implausible"]
    assert list(out["client_delivery_only"]) == [True, False] and list(out["engine_timings_stand"]) == [True, True]
