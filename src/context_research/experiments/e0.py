"""E0: smoke and reproducibility.

* N identical greedy requests must return identical tokens.
* Repeated short runs give the coefficient of variation of mean TTFT and TPOT across runs,
  judged against the exit criterion (default CV <= 5%), within one engine start and across
  ``engine_starts`` starts serving the same requests; ``passed`` needs all of them.
* Strict-backend checks: which engine answered, and that it was not the simulated one.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.compare_layout import CLIENT_METRICS, ENGINE_METRICS, Layout
from ..analysis.integrity import check_records
from ..analysis.stats import (coefficient_of_variation, interval_part, mean, ms, small_sample_note, small_sample_part,
                              summarize_with_ci)
from ..backends.client import auth_headers
from ..columns import Column, Table
from ..backends.session import EngineSession
from ..errors import EngineDiedError
from ..hashing import sha256_obj
from ..io import read_json, write_json
from ..metadata import engine_distribution
from ..prompts import token_id_prompt
from ..records import GenerationRequest, RequestRecord, read_whole
from ..result_tables import request_record_columns, stamp_columns
from ..warmup import WarmupRule, warm_session
from ..workload.checks import prompt_length_mismatches
from .declaration import SEVERAL_ENGINES, Experiment, Figure
from .runner import ExperimentRun


def _requests(prefix: str, n: int, prompt: list[int], cfg: dict, seed: int,
              return_token_ids: bool = False) -> list[GenerationRequest]:
    return [GenerationRequest(request_id=f"{prefix}-{i}", prompt=list(prompt), max_tokens=cfg["max_tokens"],
                              prompt_tokens_target=len(prompt), temperature=0.0, seed=seed,
                              return_token_ids=return_token_ids)
            for i in range(n)]


def server_version(session: EngineSession) -> str | None:
    base = getattr(session.backend, "base_url", None)
    if base is None:
        return None
    # /version is open in vLLM; the key (serving.allow_remote) goes along in case a version guards it
    request = urllib.request.Request(base + "/version", headers=auth_headers(getattr(session.backend, "api_key", None)))
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read()).get("version")
    except Exception:
        return None


def strict_backend_checks(session: EngineSession) -> dict[str, Any]:
    version = server_version(session)
    return {
        "backend_mode": session.backend_mode,
        "strict": session.backend_mode == "real",
        "engine_distribution": engine_distribution(),
        "server_reported_version": version,
        "server_answered_version_endpoint": version is not None,
        "engine_device": session.backend.info().get("device"),
    }


def _output_key(rec: RequestRecord) -> str:
    return sha256_obj(rec.token_ids if rec.token_ids is not None else rec.text)


def _repeat_requests(cfg: dict, model: dict, repeat: int, prefix: str = "") -> list[GenerationRequest]:
    """Repeat ``repeat``'s requests: the same prompts in every repeat and every engine start."""
    seed = cfg["seed"]
    return [GenerationRequest(request_id=f"{prefix}repeat{repeat}-{i}",
                              prompt=token_id_prompt(cfg["prompt_tokens"], seed + 10 + i, model),
                              max_tokens=cfg["max_tokens"], prompt_tokens_target=cfg["prompt_tokens"],
                              temperature=0.0, seed=seed)
            for i in range(cfg["requests_per_repeat"])]


def _repeat_summary(k: int, records: list[RequestRecord], duration: float) -> dict[str, Any]:
    return {"repeat": k, "duration_s": duration, "ok": sum(r.ok for r in records),
            "ttft_ms_mean": ms(mean([r.ttft_s for r in records])),
            "tpot_ms_mean": ms(mean([r.tpot_s for r in records]))}


def cv_block(ttft_means: list[float | None], tpot_means: list[float | None],
             threshold: float | None = None) -> dict[str, Any]:
    """CVs of per-repeat (or per-start) mean TTFT and TPOT, judged against ``threshold`` when one
    is given (the run gives none: cv_threshold is an analysis key, see ``judge_cv``)."""
    block = {"cv_ttft": coefficient_of_variation(ttft_means), "cv_tpot": coefficient_of_variation(tpot_means)}
    return judge_cv(block, threshold) if threshold is not None else block


