"""E4: long-context quality on deterministic, seeded subsets.

* RULER tasks are generated offline at the configured context lengths; LongBench,
  InfiniteBench and PG19 come from local JSONL in the upstream schema or ``datasets``
  (``context_research.datasets``). Each task is materialized once to
  ``results/data/{benchmark}/{name}.jsonl`` plus a manifest, lengths measured with the served
  model's tokenizer (``context-research materialize``, rule ``e4_data``; the specs are in
  ``datasets.specs``, the writing in ``datasets.materialize``).
* ``prepare`` loads those files and hashes their manifests before the engine starts (a missing
  or edited dataset fails there); the manifests' combined hash enters the config hash.
* One engine start serves every sample: upstream's prompt templates and generation lengths
  (``datasets.templates``), the chat template with thinking off wherever upstream applies one
  (LongBench sends trec, triviaqa, samsum, lcc and repobench-p raw), greedy decoding, stopping at
  EOS. A prompt longer than ``max_model_len - max_new_tokens`` is cut in the middle as its
  suite cuts it, and counted (``quality.prompting.ChatPrompter``).
* PG19 is long-context perplexity: a book window scored given the book's preceding tokens, one
  dataset per context length, from the engine's prompt logprobs (``/v1/completions`` with
  ``prompt_logprobs`` on our token ids, so every logprob is matched to the exact token it
  scores; ``quality.perplexity``). A length that does not fit the window fails, never cut.
* Scores are only quality numbers with real weights on the real benchmark data: otherwise each
  row says ``meaningful = false`` (``quality.verdicts``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..analysis.compare_layout import NotCompared
from ..backends.client import http_session
from ..backends.session import EngineSession
from ..datasets.materialize import load_materialized
from ..datasets.specs import Dataset, combine_manifest_digests, data_source_kind, datasets, explicit_file_problems
from ..hashing import sha256_file
from ..quality.perplexity import fetch_prompt_logprobs, perplexity_fields, pg19_token_ids
from ..quality.prompting import ChatPrompter, load_tokenizer, prompt_budget
from ..quality.scorers import score_sample
from ..quality.verdicts import (BY_LENGTH_COLUMNS, PERPLEXITY, QUALITY_COLUMNS, by_length_rows, dataset_row,
                                length_bucket, length_edges, overall_row, summary_verdict)
from ..records import GenerationRequest
from ..workload.checks import prompt_length_mismatches
from .declaration import ONE_ENGINE, Experiment, Figure, Prepared
from ..quality.tables import E4_BESIDE_SPEED, E4_BY_LENGTH, E4_QUALITY
from .runner import RunContext

Loaded = list[tuple[Dataset, dict, list[dict]]]  # load_materialized: (dataset, manifest, samples)


def prepare(config: dict) -> Prepared:
    """Load every configured dataset and hash its manifest, before the engine starts: a dataset
    that is missing or does not match its manifest fails here. The run gets what was loaded."""
    loaded = load_materialized(datasets(config["experiments"]["e4"]))
    manifest_sha256 = {ds.key: sha256_file(ds.manifest_path()) for ds, _, _ in loaded}
    return Prepared(dataset_manifest_sha256=combine_manifest_digests(manifest_sha256),
                    body_kwargs={"loaded": loaded, "manifest_sha256": manifest_sha256})


@dataclass
class _Pending:
    ds: Dataset
    sample: dict
    line: dict = field(default_factory=dict)


def _base_line(ds: Dataset, sample: dict, stamp: dict) -> dict:
    return {"id": sample["id"], "benchmark": ds.benchmark, "task": ds.task, "dataset": ds.name,
            "context_tokens": ds.context_tokens, "metric": sample["metric"],
            "references": list(sample.get("outputs") or []), "source_tokens": sample.get("length"),
            "max_new_tokens": int(sample.get("max_new_tokens") or 0), "prediction": None, "score": None,
            "score_percent": None, "input_tokens": None, "input_tokens_local": None,
            "truncated": bool(sample.get("truncated")), "truncated_at": "materialize" if sample.get("truncated") else None,
            "length_bucket": None,
            "output_tokens": None, "finish_reason": None, "status": "failed", "reason": None, **stamp}


@dataclass
class _Plan:
    """Every sample's line (by dataset key) and what to send: generations and PG19 scorings (the
    line, the token ids, how many of them are scored)."""
    lines_by_ds: dict[str, list[_Pending]] = field(default_factory=dict)
    generate: list[tuple[_Pending, GenerationRequest]] = field(default_factory=list)
    perplexity: list[tuple[_Pending, list[int], int]] = field(default_factory=list)


async def run(session: EngineSession, cfg: dict, ctx: RunContext, *, loaded: Loaded,
              manifest_sha256: dict[str, str]) -> dict:
    """``loaded`` (``load_materialized``) and ``manifest_sha256`` ({dataset key: sha256 of its
    manifest}) come from ``prepare``, which checked them before the engine started."""
    model = session.model
    tok = load_tokenizer(str(model.get("tokenizer") or model["path"]))
    prompter = ChatPrompter(tok, cfg.get("system_prompt"), cfg.get("prefill_answer_prefix", True))
    max_len = int(model["max_model_len"])
    plan = _plan(loaded, cfg, ctx.stamp(), tok, prompter, max_len)

    measured = await session.measure([r for _, r in plan.generate], max_concurrency=int(cfg["max_concurrency"]),
                                     desc="e4 generate")
    _score_generated(plan.generate, measured["records"], session.exit_reason())
    ppl_duration = await _run_perplexity(session, plan.perplexity, int(cfg["max_concurrency"]))

    rows, predictions = _tables(ctx, cfg, loaded, plan, max_len)
    by_request = {req.request_id: item for item, req in plan.generate}
    mismatch = [by_request[r.request_id].line["id"] for r in prompt_length_mismatches(measured["records"])]
    summary = {
        **_summary(ctx, cfg, rows, predictions, loaded, manifest_sha256, bool(prompter.chat), max_len),
        "prompt_tokens_mismatch": mismatch,
        "generate_duration_s": measured["duration_s"],
        "perplexity_duration_s": ppl_duration,
        "engine": measured["engine"],
        "measured_on": {"scores": "client (scorers on the served text)", "input_tokens": "server usage",
                        "durations": "client"},
    }
    ctx.write_json("summary", summary)
    session.raise_if_died()
    overall = rows[-1]
    return {"samples": summary["samples"], "failed": summary["failed"], "truncated": summary["truncated"],
            "overall_score": overall["score"], "meaningful": summary["meaningful"]}


def _plan(loaded: Loaded, cfg: dict, stamp: dict, tok, prompter: ChatPrompter, max_len: int) -> _Plan:
    """Each sample's line, and its request where it fits (a sample that does not gets its reason)."""
    plan = _Plan()
    seed = int(cfg.get("seed", 0))
    for ds, manifest, samples in loaded:
        for k, sample in enumerate(samples):
            item = _Pending(ds, sample, _base_line(ds, sample, stamp))
            plan.lines_by_ds.setdefault(ds.key, []).append(item)
            if sample["metric"] == PERPLEXITY:
                _plan_perplexity(plan, item, tok, cfg, max_len)
            else:
                _plan_generation(plan, item, k, tok, prompter, cfg, max_len, seed)
    return plan


