"""Declared result-table columns: real runs' CSVs, the code's row builders and the glossary agree."""

import functools
import io
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest

from context_research import evidence, result_tables
from context_research.analysis.latency import LATENCY_COLUMNS
from context_research.analysis.memory import MEMORY_COLUMNS
from context_research.columns import (SOURCES, UNITS, Column, Table, UndeclaredColumnError, UnknownTableError,
                                      UnlabelledColumnError, find_table, write_table)
from context_research.disagg.broker import Handoff
from context_research.experiments.catalog import EXPERIMENTS, get
from context_research.records import RequestRecord
from context_research.workload.columns import engine_columns, request_rows, ttft_gap_columns

# Every table the experiments declare, by "<experiment>/<file>"; the CSVs among them are the files.
TABLES = result_tables.tables(EXPERIMENTS)
CSV_TABLES = {key: table for key, table in TABLES.items() if key.endswith(".csv")}


def table_for(experiment: str, filename: str) -> Table:
    return find_table(TABLES.values(), experiment, filename)

REPO = Path(__file__).resolve().parents[2]
EVIDENCE = REPO / "docs" / "evidence"
# Every CSV of the evidence folders, in the tree or packed in a folder's raw.tar.xz (requests.csv),
# as paths relative to docs/evidence. Comparisons (compare.csv) span two runs, not one experiment's
# table: their columns are checked against analysis.compare.COMPARE_COLUMNS below. Calibration tables
# (docs/evidence/<date>-cpu-calibration/) come from simulations, not a run: their columns are checked
# against result_tables.CALIBRATION_TABLES below.
ALL_CSVS = sorted(PurePosixPath(folder.name, rel) for folder in EVIDENCE.iterdir()
                  if folder.is_dir() and not folder.name.endswith("-calibration")
                  for rel in evidence.listed_files(folder) if rel.endswith(".csv"))
EVIDENCE_CSVS = [p for p in ALL_CSVS if p.name != "compare.csv"]
COMPARE_CSVS = [p for p in ALL_CSVS if p.name == "compare.csv"]
CALIBRATION_CSVS = sorted(EVIDENCE.glob("*-calibration/*.csv"))
STAMP = ["experiment", "run_id", "config_hash", "backend_mode", "weights", "model_id"]


@functools.lru_cache(maxsize=None)
def _archive(folder: str) -> dict[str, bytes]:
    return evidence.read_archive(EVIDENCE / folder)


def _open(path: PurePosixPath):
    """The CSV at ``path`` (relative to docs/evidence): the tree's file, else its packed copy."""
    if (EVIDENCE / path).exists():
        return EVIDENCE / path
    return io.BytesIO(_archive(path.parts[0])["/".join(path.parts[1:])])


def _experiment_of(path: PurePosixPath) -> str:
    """Every result CSV is stamped with its experiment; under results/<eN>/ the folder must agree."""
    frame = pd.read_csv(_open(path), nrows=1)
    assert "experiment" in frame.columns, f"{path}: no experiment column"
    experiment = str(frame["experiment"].iloc[0])
    if path.parent.parent.name == "results":
        assert path.parent.name == experiment, f"{path}: stamped {experiment!r}"
    return experiment


def test_evidence_has_result_csvs():
    assert any(p.parent.parent.name == "results" for p in EVIDENCE_CSVS), "no docs/evidence/*/results/*/*.csv"


@pytest.mark.parametrize("path", EVIDENCE_CSVS, ids=str)
def test_every_evidence_column_is_declared(path):
    table = table_for(_experiment_of(path), path.name)
    columns = list(pd.read_csv(_open(path), nrows=0).columns)
    assert table.undeclared(columns, allow_retired=True) == [], f"docs/evidence/{path}: undeclared columns"


@pytest.mark.parametrize("path", CALIBRATION_CSVS, ids=lambda p: str(p.relative_to(EVIDENCE)))
def test_every_calibration_table_is_declared(path):
    from context_research.result_tables import CALIBRATION_TABLES

    table = CALIBRATION_TABLES[f"calibration/{path.name}"]
    assert list(pd.read_csv(path, nrows=0).columns) == list(table.names)


