"""E4: long-context quality on deterministic, seeded subsets.

* RULER tasks are generated offline at the configured context lengths; LongBench,
  InfiniteBench and PG19 come from local JSONL in the upstream schema or ``datasets``
  (``context_research.datasets``). Each task is materialized once to
  ``results/data/{benchmark}/{name}.jsonl`` plus a manifest, lengths measured with the served
  model's tokenizer (``python -m context_research.experiments.e4 materialize``, rule ``e4_data``).
* One engine start serves every sample: the chat template with thinking off, greedy decoding,
  the task's ``max_new_tokens``, stopping at EOS. A prompt longer than ``max_model_len -
  max_new_tokens`` is truncated in the middle (LongBench/InfiniteBench style) and counted.
* PG19 perplexity comes from the engine's prompt logprobs (``/v1/completions`` with
  ``prompt_logprobs``), on the token ids our tokenizer produced, so every logprob is matched to
  the exact token it scores.
* Scores are only quality numbers with real weights on the real benchmark data: otherwise each
  row says ``meaningful = false``.

RULER datasets are named ``{task}-{context_tokens}``; the others by their task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..backends.client import http_session
from ..errors import ConfigError, ContextResearchError
from ..hashing import sha256_file, sha256_obj
from ..io import read_json, read_jsonl, write_csv, write_json, write_jsonl
from ..quality.scorers import score_sample
from ..workload import prompt_length_mismatches

DATA_ROOT = Path("results/data")
BENCHMARKS = ("ruler", "longbench", "infinitebench", "pg19")
EMBEDDED_TOKENIZER = "resources/models/embedded-qwen3"
FIXTURES_DIR = "tests/fixtures/e4"
# Headroom of the automatic RULER reserve: templated lengths differ by a token or two between
# samples (the answer prefix names different keys), and the reserve is measured on one of them.
RULER_RESERVE_SLACK = 8
PERCENT = "percent"
PERPLEXITY = "perplexity"
OVERALL = "overall"


# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Dataset:
    """One materialized task: ``results/data/{benchmark}/{name}.jsonl`` and its manifest."""

    benchmark: str
    name: str
    task: str
    context_tokens: int | None = None

    def data_path(self, root: str | Path = DATA_ROOT) -> Path:
        return Path(root) / self.benchmark / f"{self.name}.jsonl"

    def manifest_path(self, root: str | Path = DATA_ROOT) -> Path:
        return Path(root) / self.benchmark / f"{self.name}.manifest.json"

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.name}"


def datasets(e4: dict) -> list[Dataset]:
    """Every configured dataset, in a fixed order (RULER by task then length, then the others)."""
    out = []
    ruler = e4.get("ruler") or {}
    for task in ruler.get("tasks") or []:
        for ctx in ruler.get("context_lengths") or []:
            out.append(Dataset("ruler", f"{task}-{int(ctx)}", task, int(ctx)))
    for bench in BENCHMARKS[1:]:
        for task in (e4.get("benchmarks") or {}).get(bench, {}).get("tasks") or []:
            out.append(Dataset(bench, task, task))
    return out


def find_dataset(e4: dict, benchmark: str, name: str) -> Dataset:
    for ds in datasets(e4):
        if ds.benchmark == benchmark and ds.name == name:
            return ds
    known = ", ".join(d.key for d in datasets(e4)) or "none"
    raise ConfigError(f"results/data/{benchmark}/{name}.jsonl is not a configured E4 dataset "
                      f"(experiments.e4.ruler / experiments.e4.benchmarks.*.tasks); configured: {known}")


def _drop_none(block: dict) -> dict:
    """The library applies its own defaults to absent keys; null in our config means 'default'."""
    return {k: v for k, v in block.items() if v is not None and v != {}}


def dataset_block(e4: dict, ds: Dataset) -> dict:
    """The block ``materialize_subset`` gets for one dataset: seeds resolved, no task list."""
    if ds.benchmark == "ruler":
        ruler = e4.get("ruler") or {}
        seed = ruler.get("seed")
        block = {"context_tokens": ds.context_tokens, "count": ruler.get("count", 2),
                 "seed": int(e4.get("seed", 0) if seed is None else seed),
                 "reserve_tokens": ruler.get("reserve_tokens"),
                 "task_params": {ds.task: dict((ruler.get("task_params") or {}).get(ds.task) or {})},
                 "qa_records": ruler.get("qa_records")}
        return _drop_none(block)
    block = dict((e4.get("benchmarks") or {}).get(ds.benchmark) or {})
    block.pop("tasks", None)
    if block.get("seed") is None:
        block["seed"] = int(e4.get("seed", 0))
    files = block.get("files") or {}
    block["files"] = {ds.task: files[ds.task]} if ds.task in files else {}
    return _drop_none(block)


def tokenizer_source(config: dict) -> str:
    """What AutoTokenizer loads, the tokenizer the engine serves: the profile's ``tokenizer``, the
    embedded model's folder (relative, so manifests do not depend on where the checkout lives),
    a dummy model's shape-only folder, or ``source``."""
    from ..config import model_profile
    from ..models import dummy_model_dir

    profile = model_profile(config)
    if profile.get("tokenizer"):
        return str(profile["tokenizer"])
    if profile["source"] == "embedded":
        return EMBEDDED_TOKENIZER
    dummy = dummy_model_dir(profile)  # shape-only folder with the synthetic tokenizer the engine serves
    return dummy.as_posix() if dummy is not None else str(profile["source"])


