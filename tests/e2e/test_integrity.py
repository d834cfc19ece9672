"""No row of the real-engine packet is silently ok: every ok latency row agrees with the engine's
own view within the stated tolerance (analysis.integrity), across every experiment."""

import pandas as pd
import pytest

from context_research.analysis import integrity

pytestmark = pytest.mark.e2e

POINT_TABLES = ("e1/latency.csv", "e2/concurrency.csv", "e3/mode_comparison.csv")
REQUEST_TABLES = ("e5/memory.csv", "e6/stress.csv")


def _ok(frame):
    return frame[frame["status"] == "ok"]


@pytest.mark.parametrize("table", POINT_TABLES + REQUEST_TABLES)
def test_every_row_was_checked(workflow_dir, table):
    frame = pd.read_csv(workflow_dir / "results" / table)
    assert frame[integrity.NOTE_COLUMN].notna().all(), f"{table}: a row went unchecked"
    assert set(frame["status"]) <= {"ok", "failed", "implausible", "unsupported"}


@pytest.mark.parametrize("table", POINT_TABLES)
def test_no_ok_point_row_has_client_tpot_below_the_engine_itl(workflow_dir, table):
    ok = _ok(pd.read_csv(workflow_dir / "results" / table))
    if "engine_itl_ms_mean" not in ok:
        pytest.skip(f"{table} has no engine ITL column")  # E3 rows carry the decode engine's TTFT only
    both = ok.dropna(subset=["tpot_ms_mean", "engine_itl_ms_mean"])
    assert len(both), f"{table}: no ok row carries both a client TPOT and the engine's ITL"
    ratio = both["tpot_ms_mean"] / both["engine_itl_ms_mean"]
    # the tolerance of requests served alone, and the looser one where they overlapped
    bound = [integrity.TPOT_UNDER_ITL_RATIO if integrity.one_at_a_time(r) else
             integrity.TPOT_UNDER_ITL_RATIO_UNDER_LOAD for _, r in both.iterrows()]
    assert (ratio >= bound).all(), both[["tpot_ms_mean", "engine_itl_ms_mean"]]


def test_no_ok_e6_row_has_client_tpot_below_the_engine_itl(workflow_dir):
    ok = _ok(pd.read_csv(workflow_dir / "results/e6/stress.csv")).dropna(subset=["tpot_s", "engine_itl_s"])
    assert len(ok), "no ok E6 row to check"
    assert (ok["tpot_s"] >= integrity.TPOT_UNDER_ITL_RATIO * ok["engine_itl_s"]).all()


def test_packet_lists_failed_and_implausible_rows(workflow_dir):
    html = (workflow_dir / "reports/packet.html").read_text()
    summary = html[html.index('id="summary"'):html.index("<nav>")]
    assert "failed rows" in summary and "implausible rows" in summary
    for table in POINT_TABLES:
        frame = pd.read_csv(workflow_dir / "results" / table)
        assert str(int((frame["status"] == "implausible").sum())) in summary


def test_no_interval_in_the_packet_has_zero_width(workflow_dir):
    """An interval that cannot vary is not an interval: every stated CI of every result table has
    its high end above its low end (a statistic without spread gets no interval, with a note)."""
    stated, flat = 0, []
    for path in sorted((workflow_dir / "results").rglob("*.csv")):
        frame = pd.read_csv(path, low_memory=False)
        for low in (c for c in frame.columns if c.endswith("_ci_low")):
            high = low.removesuffix("_ci_low") + "_ci_high"
            if high not in frame.columns:
                continue
            lo, hi = pd.to_numeric(frame[low], errors="coerce"), pd.to_numeric(frame[high], errors="coerce")
            both = lo.notna() & hi.notna()
            stated += int(both.sum())
            flat += [f"{path.name} row {i}: {low} = {lo[i]}, {high} = {hi[i]}" for i in frame.index[both & ~(hi > lo)]]
    assert stated > 0  # the packet states intervals at all
    assert not flat, flat