def judge_cv(block: dict[str, Any], threshold: float) -> dict[str, Any]:
    """``block`` (its cv_ttft, cv_tpot) judged against the exit criterion ``threshold``, in place."""
    block.update({"cv_threshold": threshold,
                  "ttft_within_threshold": block["cv_ttft"] is not None and block["cv_ttft"] <= threshold,
                  "tpot_within_threshold": block["cv_tpot"] is not None and block["cv_tpot"] <= threshold})
    return block


def verdict(determinism: dict, variability: dict, prompt_mismatch: list, backend_mode: str) -> tuple[bool, list[str]]:
    """E0 passes only if outputs are identical, prompts have their lengths, the engine is real and
    both CVs are within the criterion, within one engine start and across restarts."""
    reasons = []
    if not determinism["all_identical"]:
        reasons.append(f"{determinism['distinct_outputs']} distinct outputs from identical greedy requests")
    if prompt_mismatch:
        reasons.append(f"{len(prompt_mismatch)} prompt-length mismatch(es)")
    if backend_mode != "real":
        reasons.append(f"backend is {backend_mode}, not the real engine")
    across = variability.get("across_restarts") or {}
    for label, block in (("within one engine start", variability), ("across engine restarts", across)):
        if "cv_ttft" not in block:  # one engine start only: no across-restart variation to judge
            continue
        for metric in ("ttft", "tpot"):
            if not block[f"{metric}_within_threshold"]:
                cv = block[f"cv_{metric}"]
                reasons.append(f"{metric.upper()} CV {'n/a' if cv is None else f'{cv:.1%}'} {label} exceeds "
                               f"{block['cv_threshold']:.0%}")
    return not reasons, reasons


async def warm(session: EngineSession, cfg: dict, prefix: str, keep) -> dict[str, Any]:
    """Warm-up until steady (``warmup.WarmupRule`` from the config): the same prompt, one request
    per round; its records are kept under ``prefix``, the result returned."""
    prompt = token_id_prompt(cfg["prompt_tokens"], cfg["seed"] + 1_000_003, session.model)
    records, result = await warm_session(
        session,
        lambda k: [GenerationRequest(request_id=f"{prefix}-{k}", prompt=list(prompt), max_tokens=cfg["max_tokens"],
                                     prompt_tokens_target=len(prompt), temperature=0.0, seed=cfg["seed"])],
        WarmupRule.from_cfg(cfg), desc=prefix, label=prefix)
    keep(prefix, records)
    return result


async def first_start(session: EngineSession, cfg: dict, keep) -> dict[str, Any]:
    """Warmup, the determinism check and the timed repeats on the first engine start."""
    seed = cfg["seed"]
    warmup = await warm(session, cfg, "warmup", keep)

    prompt = token_id_prompt(cfg["prompt_tokens"], seed, session.model)
    identical, _ = await session.run_requests(
        # Only the determinism check compares token ids; the timed repeats below do not ask for
        # them (the echoed prompt ids would inflate client TTFT).
        _requests("identical", cfg["identical_requests"], prompt, cfg, seed, return_token_ids=True),
        max_concurrency=1, desc="identical")
    keep("identical", identical)
    ok = [r for r in identical if r.ok]
    distinct = sorted({_output_key(r) for r in ok})
    determinism = {
        "requests": len(identical),
        "ok": len(ok),
        "distinct_outputs": len(distinct),
        "all_identical": len(ok) == len(identical) and len(distinct) == 1,
        "compared": "token_ids" if ok and ok[0].token_ids is not None else "text",
        "output_tokens": sorted({r.output_tokens for r in ok}),
        "reference_output_sha256": distinct[0] if len(distinct) == 1 else None,
    }

    per_repeat = []
    all_repeat_records: list[RequestRecord] = []
    before = session.snapshot()
    for k in range(cfg["repeats"]):
        records, duration = await session.run_requests(_repeat_requests(cfg, session.model, k), max_concurrency=1,
                                                       desc=f"repeat {k}")
        keep(f"repeat-{k}", records)
        all_repeat_records += records
        per_repeat.append(_repeat_summary(k, records, duration))
    after = session.snapshot()
    return {"identical": identical, "determinism": determinism, "per_repeat": per_repeat,
            "records": all_repeat_records, "before": before, "after": after,
            "strict_backend": strict_backend_checks(session), "warmup": warmup}