def dataset_spec(config: dict, benchmark: str, name: str) -> dict:
    """Everything one dataset's materialization depends on (the ``e4_data`` rule's params)."""
    e4 = config["experiments"]["e4"]
    ds = find_dataset(e4, benchmark, name)
    spec = {"benchmark": ds.benchmark, "name": ds.name, "task": ds.task, "context_tokens": ds.context_tokens,
            "block": dataset_block(e4, ds), "tokenizer": tokenizer_source(config)}
    if ds.benchmark == "ruler" and "reserve_tokens" not in spec["block"]:
        # the automatic reserve is measured through the chat template the engine run will use
        spec["chat"] = {"system_prompt": e4.get("system_prompt"), "prefill_answer": e4.get("prefill_answer_prefix", True)}
    return spec


def dataset_specs(config: dict) -> list[dict]:
    return [dataset_spec(config, ds.benchmark, ds.name) for ds in datasets(config["experiments"]["e4"])]


def source_inputs(config: dict) -> list[str]:
    """Local files the datasets read (so editing one reruns the materialization)."""
    from ..datasets import loaders

    found: list[str] = []
    for spec in dataset_specs(config):
        block = spec["block"]
        if spec["benchmark"] == "ruler":
            paths = [Path(block["qa_records"])] if block.get("qa_records") else []
        else:
            paths = loaders._local_candidates(spec["benchmark"], spec["task"], block)
        hit = next((str(p) for p in paths if p.is_file()), None)
        if hit is not None and hit not in found:
            found.append(hit)
    return found


def data_source_kind(manifest: dict) -> str:
    """``synthetic`` (RULER), ``fixture`` (the project's test fixtures), ``local`` or ``hub``."""
    source = manifest.get("source") or {}
    kind = source.get("kind", "unknown")
    if kind == "local":
        path = Path(str(source.get("path", "")))
        parts = path.as_posix()
        if parts.startswith(FIXTURES_DIR) or f"/{FIXTURES_DIR}/" in parts:
            return "fixture"
    if kind.startswith("synthetic"):
        return "synthetic"
    return kind


def combined_manifest_sha256(manifests: dict[str, str | Path]) -> str:
    """One hash over every dataset manifest ({dataset key: manifest path}), order-independent."""
    return combine_manifest_digests({key: sha256_file(path) for key, path in manifests.items()})