def _plan_perplexity(plan: _Plan, item: _Pending, tok, cfg: dict, max_len: int) -> None:
    sample = item.sample
    try:
        ids, scored = pg19_token_ids(tok, sample)
    except ValueError as exc:
        item.line["reason"] = str(exc)
        return
    item.line["input_tokens_local"] = len(ids)
    limit = prompt_budget(max_len, 1, cfg.get("max_input_tokens"))
    if len(ids) > limit:  # a shorter context would be another measurement: refuse, do not cut
        item.line["reason"] = (f"context {sample.get('context_tokens')} + window {scored} tokens exceed the "
                               f"prompt budget {limit} (max_model_len {max_len}); drop that length from "
                               f"experiments.e4.benchmarks.pg19.context_lengths")
        return
    plan.perplexity.append((item, ids, scored))


def _plan_generation(plan: _Plan, item: _Pending, k: int, tok, prompter: ChatPrompter, cfg: dict, max_len: int,
                     seed: int) -> None:
    sample = item.sample
    limit = prompt_budget(max_len, item.line["max_new_tokens"], cfg.get("max_input_tokens"))
    fitted = prompter.fit(sample, limit)
    item.line["input_tokens_local"] = fitted.prompt_tokens
    if fitted.truncated:
        item.line.update(truncated=True, truncated_at="engine")
    if fitted.error:
        item.line["reason"] = fitted.error
        return
    req = GenerationRequest(
        request_id=f"{item.ds.key}/{k}", max_tokens=item.line["max_new_tokens"],
        prompt_tokens_target=fitted.prompt_tokens, temperature=0.0, seed=seed, ignore_eos=False,
        **upstream_stops(prompter.request_fields(fitted), sample, tok))
    plan.generate.append((item, req))