async def restart_pass(session: EngineSession, cfg: dict, start: int, keep,
                       warmups: list[dict[str, Any]]) -> list[RequestRecord]:
    """A later engine start: the same warmup and the same repeat requests as the first."""
    warmups.append(await warm(session, cfg, f"start{start}-warmup", keep))
    records: list[RequestRecord] = []
    for k in range(cfg["repeats"]):
        recs, _ = await session.run_requests(_repeat_requests(cfg, session.model, k, f"start{start}-"),
                                             max_concurrency=1, desc=f"start {start} repeat {k}")
        keep(f"start{start}-repeat-{k}", recs)
        records += recs
    return records


def _serve(run: ExperimentRun, backend, body):
    backend.start()
    session = EngineSession(backend, run.model)

    async def main():
        try:
            return await body(session)
        finally:
            await session.aclose()

    try:
        result = asyncio.run(main())
        died = backend.exit_reason()
        if died:  # its requests failed for that reason, not for a lack of reproducibility
            raise EngineDiedError(f"{died}. E0 stops there: its requests so far are kept.")
        return result
    finally:
        backend.stop()  # before the next start: two engines would share the device


def _start_summary(start: int, records: list[RequestRecord], startup_s: float | None) -> dict[str, Any]:
    return {"start": start, "ok": sum(r.ok for r in records), "startup_s": startup_s,
            "ttft_ms_mean": ms(mean([r.ttft_s for r in records])),
            "tpot_ms_mean": ms(mean([r.tpot_s for r in records]))}


def run(run: ExperimentRun) -> dict:
    """``engine_starts`` engine starts serving the same repeat requests; the first also checks
    determinism. Run-to-run variation is reported within one start and across starts."""
    cfg, ctx = run.cfg, run.ctx
    rows: list[dict] = []
    ctx.keep_on_failure("requests", rows)  # the requests served before an interrupt are kept

    def keep(phase: str, records: list[RequestRecord]) -> None:
        for r in records:
            rows.append({"phase": phase, **r.as_row(keep_tokens=phase == "identical")})
        ctx.checkpoint()

    first = run.backend(run.model, run.serving)
    measured = _serve(run, first, lambda session: first_start(session, cfg, keep))
    per_start = [_start_summary(0, measured["records"], first.info().get("startup_s"))]
    restart_records: list[RequestRecord] = []
    warmups = [measured["warmup"]]
    for start in range(1, cfg["engine_starts"]):
        backend = run.backend(run.model, run.serving, "engine_restart", start)
        records = _serve(run, backend, lambda session, s=start: restart_pass(session, cfg, s, keep, warmups))
        restart_records += records
        per_start.append(_start_summary(start, records, backend.info().get("startup_s")))
    run.engine_info = {**first.info(), "restarts": [b.info() for b in run.backends[1:]]} if len(run.backends) > 1 \
        else first.info()
    run.metadata_extra["warmup"] = warmups

    variability = _variability(cfg, measured["per_repeat"], per_start)
    measured_summary = _measured_summary(run, measured, variability, restart_records, rows, warmups)
    ctx.write_table("requests", ctx.frame(rows))
    # Everything but the judgement against cv_threshold (an analysis key): rule e0_analysis
    # writes summary.json with the verdict.
    ctx.write_json("measured", measured_summary)
    across = variability["across_restarts"]
    return {"all_identical": measured["determinism"]["all_identical"],
            "cv_ttft": variability["cv_ttft"], "cv_tpot": variability["cv_tpot"],
            "cv_ttft_across_restarts": across.get("cv_ttft"), "cv_tpot_across_restarts": across.get("cv_tpot")}


def _variability(cfg: dict, per_repeat: list[dict[str, Any]], per_start: list[dict[str, Any]]) -> dict[str, Any]:
    """measured.json's ``variability``: CVs of the repeats' means within the first engine start,
    and of the starts' means across restarts (none with a single start)."""
    return {
        "repeats": cfg["repeats"],
        "requests_per_repeat": cfg["requests_per_repeat"],
        "per_repeat": per_repeat,
        **cv_block([p["ttft_ms_mean"] for p in per_repeat], [p["tpot_ms_mean"] for p in per_repeat]),
        "scope": "repeats within the first engine start",
        "measured_on": "client",
        "across_restarts": {
            "engine_starts": cfg["engine_starts"],
            "requests_per_start": cfg["repeats"] * cfg["requests_per_repeat"],
            "per_start": per_start,
            **(cv_block([p["ttft_ms_mean"] for p in per_start], [p["tpot_ms_mean"] for p in per_start])
               if len(per_start) > 1 else {}),
            "measured_on": "client",
        },
    }