def combine_manifest_digests(digests: dict[str, str]) -> str:
    """``combined_manifest_sha256`` from manifests already hashed ({dataset key: sha256})."""
    return sha256_obj(dict(sorted(digests.items())))


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ConfigError(f"cannot load the served model's tokenizer from {source!r} (models.<profile>.tokenizer "
                          f"or .source): {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None


def token_counter(tokenizer):
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


# ----------------------------------------------------------------------------- prompts


@dataclass
class FittedPrompt:
    """The prompt actually sent (chat messages, or text without a chat template) and what
    fitting it cost."""

    prompt: list[dict] | str
    continue_final: bool
    prompt_tokens: int | None          # templated length by our tokenizer
    original_tokens: int | None        # before truncation
    truncated: bool = False
    error: str | None = None


class ChatPrompter:
    """Chat messages for a sample (``quality.prompting.build_chat_messages``), their templated
    length with thinking off, and middle truncation of the user content to a token budget.

    A tokenizer without a chat template (the synthetic one of a shape-only dummy model) gets a
    plain-text prompt for ``/v1/completions`` instead: system prompt, input, answer prefix."""

    def __init__(self, tokenizer, system_prompt: str | None = None, prefill_answer: bool = True):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.prefill_answer = prefill_answer
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def messages(self, sample: dict, text: str | None = None) -> tuple[list[dict] | str, bool]:
        from ..quality.prompting import build_chat_messages

        s = sample if text is None else {**sample, "input": text}
        cont = bool(self.prefill_answer and s.get("answer_prefix"))
        if not self.chat:
            parts = [self.system_prompt or "", s["input"], s["answer_prefix"] if cont else ""]
            return "\n\n".join(p for p in parts if p), cont
        return build_chat_messages(s, self.system_prompt, prefill_answer=cont), cont

    def render(self, prompt: list[dict] | str, continue_final: bool) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=not continue_final,
            continue_final_message=continue_final, enable_thinking=False)

    def count(self, prompt: list[dict] | str, continue_final: bool) -> int:
        # vLLM renders the template to text, then tokenizes it without adding special tokens.
        return len(self.tokenizer.encode(self.render(prompt, continue_final), add_special_tokens=False))

    def request_fields(self, fitted: FittedPrompt) -> dict:
        """``GenerationRequest`` keyword arguments for a fitted prompt."""
        if not self.chat:
            return {"prompt": fitted.prompt, "chat": False}
        return {"prompt": fitted.prompt, "chat": True,
                "extra": {"add_generation_prompt": not fitted.continue_final,
                          "continue_final_message": fitted.continue_final}}

    def fit(self, sample: dict, limit: int, max_rounds: int = 8) -> FittedPrompt:
        """A prompt whose templated length is ``<= limit``: unchanged if it fits, else the user
        content keeps its first and last tokens (``truncate_middle``); decoding and re-encoding
        at the cut can merge tokens differently, so the budget shrinks until it fits."""
        from ..quality.prompting import truncate_middle

        prompt, cont = self.messages(sample)
        full = self.count(prompt, cont)
        if full <= limit:
            return FittedPrompt(prompt, cont, full, full)
        content = self.tokenizer.encode(sample["input"], add_special_tokens=False)
        overhead = full - len(content)
        budget = limit - overhead
        for _ in range(max_rounds):
            if budget <= 0:
                break
            kept, _ = truncate_middle(content, budget)
            prompt, cont = self.messages(sample, self.tokenizer.decode(kept))
            n = self.count(prompt, cont)
            if n <= limit:
                return FittedPrompt(prompt, cont, n, full, truncated=True)
            budget -= n - limit
        return FittedPrompt(prompt, cont, None, full, truncated=True,
                            error=f"prompt does not fit: {full} tokens, budget {limit}, template and question "
                                  f"alone take ~{overhead}")