@pytest.mark.parametrize("path", COMPARE_CSVS, ids=str)
def test_every_evidence_comparison_has_the_declared_columns(path):
    from context_research.analysis.compare import COMPARE_COLUMNS, COMPARE_COLUMNS_ADDED

    # a comparison written before mde_pct and df existed has every other column, in order
    columns = list(pd.read_csv(_open(path), nrows=0).columns)
    assert columns in (list(COMPARE_COLUMNS), [c for c in COMPARE_COLUMNS if c not in COMPARE_COLUMNS_ADDED])


def test_tables_cover_every_experiment_csv():
    assert sorted(CSV_TABLES) == ["e0/requests.csv", "e1/latency.csv", "e1/requests.csv", "e2/capacity.csv",
                                  "e2/concurrency.csv", "e2/requests.csv", "e3/mode_comparison.csv", "e3/requests.csv",
                                  "e3/transfers.csv", "e4/quality.csv", "e4/quality_by_length.csv", "e5/memory.csv",
                                  "e6/stress.csv"]
    for key, table in TABLES.items():
        assert table.file == key
        assert set(STAMP) <= set(table.names) or not key.endswith(".csv"), f"{key} lacks the run stamp"
        for c in table.columns:
            assert c.source in SOURCES and c.unit in UNITS and c.meaning.strip()


def test_each_experiment_declares_its_own_tables():
    """The declaration owns its tables: one per CSV it writes, each keyed under its name."""
    for name, exp in EXPERIMENTS.items():
        csvs = {f for f in exp.all_files.values() if f.endswith(".csv")}
        assert {t.file for t in exp.tables if t.file.endswith(".csv")} == {f"{name}/{f}" for f in csvs}
        for f in csvs:
            assert exp.table(f).file == f"{name}/{f}"


def test_glossary_file_is_current():
    text = (REPO / "docs" / "columns.md").read_text(encoding="utf-8")
    assert text == result_tables.glossary_markdown(EXPERIMENTS), \
        "docs/columns.md is stale: python -m context_research.result_tables > docs/columns.md"


def test_glossary_lists_every_column():
    text = result_tables.glossary_markdown(EXPERIMENTS)
    for key, table in TABLES.items():
        section = text.split(f"## {key}\n", 1)[1].split("\n## ", 1)[0]
        for c in table.columns:
            assert f"| `{c.name}` | {c.label} | {c.unit} | {c.source} |" in section


def test_unknown_table_names_the_declared_ones():
    with pytest.raises(UnknownTableError) as err:
        table_for("e9", "latency.csv")
    msg = str(err.value)
    assert "'e9/latency.csv'" in msg
    for key in TABLES:
        assert key in msg
    with pytest.raises(UnknownTableError, match="e1/requests.csv"):
        get("e1").table("summary.json")


def test_write_table_refuses_undeclared_and_writes_atomically(tmp_path):
    table = table_for("e1", "requests.csv")
    target = tmp_path / "e1" / "requests.csv"
    good = pd.DataFrame({"phase": ["measured"], "request_id": ["len16-0"], "ttft_s": [0.01], "experiment": ["e1"]})
    assert write_table(target, good, table) == target
    assert pd.read_csv(target).columns.tolist() == ["phase", "request_id", "ttft_s", "experiment"]
    before = target.read_bytes()
    bad = good.assign(ttft_ms=[10.0], surprise=[1])
    with pytest.raises(UndeclaredColumnError, match="ttft_ms, surprise"):
        write_table(target, bad, table)
    assert target.read_bytes() == before  # the refused frame left the file as it was
    assert sorted(p.name for p in target.parent.iterdir()) == ["requests.csv"]  # no temp file left behind


