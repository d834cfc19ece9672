"""Materialize one benchmark task to ``results/data/{benchmark}/{task}.jsonl`` plus a manifest.

The output is a pure function of the source data, the config block and ``count_tokens``:
no timestamps, no absolute output paths, sorted JSON keys, so two runs are byte-identical.

``materialize_subset`` takes a token counter; ``materialize`` / ``materialize_all`` take
``dataset_spec``s and the served model's tokenizer (rule ``e4_data``, through
``context-research materialize``: ``materialize_command``); ``load_materialized`` reads them
back, checked against their manifests, before E4's engine starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from context_research.datasets import loaders, ruler, templates
from context_research.datasets.specs import DATA_ROOT, Dataset, spec_dataset
from context_research.errors import ConfigError
from context_research.hashing import sha256_file, sha256_obj
from context_research.io import read_json, read_jsonl, write_json, write_jsonl
from context_research.models import require_tokenizer
from context_research.quality.prompting import ChatPrompter, load_tokenizer, token_counter

CountTokens = Callable[[str], int]
MANIFEST_VERSION = 2  # 2: prompt_template (upstream prompts, issue #16)
# Headroom of the automatic RULER reserve: templated lengths differ by a token or two between
# samples (the answer prefix names different keys), and the reserve is measured on one of them.
RULER_RESERVE_SLACK = 8
RULER_KEY = "experiments.e4.ruler"  # RULER's block sits beside `benchmarks`, not in it


def ruler_samples(task: str, block: dict, count_tokens: CountTokens) -> tuple[list[dict], dict]:
    key = RULER_KEY
    if "context_tokens" not in block:
        raise ConfigError(f"ruler task {task!r}: no target length (context_tokens); set `{key}.context_lengths` "
                          f"(the target prompt lengths in tokens)")
    params = dict((block.get("task_params") or {}).get(task) or {})
    if "reserve_tokens" in block:
        params.setdefault("reserve_tokens", int(block["reserve_tokens"]))
    source: dict = {"kind": "synthetic", "generator": f"context_research.datasets.ruler:{task}", "params": dict(params)}
    if ruler.GENERATORS.get(task) is ruler.qa:
        path = block.get("qa_records")
        if not path:
            raise ConfigError(
                f"ruler task {task!r} needs SQuAD-style records: set `{key}.qa_records` to a JSONL file with "
                f"question/context/answers (e.g. exported from the hub dataset `rajpurkar/squad`), or drop the task"
            )
        if not Path(path).is_file():
            raise ConfigError(f"config key '{key}.qa_records': {path} does not exist (resolved against "
                              f"{Path.cwd()}); ruler task {task!r} reads SQuAD-style records from it")
        params["records"], _ = loaders.read_records(path, f"{key}.qa_records")
        source.update(kind="synthetic+local", path=str(path), sha256=sha256_file(path))
    samples = ruler.generate(task, int(block.get("count", 10)), int(block["context_tokens"]), count_tokens,
                             int(block.get("seed", 0)), **params)
    for s in samples:
        s["benchmark"] = "ruler"
        s.setdefault("metric_kwargs", {})
        s.setdefault("truncated", False)
    return samples, source


def prompt_template_source(benchmark: str) -> dict | None:
    """Where the benchmark's prompt wording comes from (repository, commit, file), or None
    (PG19 has no prompt: its windows are scored as they are)."""
    if benchmark in ("longbench", "infinitebench"):
        return templates.prompt_source(benchmark)
    if benchmark == "ruler":
        return dict(ruler.PROMPT_SOURCE)
    return None


def materialize_subset(
    benchmark: str,
    task: str,
    cfg: dict | None,
    count_tokens: CountTokens,
    out_jsonl: str | os.PathLike,
    manifest_path: str | os.PathLike,
    *,
    tokenizer: str | None = None,
) -> dict:
    """Write the samples of one task as JSONL and its manifest; return the manifest.

    ``benchmark`` is ``ruler``, ``longbench``, ``infinitebench`` or ``pg19``; ``cfg`` is the
    ``experiments.e4.benchmarks.<benchmark>`` block (or a dict with ``benchmarks``; see
    ``loaders.benchmark_block``). ``tokenizer`` (an id/path) is recorded for provenance.
    """
    block = loaders.benchmark_block(benchmark, cfg)
    seed = int(block.get("seed", 0))
    if benchmark == "ruler":
        samples, source = ruler_samples(task, block, count_tokens)
    else:
        samples, source = loaders.load_samples(benchmark, task, cfg, count_tokens)
    out_jsonl = Path(out_jsonl)
    write_jsonl(out_jsonl, samples)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "benchmark": benchmark,
        "task": task,
        "source": source,
        "seed": seed,
        "count": len(samples),
        "requested_count": block.get("count"),
        "config": {k: v for k, v in sorted(block.items()) if k not in ("files",)},
        "tokenizer": tokenizer,
        "prompt_template": prompt_template_source(benchmark),
        "samples": [
            {"id": s["id"], "length": s["length"], "sha256": sha256_obj(s), "truncated": bool(s.get("truncated", False))}
            for s in samples
        ],
        "file": {"name": out_jsonl.name, "sha256": sha256_file(out_jsonl)},
    }
    write_json(manifest_path, manifest)
    return manifest


# ----------------------------------------------------------------------------- from dataset specs


def ruler_auto_reserve(task: str, block: dict, count_tokens: CountTokens, prompter: ChatPrompter) -> int:
    """Chat template + answer prefix + the task's max_new_tokens, measured on one probe sample,
    so templated prompt + answer fit the context length as RULER counts it."""
    probe, _ = ruler_samples(task, {**block, "count": 1, "reserve_tokens": 0}, count_tokens)
    sample = probe[0]
    messages, cont = prompter.messages(sample)
    overhead = prompter.count(messages, cont) - int(sample["length"])
    return max(0, overhead) + int(sample["max_new_tokens"]) + RULER_RESERVE_SLACK


def served_tokenizer(source: str):
    """The served model's tokenizer (``specs.tokenizer_source``); a local folder without tokenizer
    files is refused in our words first (transformers' error would point at sentencepiece)."""
    require_tokenizer(source, "models.<profile>.tokenizer, else models.<profile>.source",
                      tokenizer_key="models.<profile>.tokenizer")
    return load_tokenizer(source)


def materialize(spec: dict, out: str | Path, manifest_path: str | Path, tokenizer=None) -> dict:
    """Materialize one dataset described by ``dataset_spec``; returns its manifest."""
    tok = tokenizer if tokenizer is not None else served_tokenizer(spec["tokenizer"])
    count = token_counter(tok)
    block = dict(spec["block"])
    if spec["benchmark"] == "ruler" and block.get("reserve_tokens") is None:
        chat = spec.get("chat") or {}
        prompter = ChatPrompter(tok, chat.get("system_prompt"), chat.get("prefill_answer", True))
        block["reserve_tokens"] = ruler_auto_reserve(spec["task"], block, count, prompter)
    return materialize_subset(spec["benchmark"], spec["task"], block, count, out, manifest_path,
                              tokenizer=spec["tokenizer"])


def materialize_all(specs: Sequence[dict], root: str | Path = DATA_ROOT) -> list[dict]:
    """Materialize every dataset (``dataset_spec`` each) under ``root``; one tokenizer load each."""
    tokenizers: dict[str, Any] = {}
    manifests = []
    for spec in specs:
        if spec["tokenizer"] not in tokenizers:
            tokenizers[spec["tokenizer"]] = served_tokenizer(spec["tokenizer"])
        ds = spec_dataset(spec)
        manifests.append(materialize(spec, ds.data_path(root), ds.manifest_path(root),
                                     tokenizer=tokenizers[spec["tokenizer"]]))
    return manifests


def materialize_command(specs: list[dict], root: str | Path = DATA_ROOT) -> list[dict]:
    """``context-research materialize``: ``materialize_all``, then one line per dataset to print
    (as JSON): its key, sample count, source kind and tokenizer."""
    manifests = materialize_all(specs, root)
    return [{"dataset": f"{spec['benchmark']}/{spec['name']}", "count": manifest["count"],
             "source": manifest["source"].get("kind"), "tokenizer": manifest["tokenizer"]}
            for spec, manifest in zip(specs, manifests)]


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