def prompt_budget(max_model_len: int, max_new_tokens: int, max_input_tokens: int | None = None) -> int:
    """Tokens a prompt may take: the window minus the answer, optionally capped lower."""
    budget = int(max_model_len) - int(max_new_tokens)
    if max_input_tokens is not None:
        budget = min(budget, int(max_input_tokens))
    return budget


# ----------------------------------------------------------------------------- materialization


def ruler_auto_reserve(task: str, block: dict, count_tokens, prompter: ChatPrompter) -> int:
    """Chat template + answer prefix + the task's max_new_tokens, measured on one probe sample,
    so templated prompt + answer fit the context length as RULER counts it."""
    from ..datasets.materialize import _ruler_samples

    probe, _ = _ruler_samples(task, {**block, "count": 1, "reserve_tokens": 0}, count_tokens)
    sample = probe[0]
    messages, cont = prompter.messages(sample)
    overhead = prompter.count(messages, cont) - int(sample["length"])
    return max(0, overhead) + int(sample["max_new_tokens"]) + RULER_RESERVE_SLACK


def materialize(spec: dict, out: str | Path, manifest_path: str | Path, tokenizer=None) -> dict:
    """Materialize one dataset described by ``dataset_spec``; returns its manifest."""
    from ..datasets.materialize import materialize_subset

    tok = tokenizer if tokenizer is not None else load_tokenizer(spec["tokenizer"])
    count = token_counter(tok)
    block = dict(spec["block"])
    if spec["benchmark"] == "ruler" and block.get("reserve_tokens") is None:
        chat = spec.get("chat") or {}
        prompter = ChatPrompter(tok, chat.get("system_prompt"), chat.get("prefill_answer", True))
        block["reserve_tokens"] = ruler_auto_reserve(spec["task"], block, count, prompter)
    return materialize_subset(spec["benchmark"], spec["task"], block, count, out, manifest_path,
                              tokenizer=spec["tokenizer"])


def load_materialized(dss: Sequence[Dataset], root: str | Path = DATA_ROOT) -> list[tuple[Dataset, dict, list[dict]]]:
    """Each dataset's manifest and samples, checked against each other."""
    out = []
    for ds in dss:
        data, man = ds.data_path(root), ds.manifest_path(root)
        if not data.is_file() or not man.is_file():
            raise ConfigError(f"E4 dataset {ds.key} is not materialized ({data}); run "
                              f"`snakemake --cores 1 {data}` (rule e4_data) first")
        manifest = read_json(man)
        if manifest.get("file", {}).get("sha256") != sha256_file(data):
            raise ConfigError(f"{data} does not match the sha256 in {man}; rematerialize it (rule e4_data)")
        samples = read_jsonl(data)
        if len(samples) != manifest.get("count"):
            raise ConfigError(f"{data} holds {len(samples)} samples, its manifest says {manifest.get('count')}")
        out.append((ds, manifest, samples))
    return out


# ----------------------------------------------------------------------------- prompt logprobs


def token_logprobs(prompt_logprobs: Sequence[dict | None] | None, token_ids: Sequence[int]) -> list[float | None]:
    """The logprob of each prompt token from vLLM's ``choices[0].prompt_logprobs``: a list aligned
    with the prompt, ``None`` first (nothing predicts the first token), then dicts
    ``{token_id (str in JSON): {"logprob", "rank", "decoded_token"}}`` holding the actual token
    (plus the top-k when asked)."""
    if prompt_logprobs is None:
        raise ValueError("the server returned no prompt_logprobs")
    if len(prompt_logprobs) != len(token_ids):
        raise ValueError(f"prompt_logprobs has {len(prompt_logprobs)} entries for {len(token_ids)} prompt tokens")
    out: list[float | None] = []
    for pos, (entry, tok) in enumerate(zip(prompt_logprobs, token_ids)):
        if entry is None:
            out.append(None)
            continue
        item = entry.get(str(tok), entry.get(tok))
        if item is None:
            raise ValueError(f"prompt_logprobs[{pos}] lacks the prompt token {tok}")
        out.append(float(item["logprob"] if isinstance(item, dict) else item))
    return out