def test_column_and_table_declarations_are_checked():
    with pytest.raises(ValueError, match="source"):
        Column("x", "ms", "guess", "meaning")
    with pytest.raises(ValueError, match="unit"):
        Column("x", "furlongs", "client", "meaning")
    with pytest.raises(ValueError, match="one non-empty line"):
        Column("x", "ms", "client", "two\nlines")
    with pytest.raises(ValueError, match="declared twice"):
        Table("t.csv", (Column("x", "", "label", "a"), Column("x", "", "label", "b")))
    with pytest.raises(ValueError, match="label"):
        Column("x", "ms", "client", "meaning", "two\nlines")


def test_a_report_heads_a_column_with_its_declared_label_and_unit():
    table = Table("t.csv", (Column("ttft_ms_p50", "ms", "client", "median", "TTFT p50"),
                            Column("n_ok", "count", "client", "ok requests", "ok"),
                            Column("prompt_tokens", "tokens", "config", "prompt length", "prompt tokens"),
                            Column("score", "", "derived", "a score", "score"),
                            Column("bare", "ms", "client", "no label")))
    frame = pd.DataFrame({"score": [1.0], "ttft_ms_p50": [2.0], "n_ok": [3], "prompt_tokens": [4], "extra": [5]})
    shown = table.shown(frame, ["ttft_ms_p50", "n_ok", "prompt_tokens", "score", "missing"])
    # the unit in parentheses unless the label ends in it or it is a count, ratio or flag
    assert list(shown.columns) == ["TTFT p50 (ms)", "ok", "prompt tokens", "score"]
    assert shown.iloc[0].tolist() == [2.0, 3, 4, 1.0]
    with pytest.raises(UnlabelledColumnError, match="bare"):
        table.shown(pd.DataFrame({"bare": [1.0]}), ["bare"])
    with pytest.raises(KeyError, match="extra"):
        table.shown(frame, ["extra"])
    clash = Table("c.csv", (Column("a", "ms", "client", "a", "x"), Column("b", "ms", "client", "b", "x")))
    with pytest.raises(ValueError, match="share the header"):
        clash.shown(pd.DataFrame({"a": [1], "b": [2]}))


# Which declared table each report's column list heads (report module constant -> table key).
REPORT_TABLES = {"e1": {"TABLE_COLUMNS": "e1/latency.csv"}, "e2": {"TABLE_COLUMNS": "e2/concurrency.csv"},
                 "e3": {"TABLE_COLUMNS": "e3/mode_comparison.csv", "PATH_COLUMNS": "e3/mode_comparison.csv"},
                 "e4": {"TABLE_COLUMNS": "e4/quality.csv"}, "e5": {"TABLE_COLUMNS": "e5/memory.csv"},
                 "e6": {"TABLE_COLUMNS": "e6/stress.csv"}}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_column_a_report_shows_is_declared_with_a_label(name):
    """The reports' tables take their headers from the declarations: every column a report shows is
    declared with a label (its report's column lists, every column of a report-only table)."""
    report = get(name).report
    shown = [(key, getattr(report, constant)) for constant, key in REPORT_TABLES.get(name, {}).items()]
    shown += [(t.file, t.names) for t in get(name).tables if not t.file.endswith(".csv")]
    assert shown, f"{name}'s report shows no declared table"
    for key, names in shown:
        assert len(TABLES[key].headers(names)) == len(names), key


# -- the code's own row builders write only declared columns ---------------------------------------

def _rec(i=0, error=None):
    if error:
        return RequestRecord(request_id=f"r{i}", prompt_tokens_target=16, error=error)
    return RequestRecord(request_id=f"r{i}", prompt_tokens_target=16, prompt_tokens=16, output_tokens=4,
                         max_tokens=4, start_s=0.0, ttft_s=0.01, e2e_s=0.04, tpot_s=0.01, itl_s=[0.01] * 3)


