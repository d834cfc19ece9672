"""Materialize one benchmark task to ``results/data/{benchmark}/{task}.jsonl`` plus a manifest.

The output is a pure function of the source data, the config block and ``count_tokens``:
no timestamps, no absolute output paths, sorted JSON keys, so two runs are byte-identical.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from context_research.datasets import loaders, ruler
from context_research.errors import ConfigError
from context_research.hashing import sha256_file, sha256_obj
from context_research.io import read_jsonl, write_json, write_jsonl

CountTokens = Callable[[str], int]
MANIFEST_VERSION = 1


def _ruler_samples(task: str, block: dict, count_tokens: CountTokens) -> tuple[list[dict], dict]:
    key = f"{loaders.KEY_PREFIX}.ruler"
    if "context_tokens" not in block:
        raise ConfigError(f"ruler task {task!r}: set `{key}.context_tokens` (the target prompt length in tokens)")
    params = dict((block.get("task_params") or {}).get(task) or {})
    if "reserve_tokens" in block:
        params.setdefault("reserve_tokens", int(block["reserve_tokens"]))
    source: dict = {"kind": "synthetic", "generator": f"context_research.datasets.ruler:{task}", "params": dict(params)}
    if ruler.GENERATORS.get(task) is ruler.qa:
        path = block.get("qa_records")
        if not path or not Path(path).is_file():
            raise ConfigError(
                f"ruler task {task!r} needs SQuAD-style records: set `{key}.qa_records` to a JSONL file with "
                f"question/context/answers (e.g. exported from the hub dataset `rajpurkar/squad`), or drop the task"
            )
        params["records"] = read_jsonl(path)
        source.update(kind="synthetic+local", path=str(path), sha256=sha256_file(path))
    samples = ruler.generate(task, int(block.get("count", 10)), int(block["context_tokens"]), count_tokens,
                             int(block.get("seed", 0)), **params)
    for s in samples:
        s["benchmark"] = "ruler"
        s.setdefault("metric_kwargs", {})
        s.setdefault("truncated", False)
    return samples, source


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
        samples, source = _ruler_samples(task, block, count_tokens)
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
        "samples": [
            {"id": s["id"], "length": s["length"], "sha256": sha256_obj(s), "truncated": bool(s.get("truncated", False))}
            for s in samples
        ],
        "file": {"name": out_jsonl.name, "sha256": sha256_file(out_jsonl)},
    }
    write_json(manifest_path, manifest)
    return manifest