async def fetch_prompt_logprobs(http, base_url: str, model_name: str, token_ids: list[int]) -> dict:
    """One non-streaming ``/v1/completions`` request that returns the prompt's logprobs."""
    body = {"model": model_name, "prompt": token_ids, "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": 0, "stream": False}
    try:
        async with http.post(base_url.rstrip("/") + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}: {(await resp.text())[:300]}"}
            data = await resp.json()
    except Exception as exc:  # timeouts, disconnects: a failed sample is a recorded row
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        logprobs = token_logprobs(data["choices"][0].get("prompt_logprobs"), token_ids)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        return {"error": f"unusable prompt_logprobs: {exc}"}
    return {"logprobs": logprobs, "prompt_tokens": (data.get("usage") or {}).get("prompt_tokens")}


def perplexity_fields(logprobs: Sequence[float | None]) -> dict:
    from ..quality.scorers import perplexity

    vals = [float(x) for x in logprobs if x is not None]
    return {"score": perplexity(vals), "nll_sum": -sum(vals), "scored_tokens": len(vals)}


def meaningful_verdict(weights: str, backend_mode: str, data_source: str | None = None) -> tuple[bool, str]:
    """Whether a score says anything about model quality, and why not."""
    if backend_mode != "real":
        return False, f"backend {backend_mode}: no engine produced these answers"
    if weights != "real":
        return False, f"{weights} weights: the model was never trained, its scores measure nothing about quality"
    if data_source == "fixture":
        return False, "fixture data (tests/fixtures/e4), not the benchmark"
    return True, "real weights, real engine"


def summary_verdict(rows: list[dict], weights: str, backend_mode: str) -> tuple[bool, str]:
    """The run's ``meaningful`` flag, the overall row's (the last of ``rows``), and why."""
    meaningful = bool(rows) and bool(rows[-1]["meaningful"])
    ok, why = meaningful_verdict(weights, backend_mode)
    if ok and not meaningful:
        fixture = [r["dataset"] for r in rows[:-1] if r["data_source"] == "fixture"]
        why = f"fixture data for {', '.join(fixture)}" if fixture else "no dataset row is meaningful"
    return meaningful, why


def dataset_row(ds: Dataset, metric: str, preds: list[dict], *, weights: str, backend_mode: str,
                data_source: str) -> dict:
    """One quality.csv row from the dataset's prediction lines."""
    from ..analysis.stats import mean

    ok = [p for p in preds if p["status"] == "ok"]
    if metric == PERPLEXITY:
        tokens = sum(int(p["scored_tokens"]) for p in ok)
        score = math.exp(sum(float(p["nll_sum"]) for p in ok) / tokens) if tokens else None
        scale = PERPLEXITY
    else:
        score = mean([p["score_percent"] for p in ok])
        scale = PERCENT
    failed = [p for p in preds if p["status"] != "ok"]
    status = "ok" if preds and not failed else ("failed" if not ok else "partial")
    reason = "; ".join(sorted({str(p.get("reason")) for p in failed})) if failed else ("no samples" if not preds else "")
    meaningful, _ = meaningful_verdict(weights, backend_mode, data_source)
    return {
        "benchmark": ds.benchmark, "task": ds.task, "context_tokens": ds.context_tokens, "dataset": ds.name,
        "n": len(preds), "n_ok": len(ok), "n_failed": len(failed), "metric": metric, "score": score,
        "score_scale": scale, "mean_input_tokens": mean([p.get("input_tokens") for p in preds]),
        "n_input_tokens": sum(1 for p in preds if p.get("input_tokens") is not None),
        "truncated": sum(1 for p in preds if p.get("truncated")), "status": status, "reason": reason[:500],
        "meaningful": meaningful, "data_source": data_source,
    }


