"""``context-research compare A B``: the bootstrap of the difference of medians, Holm, the verdict
rules, the between-start noise, the refusals, and the report written from two synthetic result folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from context_research import cli
from context_research.analysis import compare as compare_module
from context_research.analysis.compare import COMPARE_COLUMNS, Options
from context_research.analysis.compare_stats import DeltaTest, between_run_sds, bootstrap_median_delta, holm, verdict
from context_research.compare_report import compare_runs as write_compared, write_index
from context_research.errors import ContextResearchError
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.declaration import comparison_layouts

# What the CLI hands compare: the catalog's declared layouts.
LAYOUTS = comparison_layouts(EXPERIMENTS)


def compare(a, b, options=None):
    return compare_module.compare(a, b, options, layouts=LAYOUTS)


def compare_runs(a, b, out, **options):
    return write_compared(a, b, out, LAYOUTS, **options)


def start_sds(records):
    return compare_module.start_sds(records, LAYOUTS["e0"])

LENGTHS = (1024, 4096)


# -- synthetic result folders ---------------------------------------------------------------------

def _metadata(experiment: str, *, backend_mode="real", hardware="1x NVIDIA H200", gpu="NVIDIA H200",
              model_id="Qwen/Qwen3-8B", weights="real", kv_cache_dtype="auto") -> dict:
    return {"experiment": experiment, "run_id": f"20261129T120000Z-{experiment}", "config_hash": "x" * 64,
            "backend_mode": backend_mode, "hardware_label": hardware, "model_id": model_id, "weights": weights,
            "engine_distribution": "vllm==0.32.0", "git": {"commit": "abc"},
            "hash_inputs": {"experiment": experiment, "gpu": gpu, "serving": {"kv_cache_dtype": kv_cache_dtype},
                            "model_files": {"source": model_id}}}


def e0_records(start_factors, n=20, seed=0, first_start_phase="repeat") -> pd.DataFrame:
    """E0's requests.csv: per engine start, ``n`` repeat requests whose TTFT / TPOT are 50 ms /
    5 ms times that start's factor (1 % spread), plus a warm-up per start (left out)."""
    rng = np.random.default_rng(seed)
    rows = []
    for start, factor in enumerate(start_factors):
        prefix = "" if start == 0 else f"start{start}-"
        rows.append({"phase": f"{prefix}warmup" if start else "warmup", "ttft_s": 9.0, "tpot_s": 9.0, "e2e_s": 9.0,
                     "ok": True})
        for i in range(n):
            ttft = 0.05 * factor * (1 + 0.01 * rng.standard_normal())
            tpot = 0.005 * factor * (1 + 0.01 * rng.standard_normal())
            rows.append({"phase": f"{prefix}{first_start_phase}-{i % 5}", "ttft_s": ttft, "tpot_s": tpot,
                         "e2e_s": ttft + 31 * tpot, "engine_ttft_ms": ttft * 900, "engine_itl_ms": tpot * 1000,
                         "ok": True})
    return pd.DataFrame(rows)