def _score_generated(generate: list[tuple[_Pending, GenerationRequest]], records: list, died: str | None) -> None:
    """Each generation's line: its token counts, and its prediction and score, or why it has none
    (``died``: the engine had died, which is why a request failed)."""
    for (item, _), rec in zip(generate, records):
        line = item.line
        line.update(input_tokens=rec.prompt_tokens, output_tokens=rec.output_tokens, finish_reason=rec.finish_reason)
        if not rec.ok:
            line["reason"] = died or rec.error
            continue
        line["prediction"] = rec.text
        line["score"], line["score_percent"] = score_sample(item.sample, rec.text)
        line["status"] = "ok"


def _tables(ctx: RunContext, cfg: dict, loaded: Loaded, plan: _Plan, max_len: int) -> tuple[list[dict], list[dict]]:
    """quality.csv (a row per dataset, then the overall row), quality_by_length.csv and
    predictions.jsonl, written; returns the quality rows and the prediction lines."""
    rows, predictions = [], []
    for ds, manifest, samples in loaded:
        preds = [i.line for i in plan.lines_by_ds.get(ds.key, [])]
        predictions += preds
        metric = samples[0]["metric"] if samples else "unknown"
        rows.append(dataset_row(ds, metric, preds, weights=ctx.weights, backend_mode=ctx.backend_mode,
                                data_source=data_source_kind(manifest)))
    rows.append(overall_row(rows))
    edges = length_edges(cfg.get("length_buckets"), (cfg.get("ruler") or {}).get("context_lengths"), max_len)
    for line in predictions:
        line["length_bucket"] = length_bucket(line, edges)
    by_length = by_length_rows(predictions, rows[:-1])
    _write_outputs(ctx, rows, predictions, by_length)
    return rows, predictions


def _summary(ctx: RunContext, cfg: dict, rows: list[dict], predictions: list[dict], loaded: Loaded,
             manifest_sha256: dict[str, str], chat: bool, max_len: int) -> dict:
    """summary.json's verdict, datasets, decoding and counts (the run adds its measurements)."""
    meaningful, why = summary_verdict(rows, ctx.weights, ctx.backend_mode)
    return {
        **ctx.stamp(),
        "meaningful": meaningful,
        "meaningful_reason": why,
        "rows": rows,
        "datasets": {ds.key: {"manifest": str(ds.manifest_path()), "manifest_sha256": manifest_sha256[ds.key],
                              "file_sha256": m["file"]["sha256"], "count": m["count"], "source": m["source"],
                              "seed": m["seed"], "tokenizer": m.get("tokenizer"),
                              "prompt_template": m.get("prompt_template")} for ds, m, _ in loaded},
        "dataset_manifest_sha256": combine_manifest_digests(manifest_sha256),
        "decoding": {"chat_template": "per task, where upstream applies one" if chat else False,
                     "enable_thinking": False, "temperature": 0.0, "ignore_eos": False,
                     "seed": int(cfg.get("seed", 0)),
                     "prefill_answer_prefix": bool(cfg.get("prefill_answer_prefix", True)),
                     "system_prompt": cfg.get("system_prompt"), "max_new_tokens": "per task (sample max_new_tokens)",
                     "max_model_len": max_len, "max_input_tokens": cfg.get("max_input_tokens")},
        "perplexity_method": "PG19 long-context perplexity: prompt = the last context_tokens tokens of the book before "
                             "the window + the window_tokens scored tokens; exp(mean NLL) and mean NLL / ln 2 bits per "
                             "token over the window only, from vLLM prompt_logprobs on /v1/completions; dataset score "
                             "token-weighted over books; the same window at every context length",
        "samples": len(predictions),
        "failed": sum(1 for p in predictions if p["status"] != "ok"),
        "truncated": sum(1 for p in predictions if p["truncated"]),
    }


def upstream_stops(fields: dict, sample: dict, tokenizer) -> dict:
    """Request fields plus the stops upstream adds: LongBench's samsum also ends at the newline
    token and generates at least one token (pred.py's eos_token_id list and min_length)."""
    if not sample.get("stop_at_newline"):
        return fields
    newline = tokenizer.encode("\n", add_special_tokens=False)[-1]
    return {**fields, "extra": {**fields.get("extra", {}), "stop_token_ids": [newline], "min_tokens": 1}}