def overall_row(rows: list[dict]) -> dict:
    """Macro mean of the 0-100 task scores (perplexity rows are on another scale and are left
    out of the score); sample counts, truncation and input length over every row (the mean
    input length over the samples the server counted, ``n_input_tokens`` of each row)."""
    from ..analysis.stats import mean

    percent = [r["score"] for r in rows if r["score_scale"] == PERCENT]
    n = sum(r["n"] for r in rows)
    measured = [(r["mean_input_tokens"], r.get("n_input_tokens", r["n"])) for r in rows
                if r["mean_input_tokens"] is not None]
    tokens = sum(m * k for m, k in measured)
    counted = sum(k for _, k in measured)
    statuses = {r["status"] for r in rows}
    return {
        "benchmark": OVERALL, "task": OVERALL, "context_tokens": None, "dataset": OVERALL,
        "n": n, "n_ok": sum(r["n_ok"] for r in rows), "n_failed": sum(r["n_failed"] for r in rows),
        "metric": "macro_mean_percent", "score": mean(percent), "score_scale": PERCENT,
        "mean_input_tokens": tokens / counted if counted else None, "n_input_tokens": counted,
        "truncated": sum(r["truncated"] for r in rows),
        "status": "ok" if statuses <= {"ok"} and rows else ("failed" if statuses <= {"failed"} else "partial"),
        "reason": "; ".join(f"{r['benchmark']}/{r['dataset']}: {r['status']}" for r in rows if r["status"] != "ok")[:500],
        "meaningful": bool(rows) and all(r["meaningful"] for r in rows),
        "data_source": "+".join(sorted({r["data_source"] for r in rows})),
    }


QUALITY_COLUMNS = ["benchmark", "task", "context_tokens", "n", "metric", "score", "mean_input_tokens", "truncated",
                   "status", "meaningful", "n_ok", "n_failed", "score_scale", "data_source", "dataset", "reason"]


# ----------------------------------------------------------------------------- run


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
            "output_tokens": None, "finish_reason": None, "status": "failed", "reason": None, **stamp}