def test_shared_groups_match_the_code():
    stamp_names = [c.name for c in result_tables.stamp_columns()]
    from context_research.experiments.runner import RunContext

    ctx = RunContext(experiment="e1", run_id="r", config_hash="h", backend_mode="real", weights="real",
                     model_id="m", outdir=Path("."), files={})
    assert stamp_names == list(ctx.stamp()) == STAMP
    assert [c.name for c in result_tables.latency_stat_columns()] == list(LATENCY_COLUMNS)
    assert [c.name for c in result_tables.engine_point_columns()] == list(engine_columns({}))
    assert [c.name for c in result_tables.ttft_gap_columns()] == list(ttft_gap_columns(None, None))
    record_names = [c.name for c in result_tables.request_record_columns()]
    assert record_names == list(_rec().as_row())
    assert [c.name for c in result_tables.request_record_columns(token_ids=True)] == record_names + ["token_ids"]


def _requests_rows(key):
    """The per-request rows each experiment builds (E3's as its request_rows does, module in motion)."""
    records = [_rec(0), _rec(1, error="boom")]
    if key == "e0/requests.csv":
        return [{"phase": "warmup", **records[0].as_row()}, {"phase": "identical", **_rec(2).as_row(keep_tokens=True)}]
    if key == "e1/requests.csv":
        return request_rows(records, phase="measured", prompt_tokens_point=16)
    if key == "e2/requests.csv":
        return request_rows(records, phase="measured", mode="rate", level=2.0, prompt_tokens_point=16)
    from context_research.disagg.plan import Point
    from context_research.disagg.rows import request_rows as e3_request_rows

    return e3_request_rows(records, "disaggregated", Point(0, 16, 1), "measured")


@pytest.mark.parametrize("key", ["e0/requests.csv", "e1/requests.csv", "e2/requests.csv", "e3/requests.csv"])
def test_request_rows_are_declared_in_order(key):
    columns = list(pd.DataFrame(_requests_rows(key)).columns)
    assert TABLES[key].names == columns + STAMP


def test_e1_and_e2_point_rows_are_declared():
    from context_research.experiments import e1, e2

    engine = {"engine_ttft_count": 2, "engine_ttft_mean_s": 0.009, "engine_ttft_p50_s": 0.009,
              "engine_prompt_tokens_by_source": {"local_compute": 32.0}, "engine_kv_cache_usage_peak": 0.1}
    e1_rows = [e1.point_row(16, 4, [_rec(0), _rec(1)], engine, None, None, False),
               e1.failed_point_row(4096, 4, "too long", False)]
    assert TABLES["e1/latency.csv"].undeclared(pd.DataFrame(e1_rows).columns) == []
    cfg = {"ttft_slo_ms": 100, "tpot_slo_ms": 10, "prompt_tokens": 16, "max_tokens": 4}
    e2_rows = [e2.point_row("rate", 2.0, [_rec(0), _rec(1, error="x")], 1.0, engine, 100, 10, 16, 4, False),
               e2.failed_point_row("concurrency", 4, "too long", cfg, False)]
    assert TABLES["e2/concurrency.csv"].undeclared(pd.DataFrame(e2_rows).columns) == []


def test_transfer_rows_are_declared():
    row = Handoff("handoff-00000", "r0", 17, "ExampleConnector", producer_e2e_s=0.2, baseline_prefill_s=0.1,
                  consumer_ttft_s=0.05, consumer_e2e_s=0.5, bytes_moved=100, analytical_bytes=100).as_row()
    assert TABLES["e3/transfers.csv"].names == list(row) + STAMP


def test_memory_components_are_declared():
    assert set(MEMORY_COLUMNS) <= set(TABLES["e5/memory.csv"].names)


def test_code_column_orders_come_from_the_declarations():
    """Where the code fixes a table's column order, it takes it from the declaration."""
    from context_research.disagg.rows import POINT_COLUMNS
    from context_research.quality.verdicts import QUALITY_COLUMNS

    assert POINT_COLUMNS + STAMP == TABLES["e3/mode_comparison.csv"].names
    assert QUALITY_COLUMNS + STAMP == TABLES["e4/quality.csv"].names