async def _run_perplexity(session: EngineSession, items: list[tuple[_Pending, list[int], int]],
                          max_concurrency: int) -> float | None:
    """Wall time of the prompt-logprob requests; None when none was sent (the report prints n/a)."""
    if not items:
        return None
    base_url = getattr(session.backend, "base_url", None)
    if base_url is None:
        for item, _, _ in items:
            item.line["reason"] = f"backend {session.backend_mode} has no HTTP endpoint for prompt logprobs"
        return None
    sem = asyncio.Semaphore(max_concurrency)
    timeout = float(session.backend.serving.get("request_timeout_s", 900))
    t0 = time.perf_counter()
    async with http_session(timeout) as http:
        async def one(item: _Pending, ids: list[int], scored: int) -> None:
            async with sem:
                got = await fetch_prompt_logprobs(http, base_url, session.backend.served_name, ids)
            line = item.line
            if "error" in got:
                line["reason"] = session.exit_reason() or got["error"]
                return
            line["input_tokens"] = got.get("prompt_tokens")
            try:
                line.update(perplexity_fields(got["logprobs"], scored))
            except ValueError as exc:
                line["reason"] = str(exc)
                return
            line["status"] = "ok"

        await asyncio.gather(*(one(i, ids, scored) for i, ids, scored in items))
    return time.perf_counter() - t0


def _write_outputs(ctx: RunContext, rows: list[dict], predictions: list[dict], by_length: list[dict]) -> None:
    frame = ctx.frame(rows, QUALITY_COLUMNS)
    frame["context_tokens"] = frame["context_tokens"].astype("Int64")  # "512", or empty for non-RULER rows
    ctx.write_table("quality", frame)
    buckets = ctx.frame(by_length, BY_LENGTH_COLUMNS)
    buckets["length_bucket"] = buckets["length_bucket"].astype("Int64")
    ctx.write_table("by_length", buckets)
    ctx.write_jsonl("predictions", predictions)


def data_inputs(config: dict) -> list[str]:
    """The materialized datasets and their manifests (rule e4_data's outputs) the run reads."""
    dss = datasets(config["experiments"]["e4"])
    return [str(ds.data_path()) for ds in dss] + [str(ds.manifest_path()) for ds in dss]


EXPERIMENT = Experiment(
    name="e4", title="E4 — long-context quality", category="E4 long-context quality",
    engines=ONE_ENGINE, body=run, prepare=prepare, data_inputs=data_inputs,
    outputs={"quality": "quality.csv", "by_length": "quality_by_length.csv", "predictions": "predictions.jsonl",
             "summary": "summary.json",
             "engine_log": "engine.log"},
    figures=(Figure("quality", "quality.svg", "e4_quality.rst"),
             Figure("ruler", "ruler.svg", "e4_ruler.rst"),
             Figure("table", "quality.html", "e4_table.rst"),
             Figure("beside_speed", "beside_speed.svg", "e4_beside_speed.rst")),
    figure_joins=("e1", "e5"),
    report_module="context_research.experiments.e4_report",
    code=("experiments/e4.py", "datasets/", "data/upstream_prompts.json", "quality/__init__.py",
          "quality/perplexity.py", "quality/prompting.py", "quality/scorers.py", "quality/tables.py", "quality/verdicts.py"),
    report_code=("experiments/e4_report.py", "quality/beside_speed.py"),
    # rule e4_data: materializes the datasets with the served model's tokenizer (RULER's haystacks
    # from wonderwords' word lists); a change of any of these rematerializes them, and so reruns E4
    data_code=("datasets/", "data/upstream_prompts.json", "quality/__init__.py", "quality/prompting.py",
               "quality/scorers.py", "config.py", "models.py", "metadata.py", "provenance.py"),
    data_packages=("tokenizers", "transformers", "wonderwords"),
    tables=(E4_QUALITY, E4_BY_LENGTH, E4_BESIDE_SPEED),
    comparison=NotCompared("quality scores, not per-request latencies (not compared yet)"),
    config_problems=explicit_file_problems,  # E4's data files: never a silent fixture
    # every key of experiments.e4 shapes the datasets, the prompts or the decoding; the scorers
    # are fixed per sample (its ``metric``), so no key only analyses saved predictions
    analysis_keys=(),
)