async def run(session, cfg: dict, ctx, loaded: list[tuple[Dataset, dict, list[dict]]] | None = None,
              manifest_sha256: dict[str, str] | None = None) -> dict:
    """``loaded`` (``load_materialized``) and ``manifest_sha256`` ({dataset key: sha256 of its
    manifest}) come from ``run_standalone``, which checked them before the engine started."""
    from ..records import GenerationRequest

    if loaded is None:
        loaded = load_materialized(datasets(cfg))
    if manifest_sha256 is None:
        manifest_sha256 = {ds.key: sha256_file(ds.manifest_path()) for ds, _, _ in loaded}
    model = session.model
    tok = load_tokenizer(str(model.get("tokenizer") or model["path"]))
    prompter = ChatPrompter(tok, cfg.get("system_prompt"), cfg.get("prefill_answer_prefix", True))
    max_len = int(model["max_model_len"])
    stamp = ctx.stamp()
    seed = int(cfg.get("seed", 0))

    generate: list[tuple[_Pending, Any]] = []
    perplexity: list[tuple[_Pending, list[int]]] = []
    lines_by_ds: dict[str, list[_Pending]] = {}
    for ds, manifest, samples in loaded:
        for k, sample in enumerate(samples):
            item = _Pending(ds, sample, _base_line(ds, sample, stamp))
            lines_by_ds.setdefault(ds.key, []).append(item)
            if sample["metric"] == PERPLEXITY:
                ids = tok.encode(sample["input"], add_special_tokens=False)
                limit = prompt_budget(max_len, 1, cfg.get("max_input_tokens"))
                if len(ids) > limit:  # a window, not a question: keep its start, drop the tail
                    ids = ids[:limit]
                    item.line.update(truncated=True, truncated_at="engine")
                item.line["input_tokens_local"] = len(ids)
                perplexity.append((item, ids))
                continue
            limit = prompt_budget(max_len, item.line["max_new_tokens"], cfg.get("max_input_tokens"))
            fitted = prompter.fit(sample, limit)
            item.line["input_tokens_local"] = fitted.prompt_tokens
            if fitted.truncated:
                item.line.update(truncated=True, truncated_at="engine")
            if fitted.error:
                item.line["reason"] = fitted.error
                continue
            req = GenerationRequest(
                request_id=f"{ds.key}/{k}", max_tokens=item.line["max_new_tokens"],
                prompt_tokens_target=fitted.prompt_tokens, temperature=0.0, seed=seed, ignore_eos=False,
                **prompter.request_fields(fitted))
            generate.append((item, req))

    measured = await session.measure([r for _, r in generate], max_concurrency=int(cfg["max_concurrency"]),
                                     desc="e4 generate")
    for (item, _), rec in zip(generate, measured["records"]):
        line = item.line
        line.update(input_tokens=rec.prompt_tokens, output_tokens=rec.output_tokens, finish_reason=rec.finish_reason)
        if not rec.ok:
            line["reason"] = rec.error
            continue
        line["prediction"] = rec.text
        line["score"], line["score_percent"] = score_sample(item.sample, rec.text)
        line["status"] = "ok"

    ppl_duration = await _run_perplexity(session, perplexity, int(cfg["max_concurrency"]))

    rows, predictions = [], []
    for ds, manifest, samples in loaded:
        items = lines_by_ds.get(ds.key, [])
        preds = [i.line for i in items]
        predictions += preds
        metric = samples[0]["metric"] if samples else "unknown"
        rows.append(dataset_row(ds, metric, preds, weights=ctx.weights, backend_mode=ctx.backend_mode,
                                data_source=data_source_kind(manifest)))
    rows.append(overall_row(rows))
    _write_outputs(ctx, rows, predictions)

    meaningful, why = summary_verdict(rows, ctx.weights, ctx.backend_mode)
    by_request = {req.request_id: item for item, req in generate}
    mismatch = [by_request[r.request_id].line["id"] for r in prompt_length_mismatches(measured["records"])]
    summary = {
        **stamp,
        "meaningful": meaningful,
        "meaningful_reason": why,
        "rows": rows,
        "datasets": {ds.key: {"manifest": str(ds.manifest_path()), "manifest_sha256": manifest_sha256[ds.key],
                              "file_sha256": m["file"]["sha256"], "count": m["count"], "source": m["source"],
                              "seed": m["seed"], "tokenizer": m.get("tokenizer")} for ds, m, _ in loaded},
        "dataset_manifest_sha256": combine_manifest_digests(manifest_sha256),
        "decoding": {"chat_template": prompter.chat, "enable_thinking": False, "temperature": 0.0, "ignore_eos": False,
                     "seed": seed, "prefill_answer_prefix": bool(cfg.get("prefill_answer_prefix", True)),
                     "system_prompt": cfg.get("system_prompt"), "max_new_tokens": "per task (sample max_new_tokens)",
                     "max_model_len": max_len, "max_input_tokens": cfg.get("max_input_tokens")},
        "perplexity_method": "exp(mean NLL) over prompt tokens 2..n from vLLM prompt_logprobs on /v1/completions; "
                             "task score = token-weighted over windows",
        "samples": len(predictions),
        "failed": sum(1 for p in predictions if p["status"] != "ok"),
        "truncated": sum(1 for p in predictions if p["truncated"]),
        "prompt_tokens_mismatch": mismatch,
        "generate_duration_s": measured["duration_s"],
        "perplexity_duration_s": ppl_duration,
        "engine": measured["engine"],
        "measured_on": {"scores": "client (scorers on the served text)", "input_tokens": "server usage",
                        "durations": "client"},
    }
    write_json(ctx.outdir / "summary.json", summary)
    overall = rows[-1]
    return {"samples": summary["samples"], "failed": summary["failed"], "truncated": summary["truncated"],
            "overall_score": overall["score"], "meaningful": summary["meaningful"]}