def write_run(root: Path, *, ttft_ms=(100.0, 400.0), n=30, seed=0, statuses=("ok", "ok"), e0_starts=None,
              **meta) -> Path:
    """``root/e1`` with requests.csv (n measured requests per length, TTFT around ``ttft_ms``, 3 %
    spread), latency.csv (the points' status) and run_metadata.json; ``e0_starts``: an ``e0``
    whose engine starts measured that many times the base latencies (``e0_records``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for length, centre in zip(LENGTHS, ttft_ms):
        rows.append({"phase": "warmup", "prompt_tokens_point": length, "ttft_s": 99.0, "tpot_s": 99.0, "e2e_s": 99.0,
                     "ok": True, "backend_mode": meta.get("backend_mode", "real")})
        for i in range(n):
            ttft = centre * (1 + 0.03 * rng.standard_normal()) / 1000
            tpot = 0.005 * (1 + 0.03 * rng.standard_normal())
            rows.append({"phase": "measured", "prompt_tokens_point": length, "request_id": f"len{length}-{i}",
                         "ttft_s": ttft, "tpot_s": tpot, "e2e_s": ttft + 15 * tpot,
                         "engine_ttft_ms": ttft * 900, "engine_itl_ms": tpot * 1000, "ok": True,
                         "backend_mode": meta.get("backend_mode", "real")})
    folder = root / "e1"
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "requests.csv", index=False)
    pd.DataFrame({"prompt_tokens": list(LENGTHS), "status": list(statuses),
                  "reason": ["" if s == "ok" else "server error" for s in statuses]}).to_csv(
        folder / "latency.csv", index=False)
    (folder / "run_metadata.json").write_text(json.dumps(_metadata("e1", **meta)))
    if e0_starts is not None:
        e0 = root / "e0"
        e0.mkdir()
        (e0 / "run_metadata.json").write_text(json.dumps(_metadata("e0", **meta)))
        e0_records(e0_starts, seed=seed).to_csv(e0 / "requests.csv", index=False)
    return root


def _row(comp, metric="ttft_ms", length=4096) -> pd.Series:
    t = comp.table
    return t[(t["experiment"] == "e1") & (t["metric"] == metric)
             & (t["point"] == f"prompt_tokens_point={length}")].iloc[0]


# -- the bootstrap and the verdict rules ----------------------------------------------------------

def test_a_clear_shift_has_a_ci_excluding_zero_and_is_called_worse_or_better():
    rng = np.random.default_rng(1)
    a, b = 100 + 5 * rng.standard_normal(40), 130 + 5 * rng.standard_normal(40)
    slower = bootstrap_median_delta(a, b, resamples=2000, seed=0)
    assert slower.delta == pytest.approx(np.median(b) - np.median(a))
    assert 25 < slower.delta < 35 and slower.ci_low > 0 and slower.ci_low < slower.delta < slower.ci_high
    assert slower.p_value < 1e-6 and slower.df == pytest.approx(78)  # request-level only: n_a + n_b - 2
    assert verdict(slower, slower.p_value, alpha=0.05, min_effect=0.05) == "worse"
    faster = bootstrap_median_delta(b, a, resamples=2000, seed=0)
    assert faster.ci_high < 0
    assert verdict(faster, faster.p_value, alpha=0.05, min_effect=0.05) == "better"


def test_identical_samples_give_no_change_and_p_one():
    x = np.random.default_rng(2).normal(100, 5, 40)
    same = bootstrap_median_delta(x, x.copy(), resamples=1000, seed=0)
    assert same.delta == 0 and same.relative_delta == 0
    assert same.ci_low < 0 < same.ci_high
    assert same.p_value > 0.9  # half the resamples on either side of zero
    assert verdict(same, same.p_value, alpha=0.05, min_effect=0.05) == "no significant change"


def test_the_bootstrap_is_seeded_its_result_depends_only_on_data_and_seed():
    rng = np.random.default_rng(3)
    a, b = rng.normal(10, 1, 25), rng.normal(10.5, 1, 25)
    assert bootstrap_median_delta(a, b, resamples=500, seed=7) == bootstrap_median_delta(a, b, resamples=500, seed=7)
    assert bootstrap_median_delta(a, b, resamples=500, seed=7) != bootstrap_median_delta(a, b, resamples=500, seed=8)


def test_holm_on_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept at 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_a_change_counts_only_with_ci_holm_and_effect_all_three():
    test = DeltaTest(a=100, b=103, delta=3, relative_delta=0.03, ci_low=1, ci_high=5, p_value=0.001)
    assert verdict(test, 0.001, alpha=0.05, min_effect=0.05) == "no significant change"  # 3 % < 5 % floor
    assert verdict(test, 0.001, alpha=0.05, min_effect=0.02) == "worse"
    assert verdict(test, 0.2, alpha=0.05, min_effect=0.02) == "no significant change"  # Holm does not reject
    wide = DeltaTest(a=100, b=110, delta=10, relative_delta=0.1, ci_low=-1, ci_high=20, p_value=0.001)
    assert verdict(wide, 0.001, alpha=0.05, min_effect=0.02) == "no significant change"  # CI holds zero
    # a metric where more is better (a larger KV pool): an increase is better
    assert verdict(test, 0.001, alpha=0.05, min_effect=0.02, lower_is_better=False) == "better"


def test_mde_pct_is_the_change_detected_with_80_percent_power_at_holms_strictest_threshold():
    from scipy import stats as st

    from context_research.analysis.compare_stats import mde_pct

    # se 0.1 on the log scale, many degrees of freedom, 10 tests: (z(1 - 0.05 / 20) + z(0.8)) x 0.1
    expected = 100 * math.expm1((st.norm.ppf(1 - 0.05 / 20) + st.norm.ppf(0.8)) * 0.1)
    assert mde_pct(0.1, 1e9, 10, 0.05, 0.0) == pytest.approx(expected, rel=1e-4) and 43 < expected < 45
    # a min effect above the critical value is where the verdict starts; power adds on top of it
    assert mde_pct(0.1, 1e9, 10, 0.05, 0.5) == pytest.approx(100 * math.expm1(math.log(1.5) + 0.0842), rel=1e-3)
    # few degrees of freedom: a wide t quantile (two runs per side: 2)
    assert mde_pct(0.1, 2, 10, 0.05, 0.0) > 3 * mde_pct(0.1, 1e9, 10, 0.05, 0.0)
    assert mde_pct(float("nan"), 5, 10, 0.05, 0.0) is None


def test_between_start_noise_widens_the_ci_around_the_same_difference():
    rng = np.random.default_rng(3)
    a, b = 100 + 2 * rng.standard_normal(40), 110 + 2 * rng.standard_normal(40)
    tight = bootstrap_median_delta(a, b, resamples=4000, seed=0)
    wide = bootstrap_median_delta(a, b, resamples=4000, seed=0, start_sd=0.2)
    assert wide.delta == tight.delta  # the point estimate is the observed difference
    assert tight.ci_low > 0 and wide.ci_low < 0 < wide.ci_high
    assert (wide.ci_high - wide.ci_low) > 5 * (tight.ci_high - tight.ci_low) and wide.p_value > 0.05


def test_an_aa_pair_of_engine_starts_stays_inside_the_between_start_noise():
    # Simulated A/A pairs: each run's medians are shifted by its own engine start's factor
    # (log SD 0.15), requests add 3 % spread. With the start SD in the bootstrap, a 95 % CI holds
    # zero in about 95 % of pairs; without it, far fewer.
    rng = np.random.default_rng(7)
    covered_with, covered_without, pairs = 0, 0, 200
    for k in range(pairs):
        fa, fb = np.exp(rng.normal(0, 0.15, 2))
        a = 100 * fa * (1 + 0.03 * rng.standard_normal(20))
        b = 100 * fb * (1 + 0.03 * rng.standard_normal(20))
        with_sd = bootstrap_median_delta(a, b, resamples=1000, seed=k, start_sd=0.15)
        without = bootstrap_median_delta(a, b, resamples=1000, seed=k)
        covered_with += with_sd.ci_low <= 0 <= with_sd.ci_high
        covered_without += without.ci_low <= 0 <= without.ci_high
    assert covered_with / pairs >= 0.9 and covered_without / pairs < 0.5


def test_start_sds_are_sds_of_log_per_start_medians_and_decode_pace_is_pooled():
    sds, starts = start_sds(e0_records((1.0, 1.2, 0.9)))
    assert starts == 3
    expected = float(np.std(np.log([1.0, 1.2, 0.9]), ddof=1))
    assert sds["ttft_ms"] == pytest.approx(expected, rel=0.05)
    assert sds["engine_ttft_ms"] == pytest.approx(expected, rel=0.05)
    assert set(sds) == {"ttft_ms", "tpot_ms", "e2e_ms", "engine_ttft_ms", "engine_itl_ms"}
    # decode pace: engine ITL steady across starts, client TPOT not: each at least the pooled SD
    frame = e0_records((1.0, 1.0, 1.0))
    later = frame["phase"].str.startswith("start1-repeat")
    frame.loc[later, "tpot_s"] *= 1.5
    sds, _ = start_sds(frame)
    # engine ITL's own SD is ~0.01 (1 % spread); it is raised to the pooled SD, below TPOT's own
    assert 0.1 < sds["engine_itl_ms"] < sds["tpot_ms"]
    # one engine start: no between-start SD
    assert start_sds(e0_records((1.0,)))[0] == {}


# -- comparisons of result folders -----------------------------------------------------------------

def test_a_30_percent_slower_point_is_worse_and_an_unchanged_point_is_not(tmp_path):
    a = write_run(tmp_path / "a", ttft_ms=(100, 400), seed=1)
    b = write_run(tmp_path / "b", ttft_ms=(100, 520), seed=2)
    comp = compare(a, b, Options(seed=0))
    slow = _row(comp, "ttft_ms", 4096)
    assert slow["verdict"] == "worse" and slow["ci_low"] > 0 and slow["p_holm"] <= 0.05
    assert slow["relative_delta"] == pytest.approx(0.3, abs=0.05) and slow["n_a"] == slow["n_b"] == 30
    assert _row(comp, "ttft_ms", 1024)["verdict"] == "no significant change"
    assert _row(comp, "tpot_ms", 4096)["verdict"] == "no significant change"
    # warm-ups (TTFT 99 s) are left out
    assert slow["a"] < 1000
    # every test of the comparison is in Holm's family; the report says how many
    assert comp.tests == len(comp.table[comp.table["p_value"].notna()]) == 10


def test_an_aa_comparison_calls_nothing_a_change(tmp_path):
    comp = compare(write_run(tmp_path / "a", seed=1), write_run(tmp_path / "b", seed=2))
    assert set(comp.table["verdict"]) == {"no significant change"}


def test_a_shift_inside_e0_between_start_noise_is_no_change_and_the_source_is_named(tmp_path):
    # E0's starts differ by ~30 % (log SD ~0.3): a 30 % shift at one point is inside that noise.
    a = write_run(tmp_path / "a", ttft_ms=(100, 400), seed=1, e0_starts=(1.0, 1.35, 0.8))
    b = write_run(tmp_path / "b", ttft_ms=(100, 520), seed=2, e0_starts=(1.0, 1.02, 0.99))
    comp = compare(a, b)
    row = _row(comp, "ttft_ms", 4096)
    assert row["start_sd"] == pytest.approx(np.std(np.log([1.0, 1.35, 0.8]), ddof=1), rel=0.05)  # A's, the larger
    assert row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == "no significant change"
    assert "between-run SD" in row["note"] and "3 engine starts" in comp.noise.source
    without = compare(a, b, Options(use_e0_start_noise=False))
    assert _row(without, "ttft_ms", 4096)["verdict"] == "worse"
    assert "not included" in without.noise.source


def test_compare_uses_the_layouts_it_is_handed(tmp_path):
    """The layouts are the declarations', passed in: an experiment without one, or with a stated
    reason, is listed as not compared; another layout changes what is compared."""
    from context_research.analysis.compare_layout import CLIENT_METRICS, Layout, NotCompared, not_warmup

    a, b = write_run(tmp_path / "a", seed=1, e0_starts=(1.0, 1.3)), write_run(tmp_path / "b", seed=2, e0_starts=(1.0, 1.3))
    ttft_only = Layout("requests.csv", ("prompt_tokens_point",), CLIENT_METRICS[:1], keep=not_warmup("phase"))
    comp = compare_module.compare(a, b, layouts={"e1": ttft_only, "e0": NotCompared("a toy reason")})
    assert set(comp.table["metric"]) == {"ttft_ms"} and set(comp.table["experiment"]) == {"e1"}
    assert comp.not_compared_experiments == {"e0": "a toy reason"}
    assert "neither run" in comp.noise.source  # E0 declared not compared: no between-start noise from it
    with pytest.raises(ContextResearchError, match="share no comparable experiment"):
        compare_module.compare(a, b, layouts={})


def test_one_runs_e0_serves_both_and_the_report_says_so(tmp_path):
    a = write_run(tmp_path / "a", ttft_ms=(100, 400), seed=1, e0_starts=(1.0, 1.01, 0.99))
    b = write_run(tmp_path / "b", ttft_ms=(100, 520), seed=2)
    comp = compare(a, b)
    assert "only run A has one" in comp.noise.source
    assert _row(comp, "ttft_ms", 4096)["verdict"] == "worse"  # a 30 % shift outside a 1 % start noise
    assert "neither run" in compare(write_run(tmp_path / "c", seed=3), b).noise.source


def test_too_few_requests_are_not_enough_samples(tmp_path):
    comp = compare(write_run(tmp_path / "a", n=2, seed=1), write_run(tmp_path / "b", n=2, seed=2))
    row = _row(comp)
    assert row["verdict"] == "not enough samples" and pd.isna(row["ci_low"]) and pd.isna(row["p_value"])
    assert comp.tests == 0


def test_a_point_not_ok_in_either_run_is_not_compared_with_its_reason(tmp_path):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2, statuses=("ok", "failed"))
    comp = compare(a, b)
    row = _row(comp, "ttft_ms", 4096)
    assert row["verdict"] == "not compared"
    assert row["note"] == "not compared: status failed in B (server error)"
    assert _row(comp, "ttft_ms", 1024)["verdict"] == "no significant change"


def _mark(root: Path, length: int, reason: str, flag: bool | None) -> None:
    """Make ``length``'s point implausible in ``root``'s latency.csv with ``reason``; ``flag``: its
    engine_timings_stand cell (None: a table from before the column, read from the reason)."""
    path = root / "e1" / "latency.csv"
    table = pd.read_csv(path, keep_default_na=False)
    table.loc[table["prompt_tokens"] == length, ["status", "reason"]] = ["implausible", reason]
    if flag is not None:
        table["engine_timings_stand"] = [flag if n == length else False for n in table["prompt_tokens"]]
    table.to_csv(path, index=False)


DELIVERY = "client delivery: client TTFT 72.1 ms exceeds engine queue + TTFT 9.5 ms by 62.6 ms"


TPOT_BELOW = "client TPOT 1.73 ms is below 0.8 x engine ITL 2.33 ms (request len512-44): bunched"
FLOOR = "TTFT 0.1 ms is below the physical floor 2.0 ms"


@pytest.mark.parametrize("reason, flag", [(DELIVERY, True), (DELIVERY, None), (TPOT_BELOW, True),
                                          (TPOT_BELOW, None), (TPOT_BELOW + "; " + DELIVERY, None)])
def test_a_point_whose_findings_are_all_the_clients_compares_the_engines_timings(tmp_path, reason, flag):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2, ttft_ms=(100.0, 520.0))  # 30 % slower at 4K
    _mark(b, 4096, reason, flag)
    comp = compare(a, b)
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):  # the client's timings are in doubt: refused
        row = _row(comp, metric, 4096)
        assert row["verdict"] == "not compared" and row["note"].startswith("not compared: status implausible in B")
    assert _row(comp, "engine_ttft_ms", 4096)["verdict"] == "worse"  # the engine's own timings stand
    assert _row(comp, "engine_itl_ms", 4096)["verdict"] == "no significant change"


@pytest.mark.parametrize("reason, flag", [(FLOOR, False), (DELIVERY + "; " + FLOOR, False), (FLOOR, None),
                                          (DELIVERY + "; " + FLOOR, None), (TPOT_BELOW + "; " + FLOOR, None)])
def test_any_other_finding_keeps_the_engines_timings_out_too(tmp_path, reason, flag):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2)
    _mark(b, 4096, reason, flag)
    comp = compare(a, b)
    for metric in ("ttft_ms", "engine_ttft_ms", "engine_itl_ms"):
        assert _row(comp, metric, 4096)["verdict"] == "not compared", metric
    assert _row(comp, "engine_ttft_ms", 1024)["verdict"] == "no significant change"


def test_single_experiment_folders_compare_too(tmp_path):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2)
    comp = compare(a / "e1", b / "e1")
    assert set(comp.table["experiment"]) == {"e1"}


# -- refusals --------------------------------------------------------------------------------------

def test_simulated_rows_are_never_compared_with_real_ones(tmp_path):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2, backend_mode="simulated")
    for allow in (False, True):
        with pytest.raises(ContextResearchError, match=r"backend_mode real in A vs simulated in B"):
            compare(a, b, Options(allow_different_hardware=allow))


def test_a_different_gpu_or_model_is_refused_unless_allowed_and_then_named(tmp_path):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2, hardware="1x NVIDIA A100", gpu="NVIDIA A100")
    with pytest.raises(ContextResearchError, match=r"hardware .*H200.* in A vs .*A100.* in B.*--allow-different"):
        compare(a, b)
    comp = compare(a, b, Options(allow_different_hardware=True))
    assert any("A100" in d for d in comp.allowed_differences)
    assert "gpu: NVIDIA H200 -> NVIDIA A100" in comp.provenance["e1"]["lines"]
    c = write_run(tmp_path / "c", seed=3, model_id="Qwen/Qwen3-32B")
    with pytest.raises(ContextResearchError, match=r"model_id 'Qwen/Qwen3-8B' in A vs 'Qwen/Qwen3-32B' in B"):
        compare(a, c)


def test_the_provenance_diff_names_what_the_variants_changed(tmp_path):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2, kv_cache_dtype="fp8")
    diff = compare(a, b).provenance["e1"]
    assert diff["lines"] == ["serving.kv_cache_dtype: auto -> fp8"] and "hash_inputs" in diff["source"]


def test_folders_without_results_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ContextResearchError, match="holds no experiment results"):
        compare(tmp_path / "empty", write_run(tmp_path / "b"))


# -- the command and its report --------------------------------------------------------------------

def test_the_cli_writes_csv_markdown_and_html_with_the_declared_columns(tmp_path, capsys):
    a = write_run(tmp_path / "results", ttft_ms=(100, 400), seed=1)
    b = write_run(tmp_path / "results" / "variants" / "small_chunks", ttft_ms=(100, 520), seed=2)
    out = tmp_path / "reports" / "compare" / "small_chunks"
    assert cli.main(["compare", str(a), str(b), "--out", str(out), "--seed", "0", "--min-effect", "0.1"]) == 0
    for name in ("compare.csv", "compare.md", "compare.html", "e1.svg"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "compare.csv")
    assert list(table.columns) == list(COMPARE_COLUMNS)
    assert {"metric", "point", "delta", "ci_low", "ci_high", "verdict"} <= set(table.columns)
    worse = table[table["verdict"] == "worse"]
    assert list(zip(worse["metric"], worse["point"])) == [("ttft_ms", "prompt_tokens_point=4096"),
                                                           ("e2e_ms", "prompt_tokens_point=4096"),
                                                           ("engine_ttft_ms", "prompt_tokens_point=4096")]
    md = (out / "compare.md").read_text()
    assert "## Significant changes" in md and "Holm" in md and "resamples" in md and "seeded with 0" in md
    assert "10.0% (--min-effect)" in md and "![e1" in md
    html = (out / "compare.html").read_text()
    assert "<svg" in html and "worse" in html and "Provenance diff" in html
    # "no significant change" always says what the test could have seen
    unchanged = table[table["verdict"] == "no significant change"]
    assert not unchanged.empty and unchanged["mde_pct"].notna().all()
    mde = unchanged.iloc[0]["mde_pct"]
    assert f"no significant change (could detect ±{mde:.3g}%)" in md and "could detect ±" in html

    assert cli.main(["compare-index", str(out.parent)]) == 0
    index = (tmp_path / "reports" / "compare.html").read_text()
    assert 'href="compare/small_chunks/compare.html"' in index


def test_the_cli_exits_non_zero_naming_the_difference(tmp_path, capsys):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2, hardware="1x NVIDIA A100", gpu="NVIDIA A100")
    assert cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    assert "A100" in capsys.readouterr().err
    assert not (tmp_path / "out" / "compare.csv").exists()
    assert cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "out"), "--allow-different-hardware"]) == 0
    assert "Compared despite different hardware or model" in (tmp_path / "out" / "compare.md").read_text()


def test_compare_runs_is_the_function_the_workflow_calls(tmp_path):
    a, b = write_run(tmp_path / "a", seed=1), write_run(tmp_path / "b", seed=2)
    html = compare_runs(a, b, tmp_path / "cmp" / "aa", seed=1, min_effect=0.05)
    assert html == tmp_path / "cmp" / "aa" / "compare.html" and html.is_file()
    index = write_index(tmp_path / "cmp")
    assert index == tmp_path / "cmp.html" and "aa" in index.read_text()
    with pytest.raises(ContextResearchError, match="no comparison there"):
        write_index(tmp_path / "a")


def _write_e2(root: Path, shift: float, seed: int) -> Path:
    """``root/e2``: a concurrency point, a rate point (level written as 2.0 in the point table)
    and a trace point (no single prompt length: empty in both files)."""
    rng = np.random.default_rng(seed)
    points = [("concurrency", 4, 1024), ("rate", 2, 1024), ("trace", 1.5, None)]
    rows = [{"phase": "warmup", "mode": None, "level": None, "prompt_tokens_point": None, "ttft_s": 9.0, "ok": True}]
    for mode, level, length in points:
        for i in range(20):
            base = 0.2 if mode == "rate" else 0.1
            rows.append({"phase": "measured", "mode": mode, "level": level, "prompt_tokens_point": length,
                         "ttft_s": base * (1 + shift * (mode == "rate")) * (1 + 0.02 * rng.standard_normal()),
                         "ok": True})
    folder = root / "e2"
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "requests.csv", index=False)
    pd.DataFrame({"mode": [p[0] for p in points], "level": [float(p[1]) for p in points],
                  "prompt_tokens": [p[2] for p in points], "status": "ok", "reason": ""}).to_csv(
        folder / "concurrency.csv", index=False)
    (folder / "run_metadata.json").write_text(json.dumps(_metadata("e2")))
    return root


def test_e2_points_join_their_status_across_number_formats_and_a_trace_point(tmp_path):
    comp = compare(_write_e2(tmp_path / "a", 0.0, 1), _write_e2(tmp_path / "b", 0.5, 2))
    ttft = comp.table[comp.table["metric"] == "ttft_ms"].set_index("point")["verdict"].to_dict()
    assert ttft == {"mode=concurrency, level=4, prompt_tokens_point=1024": "no significant change",
                    "mode=rate, level=2, prompt_tokens_point=1024": "worse",
                    "mode=trace, level=1.5, prompt_tokens_point=": "no significant change"}


def test_a_metric_one_run_did_not_measure_says_so(tmp_path):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2)
    records = pd.read_csv(a / "e1" / "requests.csv").drop(columns=["engine_ttft_ms"])
    records.to_csv(a / "e1" / "requests.csv", index=False)
    row = _row(compare(a, b), "engine_ttft_ms")
    assert row["verdict"] == "not enough samples" and row["n_a"] == 0 and row["note"].startswith("not measured in A")


def test_a_figure_of_an_earlier_comparison_in_the_same_folder_is_removed(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "e3.svg").write_text("<svg/>")
    compare_runs(write_run(tmp_path / "a", seed=1), write_run(tmp_path / "b", seed=2), out)
    assert (out / "e1.svg").is_file() and not (out / "e3.svg").exists()


def test_e5_states_what_a_kv_format_changes_per_point(tmp_path):
    # E5 sends one request per point: the difference is stated without a CI, for the memory
    # figures a KV dtype changes (bytes per token, blocks at the same budget) as for latency.
    def e5(root, bytes_per_token, blocks):
        folder = root / "e5"
        folder.mkdir(parents=True)
        pd.DataFrame({"mode": ["aggregated"], "prompt_tokens_target": [32000], "status": ["ok"], "ttft_s": [1.2],
                      "e2e_s": [1.3], "kv_cache_allocated_gib": [109.5], "peak_activation_gib": [0.8],
                      "weights_gib": [15.3], "kv_bytes_per_token_engine": [bytes_per_token],
                      "num_kv_blocks": [blocks]}).to_csv(folder / "memory.csv", index=False)
        (folder / "run_metadata.json").write_text(json.dumps(_metadata("e5")))
        return root
    comp = compare(e5(tmp_path / "a", 147456.0, 49855), e5(tmp_path / "b", 73728.0, 99224))
    t = comp.table.set_index("metric")
    assert t.loc["kv_bytes_per_token_engine", "relative_delta"] == pytest.approx(-0.5)
    assert t.loc["num_kv_blocks", "relative_delta"] == pytest.approx(99224 / 49855 - 1)
    assert set(t["verdict"]) == {"not enough samples"} and comp.tests == 0
    assert "one request per point" in t.loc["num_kv_blocks", "note"]


# -- several runs per side --------------------------------------------------------------------------

def test_between_run_sds_pool_each_sides_spread_over_points():
    runs = {"p1": {"m": [[np.full(5, 10.0), np.full(5, 20.0)], [np.full(5, 10.0)]]},
            "p2": {"m": [[np.full(5, 1.0), np.full(5, 2.0)], [np.full(5, 3.0), np.full(5, 6.0)]]}}
    sd, df = between_run_sds(runs)["m"]
    # three sides with two runs each, every pair a factor 2 apart: SD of log = ln 2 / sqrt 2 (the
    # requests of a run are all alike: no request-level noise to take out). Its degrees of freedom
    # count runs, not points: a drift moves every point of a run together, so p1's side repeats
    # p2's evidence; the most any point has is p2's 1 + 1
    assert df == 2 and sd == pytest.approx(math.log(2) / math.sqrt(2))
    assert between_run_sds({"p": {"m": [[np.ones(3)], [np.ones(3)]]}}) == {}


def test_runs_minutes_apart_that_drift_are_no_change_with_two_runs_per_side(tmp_path):
    # Every run shifts all its latencies by its own factor (a host that drifts between runs), the
    # requests spread 3 %: one run per side calls the drift a change, two runs per side measure it.
    def run(name, factor, seed):
        return write_run(tmp_path / name, ttft_ms=(100 * factor, 400 * factor), seed=seed)
    a1, a2, b1, b2 = run("a1", 1.0, 1), run("a2", 1.4, 2), run("b1", 1.35, 3), run("b2", 0.95, 4)
    single = compare(a1, b1)
    assert (single.table["verdict"] == "worse").any()
    paired = compare(f"{a1},{a2}", [b1, b2])
    assert set(paired.table["verdict"]) == {"no significant change"}
    row = _row(paired, "ttft_ms", 4096)
    assert row["n_a"] == row["n_b"] == 60 and "the runs' own" in row["note"] and row["start_sd"] > 0.15
    assert [r.label for r in paired.runs_a] == ["A", "A2"] and len(paired.runs_b) == 2


def test_a_threefold_change_is_called_through_the_runs_spread_with_three_runs_per_side(tmp_path):
    # Runs drift by ~20 % (log SD ~0.18). Two runs per side give that SD 2 degrees of freedom: Holm's
    # threshold over 10 tests is t(2) = 14, and even a threefold change is inside what the test
    # can tell from drift (mde_pct says so). Three runs per side (4 degrees of freedom) call it.
    factors_a, factors_b = (1.0, 1.3, 1.1), (1.2, 0.9, 1.05)
    a = [write_run(tmp_path / f"a{k}", ttft_ms=(100 * f, 400 * f), seed=k) for k, f in enumerate(factors_a)]
    b = [write_run(tmp_path / f"b{k}", ttft_ms=(300 * f, 1200 * f), seed=10 + k) for k, f in enumerate(factors_b)]
    two = _row(compare(a[:2], b[:2]), "ttft_ms", 4096)
    assert two["verdict"] == "no significant change" and two["df"] < 5 and two["mde_pct"] > 200
    comp = compare(a, b)
    assert _row(comp, "ttft_ms", 4096)["verdict"] == "worse" and _row(comp, "ttft_ms", 1024)["verdict"] == "worse"
    assert _row(comp, "ttft_ms", 4096)["mde_pct"] < 200


def test_the_runs_of_one_side_must_share_the_hardware(tmp_path):
    a1 = write_run(tmp_path / "a1", seed=1)
    a2 = write_run(tmp_path / "a2", seed=2, gpu="NVIDIA H100", hardware="1x NVIDIA H100")
    with pytest.raises(ContextResearchError, match="hardware"):
        compare([a1, a2], write_run(tmp_path / "b", seed=3))