def _measured_summary(run: ExperimentRun, measured: dict[str, Any], variability: dict[str, Any],
                      restart_records: list[RequestRecord], rows: list[dict], warmups: list[dict]) -> dict[str, Any]:
    """measured.json: the determinism check, the variability, the latencies and their checks."""
    from ..engine_metrics import engine_summary, per_request_summary

    cfg = run.cfg
    before, after = measured["before"], measured["after"]
    all_repeat_records = measured["records"]
    identical = measured["identical"]
    prompt_mismatch = [r.request_id for r in
                       prompt_length_mismatches(identical + all_repeat_records + restart_records)]
    integrity = check_records([*all_repeat_records, *restart_records])
    return {
        **run.ctx.stamp(),
        "strict_backend": measured["strict_backend"],
        "determinism": measured["determinism"],
        "variability": variability,
        # The client had no TPOT for these (records.read_whole): its TPOT figures rest on the others.
        "streams_read_whole": {"read_whole": sum(read_whole(r) for r in all_repeat_records + restart_records),
                               "requests": sum(r.ok for r in all_repeat_records + restart_records),
                               "scope": "successful repeat requests of every engine start", "measured_on": "client"},
        "latency_client": client_latency(all_repeat_records),
        # Histograms: counts, sums and exact means only; percentiles from vLLM's per-request metrics.
        "latency_engine": {**(engine_summary(before, after) if before and after else {"available": False}),
                           "per_request": per_request_summary(all_repeat_records)},
        "integrity": {"implausible": integrity.reasons, "note": integrity.note()},
        # per engine start: how many warm-up requests it took until the engine was steady
        "warmup": [{"start": k, **w} for k, w in enumerate(warmups)],
        "prompt_tokens_mismatch": prompt_mismatch,
        "failed_requests": sum(1 for r in rows if not r["ok"]),
        "workload": {k: cfg.get(k) for k in ("seed", "prompt_tokens", "max_tokens", "warmup_requests",
                                             "warmup_max_requests", "warmup_window", "warmup_tolerance",
                                             "identical_requests", "repeats", "requests_per_repeat", "engine_starts")},
    }


def client_latency(records: list[RequestRecord]) -> dict[str, Any]:
    """summary.json's ``latency_client``: TTFT, TPOT and E2E of the repeat requests with their CIs,
    and ``stats_note``: what is not stated, or stated without a CI, and why (``analysis.stats``)."""
    out: dict[str, Any] = {}
    missing, no_interval = [], []
    for metric in ("ttft", "tpot", "e2e"):
        values = [getattr(r, f"{metric}_s") for r in records if getattr(r, f"{metric}_s") is not None]
        summary = summarize_with_ci(values, f"{metric}_ms", 1000)
        out.update(summary)
        missing.append(small_sample_part(metric, len(values)))
        no_interval.append(interval_part(metric, summary, f"{metric}_ms", len(values)))
    return {**out, "stats_note": small_sample_note(missing, no_interval), "measured_on": "client"}


def analyse(results_dir, analysis_cfg: dict[str, Any]) -> dict[str, Any]:
    """Rule e0_analysis: summary.json = the run's measured.json, its CVs judged against
    ``analysis_cfg["cv_threshold"]`` (within one start and across restarts), and the verdict."""
    import copy

    from ..io import read_json

    summary = copy.deepcopy(read_json(EXPERIMENT.path(results_dir, "measured")))
    threshold = analysis_cfg["cv_threshold"]
    variability = summary["variability"]
    judge_cv(variability, threshold)
    across = variability.get("across_restarts") or {}
    if "cv_ttft" in across:
        judge_cv(across, threshold)
    passed, reasons = verdict(summary["determinism"], variability, summary.get("prompt_tokens_mismatch") or [],
                              summary.get("backend_mode", "real"))
    implausible = (summary.get("integrity") or {}).get("implausible") or []
    if implausible:
        passed, reasons = False, [*reasons, *("implausible: " + r for r in implausible)]
    unsettled = [w for w in summary.get("warmup") or [] if w.get("settled") is False]
    if unsettled:  # its repeats may carry warm-up drift into the CVs
        passed, reasons = False, [*reasons, *(f"engine start {w['start']}: warm-up {w['note']}" for w in unsettled)]
    summary.update(passed=passed, failed_because=reasons)
    write_json(EXPERIMENT.path(results_dir, "summary"), summary)
    return summary