async def _run_perplexity(session, items: list[tuple[_Pending, list[int]]], max_concurrency: int) -> float | None:
    """Wall time of the prompt-logprob requests; None when none was sent (the report prints n/a)."""
    import time

    if not items:
        return None
    base_url = getattr(session.backend, "base_url", None)
    if base_url is None:
        for item, _ in items:
            item.line["reason"] = f"backend {session.backend_mode} has no HTTP endpoint for prompt logprobs"
        return None
    sem = asyncio.Semaphore(max_concurrency)
    timeout = float(session.backend.serving.get("request_timeout_s", 900))
    t0 = time.perf_counter()
    async with http_session(timeout) as http:
        async def one(item: _Pending, ids: list[int]) -> None:
            async with sem:
                got = await fetch_prompt_logprobs(http, base_url, session.backend.served_name, ids)
            line = item.line
            if "error" in got:
                line["reason"] = got["error"]
                return
            line["input_tokens"] = got.get("prompt_tokens")
            try:
                line.update(perplexity_fields(got["logprobs"]))
            except ValueError as exc:
                line["reason"] = str(exc)
                return
            line["status"] = "ok"

        await asyncio.gather(*(one(i, ids) for i, ids in items))
    return time.perf_counter() - t0


def _write_outputs(ctx, rows: list[dict], predictions: list[dict]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)[QUALITY_COLUMNS]
    frame["context_tokens"] = frame["context_tokens"].astype("Int64")  # "512", or empty for non-RULER rows
    for key, value in ctx.stamp().items():
        frame[key] = value
    write_csv(ctx.outdir / "quality.csv", frame)
    write_jsonl(ctx.outdir / "predictions.jsonl", predictions)


def run_standalone(config: dict, outdir: str | Path) -> dict:
    """One engine start (``runner.run_experiment``) with the datasets' manifests in the config hash."""
    from .runner import run_experiment

    loaded = load_materialized(datasets(config["experiments"]["e4"]))  # fail before the engine starts
    manifest_sha256 = {ds.key: sha256_file(ds.manifest_path()) for ds, _, _ in loaded}
    body = partial(run, loaded=loaded, manifest_sha256=manifest_sha256)
    return run_experiment("e4", config, outdir, body, dataset_manifest_sha256=combine_manifest_digests(manifest_sha256))


# ----------------------------------------------------------------------------- CLI


def materialize_all(specs: Sequence[dict], root: str | Path = DATA_ROOT) -> list[dict]:
    """Materialize every dataset (``dataset_spec`` each) under ``root``; one tokenizer load each."""
    tokenizers: dict[str, Any] = {}
    manifests = []
    for spec in specs:
        if spec["tokenizer"] not in tokenizers:
            tokenizers[spec["tokenizer"]] = load_tokenizer(spec["tokenizer"])
        ds = Dataset(spec["benchmark"], spec["name"], spec["task"], spec.get("context_tokens"))
        manifests.append(materialize(spec, ds.data_path(root), ds.manifest_path(root),
                                     tokenizer=tokenizers[spec["tokenizer"]]))
    return manifests


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m context_research.experiments.e4 materialize --specs-json '[...]' [--root results/data]``"""
    parser = argparse.ArgumentParser(prog="python -m context_research.experiments.e4")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("materialize", help="write the datasets' JSONL and manifests (rule e4_data)")
    p.add_argument("--specs-json", required=True, help="a list of dataset_spec() as JSON")
    p.add_argument("--root", default=str(DATA_ROOT))
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        specs = json.loads(args.specs_json)
        manifests = materialize_all(specs, args.root)
    except ContextResearchError as exc:
        # one line: the rule prints the log's last line as its error
        print(f"context-research: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for spec, manifest in zip(specs, manifests):
        print(json.dumps({"dataset": f"{spec['benchmark']}/{spec['name']}", "count": manifest["count"],
                          "source": manifest["source"].get("kind"), "tokenizer": manifest["tokenizer"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