# -- tables (docs/columns.md) ---------------------------------------------------------------------

C = Column

E0_REQUESTS = Table("e0/requests.csv", (
    C("phase", "", "label", "warmup, identical (the determinism check) or repeat-<k> (the variability repeats)"),
    *request_record_columns(token_ids=True),
    *stamp_columns(),
), "one row per request")


def _mean_columns(what: str) -> tuple[Column, ...]:
    return (C("ok", "count", "client", f"requests of the {what} that succeeded", "ok requests"),
            C("ttft_ms_mean", "ms", "client", f"mean client TTFT of the {what}'s requests", "TTFT mean"),
            C("tpot_ms_mean", "ms", "client", f"mean client TPOT of the {what}'s requests (those with a TPOT)",
              "TPOT mean"))


# Rows of summary.json the report shows as tables (not files of their own).
E0_REPEATS = Table("e0/summary.json variability.per_repeat", (
    C("repeat", "", "label", "index of the repeat within the first engine start", "repeat"),
    C("duration_s", "s", "client", "wall time of the repeat: first send to last completion", "duration"),
    *_mean_columns("repeat"),
), "not a file: the report's table of summary.json's variability.per_repeat, one row per repeat")
E0_STARTS = Table("e0/summary.json variability.across_restarts.per_start", (
    C("start", "", "label", "index of the engine start (0: the first, which also checked determinism)",
      "engine start"),
    C("ok", "count", "client", "requests of the start that succeeded", "ok requests"),
    C("startup_s", "s", "client", "seconds from the engine process start until its server answered", "startup"),
    *_mean_columns("start")[1:],
), "not a file: the report's table of summary.json's variability.across_restarts.per_start, one row per engine "
   "start")


def repeat_requests(frame: pd.DataFrame) -> pd.Series:
    """The variability requests of ``requests.csv`` (repeat-<k>, start<s>-repeat-<k>): not the
    warm-ups, not the determinism check's identical prompts. What ``compare`` compares, and whose
    per-start medians give its between-start noise."""
    return frame["phase"].astype(str).str.contains(r"(?:^|-)repeat-\d+$", regex=True)


def rejudge(results_dir: Path) -> list[str]:
    """``context-research recheck``: today's verdict over the saved summary (passed and
    failed_because), no number measured again; one line if the verdict changed."""
    path = EXPERIMENT.path(results_dir, "summary")
    if not path.exists():
        return []
    summary = read_json(path)
    # A run from before restarts were measured has no across-restart block: nothing to judge there.
    passed, reasons = verdict(summary["determinism"], summary["variability"],
                              summary.get("prompt_tokens_mismatch") or [], summary.get("backend_mode", "real"))
    changes = []
    if passed != summary.get("passed"):
        changes.append(f"e0/summary.json: passed {summary.get('passed')} -> {passed}: {'; '.join(reasons)}")
    summary.update(passed=passed, failed_because=reasons)
    write_json(path, summary)
    return changes


EXPERIMENT = Experiment(
    name="e0", title="E0 — smoke and reproducibility", category="E0 smoke and reproducibility",
    engines=SEVERAL_ENGINES, body=run,
    outputs={"measured": "measured.json", "requests": "requests.csv", "engine_log": "engine.log"},
    analyse=analyse,
    analysis_outputs={"summary": "summary.json"},
    # engine_starts - 1 restarts, each with its own log
    optional_outputs={"engine_restart": "engine_restart{}.log"},
    figures=(Figure("variability", "variability.svg", "e0_variability.rst"),
             Figure("repeats", "repeats.html", "e0_repeats.rst")),
    report_module="context_research.experiments.e0_report",
    code=("experiments/e0.py", "analysis/findings.py", "analysis/integrity.py", "analysis/hardware.py", "analysis/model_math.py"),
    report_code=("experiments/e0_report.py",),
    tables=(E0_REQUESTS, E0_REPEATS, E0_STARTS),
    comparison=Layout("requests.csv", (), CLIENT_METRICS + ENGINE_METRICS, keep=repeat_requests),
    rejudge=rejudge,
    analysis_keys=("cv_threshold",),
)
