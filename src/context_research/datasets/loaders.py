"""Load LongBench, InfiniteBench and PG19 records and turn them into prompt samples.

A benchmark block of the config (``experiments.e4.benchmarks.<benchmark>``) may hold:

* ``local_dir``: folder with ``<task>.jsonl`` (or ``data/<task>.jsonl``) in the upstream schema;
  PG19 also accepts ``test.jsonl`` / ``pg19.jsonl``.
* ``files``: ``{task: path}`` overriding ``local_dir`` for single tasks. A file named here must
  exist: it is never replaced by ``local_dir`` (whose default is the project's fixtures) or the hub.
* ``use_hub`` (default true), ``hub_id``, ``revision``, ``cache_dir``: go through
  ``datasets.load_dataset`` (hub or local HF cache) when no local file is found.
* ``seed`` (default 0), ``count`` (default: all records), ``max_input_tokens`` (middle
  truncation of the whole prompt), PG19 ``context_lengths`` / ``context_tokens`` and
  ``window_tokens`` (``pg19_sample``).

A local file wins over the hub. If neither yields data, ``ConfigError`` names the dataset,
the task, the key to set and what to download. A malformed file is a ``ConfigError`` naming the
file, its line (1-based, as an editor counts) and the config key that points at it.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from context_research.datasets import templates as T
from context_research.errors import ConfigError
from context_research.hashing import sha256_file
from context_research.quality.prompting import truncate_middle_text
from context_research.quality.scorers import choice_references

CountTokens = Callable[[str], int]

BENCHMARKS = ("longbench", "infinitebench", "pg19")
HUB_IDS = {"longbench": T.LONGBENCH_HUB_ID, "infinitebench": T.INFINITEBENCH_HUB_ID, "pg19": T.PG19_HUB_ID}
KEY_PREFIX = "experiments.e4.benchmarks"

REQUIRED_FIELDS = {
    "longbench": ("input", "context", "answers", "_id"),
    "infinitebench": ("id", "context", "input", "answer"),
    "pg19": ("short_book_title", "text"),
}


def benchmark_block(benchmark: str, cfg: dict | None) -> dict:
    """Accept either the benchmark's own block or a dict with ``benchmarks: {name: block}``
    (e.g. the whole ``experiments.e4`` block; its ``seed`` is the default seed)."""
    cfg = dict(cfg or {})
    if isinstance(cfg.get("benchmarks"), dict):
        block = dict(cfg["benchmarks"].get(benchmark) or {})
        if "seed" in cfg:
            block.setdefault("seed", cfg["seed"])
        return block
    return cfg


def _download_hint(benchmark: str, task: str) -> str:
    hub = HUB_IDS[benchmark]
    if benchmark == "longbench":
        return (f"download data.zip of the hub dataset `{hub}` (e.g. `huggingface-cli download {hub} data.zip "
                f"--repo-type dataset`), unzip it, and point the key at the folder holding `{task}.jsonl`")
    if benchmark == "infinitebench":
        return (f"download `{task}.jsonl` of the hub dataset `{hub}` (e.g. `huggingface-cli download {hub} "
                f"{task}.jsonl --repo-type dataset --local-dir <dir>`) and point the key at <dir>")
    return (f"export the test split of the hub dataset `{hub}` to JSONL (fields short_book_title, "
            f"publication_date, url, text) as `<dir>/{task}.jsonl`, and point the key at <dir>")


def files_key(benchmark: str, task: str) -> str:
    return f"{KEY_PREFIX}.{benchmark}.files.{task}"


def explicit_file_problem(benchmark: str, task: str, block: dict) -> str | None:
    """Why the file ``files.<task>`` names cannot be read (it does not exist, or is a folder)."""
    files = block.get("files") or {}
    if task not in files:
        return None
    path = Path(str(files[task])).expanduser()
    if path.is_file():
        return None
    what = "is a folder, not a file" if path.is_dir() else "does not exist"
    return (f"config key '{files_key(benchmark, task)}': {path} {what} (resolved against {Path.cwd()}). "
            f"Fix the path, or remove the key to use {KEY_PREFIX}.{benchmark}.local_dir")


def explicit_file(benchmark: str, task: str, block: dict) -> Path | None:
    """The file ``files.<task>`` names, if it does; a ``ConfigError`` naming the key and the path
    if that file does not exist (never a silent fall back to ``local_dir`` or the fixtures)."""
    problem = explicit_file_problem(benchmark, task, block)
    if problem is not None:
        raise ConfigError(problem)
    files = block.get("files") or {}
    return Path(str(files[task])).expanduser() if task in files else None


def local_candidates(benchmark: str, task: str, block: dict) -> list[Path]:
    """The local files ``load_samples`` tries for ``task``, in order: only ``files.<task>`` when it
    is set (and it must exist, see ``explicit_file``), else ``local_dir``'s candidates."""
    explicit = explicit_file(benchmark, task, block)
    if explicit is not None:
        return [explicit]
    cands: list[Path] = []
    if block.get("local_dir"):
        d = Path(block["local_dir"])
        names = [f"{task}.jsonl"]
        if benchmark == "pg19":
            names += ["test.jsonl", "pg19.jsonl"]
        for n in names:
            cands += [d / n, d / "data" / n]
    return cands


def read_records(path: str | Path, key: str) -> tuple[list[dict], list[int]]:
    """The JSON objects of a JSONL file and the line (1-based, blank lines counted) of each. A line
    that is not a JSON object is a ``ConfigError`` naming the file, that line, and ``key``."""
    rows: list[dict] = []
    lines: list[int] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} (config key '{key}') is not UTF-8 text: {exc}") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {n}, column {exc.colno}: not valid JSON ({exc.msg}); "
                              f"config key '{key}' points at this file, which must be JSONL "
                              f"(one JSON object per line)") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}, line {n}: a JSON {type(row).__name__}, not an object; config key "
                              f"'{key}' points at this file, which must be JSONL (one JSON object per line)")
        rows.append(row)
        lines.append(n)
    return rows, lines


def _check_schema(benchmark: str, task: str, rows: list[dict], where: str, lines: list[int] | None = None,
                  key: str | None = None) -> None:
    need = REQUIRED_FIELDS[benchmark]
    for j, r in enumerate(rows):
        missing = [k for k in need if k not in r]
        if missing:
            at = f"line {lines[j]} of {where}" if lines else f"record {j} of {where}"
            via = f" (config key '{key}')" if key else ""
            raise ConfigError(f"{benchmark}/{task}: {at}{via} lacks field(s) {missing}; "
                              f"expected the upstream schema with {list(need)}")


def load_records(benchmark: str, task: str, cfg: dict | None) -> tuple[list[dict], dict]:
    """Records of one task in the upstream schema, and a description of their source:
    ``{"kind": "local", "path", "sha256", "revision"}`` or
    ``{"kind": "hub", "hub_id", "config", "split", "revision", "fingerprint"}``."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r} under {KEY_PREFIX}; known: {list(BENCHMARKS)}")
    block = benchmark_block(benchmark, cfg)
    key = f"{KEY_PREFIX}.{benchmark}.local_dir"
    # the key that names the file read: files.<task> when set, else local_dir
    source_key = files_key(benchmark, task) if task in (block.get("files") or {}) else key
    tried: list[str] = []
    for path in local_candidates(benchmark, task, block):
        tried.append(str(path))
        if path.is_file():
            rows, lines = read_records(path, source_key)
            _check_schema(benchmark, task, rows, str(path), lines, source_key)
            return rows, {"kind": "local", "path": str(path), "sha256": sha256_file(path),
                          "revision": block.get("revision")}
    hub_error = "the hub was not tried (use_hub: false)"
    if block.get("use_hub", True):
        hub = block.get("hub_id") or HUB_IDS[benchmark]
        try:
            rows, info = _load_hub(benchmark, task, hub, block)
            _check_schema(benchmark, task, rows, f"hub dataset {hub}")
            return rows, info
        except ConfigError:
            raise
        except Exception as exc:  # network, missing cache, schema or script errors
            hub_error = f"datasets.load_dataset({hub!r}) failed: {type(exc).__name__}: {str(exc)[:300]}"
    where = ", ".join(tried) if tried else f"nothing ({key} is not set)"
    raise ConfigError(
        f"{benchmark} task {task!r}: no data. Looked for local JSONL at: {where}; {hub_error}. "
        f"Set `{key}` (or `{KEY_PREFIX}.{benchmark}.files.{task}`): {_download_hint(benchmark, task)}."
    )


def _load_hub(benchmark: str, task: str, hub: str, block: dict) -> tuple[list[dict], dict]:
    import datasets  # the Hugging Face package (absolute import)

    kw: dict[str, Any] = {}
    if block.get("cache_dir"):
        kw["cache_dir"] = block["cache_dir"]
    if block.get("revision"):
        kw["revision"] = block["revision"]
    if benchmark == "longbench":
        config, split = task, "test"
        ds = datasets.load_dataset(hub, task, split="test", **kw)
    elif benchmark == "infinitebench":
        config, split = None, task
        ds = datasets.load_dataset(hub, split=task, **kw)
    else:
        config, split = None, "test"
        ds = datasets.load_dataset(hub, split="test", **kw)
    rows = [dict(r) for r in ds]
    return rows, {"kind": "hub", "hub_id": hub, "config": config, "split": split,
                  "revision": block.get("revision"), "fingerprint": getattr(ds, "_fingerprint", None)}


# ----------------------------------------------------------------------------- selection


def record_id(benchmark: str, record: dict, index: int) -> str:
    if benchmark == "longbench":
        return str(record.get("_id", index))
    if benchmark == "infinitebench":
        return str(record.get("id", index))
    url = str(record.get("url") or "")
    m = re.search(r"(\d+)/?$", url)
    if m:
        return f"pg19-{m.group(1)}"
    slug = re.sub(r"[^a-z0-9]+", "-", str(record.get("short_book_title", "")).lower()).strip("-")
    return f"pg19-{slug or index}"


def select_subset(records: Sequence[dict], ids: Sequence[str], count: int | None, seed: int) -> list[tuple[str, dict]]:
    """Sort by id, then ``random.Random(seed).sample``; ``count=None`` (or >= len) keeps all,
    still in the seeded order."""
    pairs = sorted(zip(ids, records), key=lambda p: p[0])
    if len({i for i, _ in pairs}) != len(pairs):
        raise ConfigError("dataset has duplicate record ids; cannot select a stable subset")
    k = len(pairs) if count is None else min(int(count), len(pairs))
    if k < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    return random.Random(seed).sample(pairs, k)


# ----------------------------------------------------------------------------- samples


def _maybe_truncate(text: str, block: dict, count_tokens: CountTokens) -> tuple[str, bool]:
    limit = block.get("max_input_tokens")
    if limit is None:
        return text, False
    return truncate_middle_text(text, int(limit), count_tokens)


def _templated_sample(benchmark: str, tasks: dict[str, T.TaskSpec], task: str, record: dict,
                      count_tokens: CountTokens, block: dict | None) -> dict:
    """The fields a LongBench or InfiniteBench sample shares: the task's upstream template filled
    with the record, optionally middle-truncated to ``max_input_tokens``, its metric, generation
    length, and how upstream sends it (chat template or not, system message, truncation)."""
    spec = tasks.get(task)
    if spec is None:
        raise ConfigError(f"{benchmark}: no upstream prompt template for task {task!r}; known: {sorted(tasks)}")
    if benchmark == "longbench":
        text = T.render_longbench(spec, record)
    else:
        text = T.render_infinitebench(task, spec, record)
    text, truncated = _maybe_truncate(text, block or {}, count_tokens)
    return {
        "benchmark": benchmark,
        "task": task,
        "input": text,
        "answer_prefix": "",
        "metric": spec.metric,
        "max_new_tokens": spec.max_new_tokens,
        "chat_template": spec.chat_template,
        "system_prompt": spec.system_prompt,
        "truncation": spec.truncation,
        "stop_at_newline": spec.stop_at_newline,
        "length": int(count_tokens(text)),
        "truncated": truncated,
    }


def longbench_sample(task: str, record: dict, count_tokens: CountTokens, block: dict | None = None) -> dict:
    sample = _templated_sample("longbench", T.LONGBENCH_TASKS, task, record, count_tokens, block)
    answers = record["answers"]
    return {
        **sample,
        "id": str(record["_id"]),
        "outputs": [answers] if isinstance(answers, str) else [str(a) for a in answers],
        "metric_kwargs": {"all_classes": list(record.get("all_classes") or [])},
        "source_length": record.get("length"),
    }


def infinitebench_sample(task: str, record: dict, count_tokens: CountTokens, block: dict | None = None) -> dict:
    options = [str(o) for o in (record.get("options") or [])]
    sample = _templated_sample("infinitebench", T.INFINITEBENCH_TASKS, task, record, count_tokens, block)
    answer = record["answer"]
    answers = [str(answer)] if not isinstance(answer, list) else [str(a) for a in answer]
    if task in ("longbook_choice_eng", "code_debug") and options:
        answers = choice_references(answers, options)
    return {**sample, "id": str(record["id"]), "outputs": answers, "metric_kwargs": {}}


def _words_reaching(words: Sequence[str], need: int, count_tokens: CountTokens, *, start: int = 0,
                    stop: int | None = None) -> int | None:
    """Fewest words whose joined text has ``count_tokens >= need``: ``words[start:start + k]``,
    or, with ``stop``, the ``k`` words right before it (``words[stop - k:stop]``). None when
    all of them do not reach ``need``. Every word takes at least one token, so no more than
    ``need`` words are tried (a long book is never tokenized whole)."""
    if need <= 0:
        return 0
    avail = (stop if stop is not None else len(words) - start)
    hi = min(avail, need)

    def text(k: int) -> str:
        return " ".join(words[stop - k:stop]) if stop is not None else " ".join(words[start:start + k])

    if hi <= 0 or count_tokens(text(hi)) < need:
        return None
    lo = 0  # text(lo) < need <= text(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(text(mid)) >= need:
            hi = mid
        else:
            lo = mid
    return hi


def pg19_sample(sid: str, record: dict, count_tokens: CountTokens, context_tokens: int, window_tokens: int,
                max_context_tokens: int, task: str = "pg19") -> dict | None:
    """One long-context perplexity sample of a book: a scored window of ``window_tokens`` tokens
    that starts after the book's first ``max_context_tokens`` tokens, and the
    ``context_tokens`` tokens right before it as context. The window is the same for every
    context length, so lengths differ only in how much of the book precedes it.

    ``context`` and ``input`` (the window, with the space that precedes it in the book) hold
    at least that many tokens; the run takes exactly the last ``context_tokens`` of the context
    and the first ``window_tokens`` of the window (``perplexity.pg19_token_ids``). Whitespace
    is normalised to single spaces. None when the book is too short."""
    if window_tokens <= 0:
        raise ConfigError(f"{KEY_PREFIX}.pg19.window_tokens must be > 0, got {window_tokens}")
    if not 0 <= context_tokens <= max_context_tokens:
        raise ConfigError(f"pg19: context length {context_tokens} must be in [0, {max_context_tokens}]")
    words = str(record["text"]).split()
    window_start = _words_reaching(words, max_context_tokens, count_tokens)
    if window_start is None:
        return None
    window_words = _words_reaching(words, window_tokens, count_tokens, start=window_start)
    context_words = _words_reaching(words, context_tokens, count_tokens, stop=window_start)
    if window_words is None or context_words is None:
        return None
    context = " ".join(words[window_start - context_words:window_start])
    window = " " + " ".join(words[window_start:window_start + window_words])
    return {
        "id": sid,
        "benchmark": "pg19",
        "task": task,
        "context": context,
        "input": window,
        "outputs": [],
        "answer_prefix": "",
        "metric": "perplexity",
        "metric_kwargs": {},
        "max_new_tokens": 1,
        "context_tokens": int(context_tokens),
        "window_tokens": int(window_tokens),
        "length": int(context_tokens) + int(window_tokens),
        "truncated": False,
        "window": {"start_word": window_start, "n_words": window_words, "context_words": context_words,
                   "book_words": len(words)},
        "title": record.get("short_book_title"),
        "url": record.get("url"),
        "publication_date": record.get("publication_date"),
    }


def pg19_lengths(block: dict) -> tuple[int, int, list[int]]:
    """(this dataset's context length, window tokens, every configured context length)."""
    lengths = sorted({int(x) for x in (block.get("context_lengths") or [])})
    context = block.get("context_tokens")
    if context is None:
        if not lengths:
            raise ConfigError(f"{KEY_PREFIX}.pg19.context_lengths: give at least one context length in tokens")
        context = lengths[-1]
    return int(context), int(block.get("window_tokens", 1024)), sorted(set(lengths) | {int(context)})


def load_samples(benchmark: str, task: str, cfg: dict | None, count_tokens: CountTokens) -> tuple[list[dict], dict]:
    """Load, select (seeded) and render samples; returns ``(samples, source_info)``."""
    block = benchmark_block(benchmark, cfg)
    records, source = load_records(benchmark, task, cfg)
    seed = int(block.get("seed", 0))
    ids = [record_id(benchmark, r, j) for j, r in enumerate(records)]
    chosen = select_subset(records, ids, block.get("count"), seed)
    if benchmark == "longbench":
        samples = [longbench_sample(task, r, count_tokens, block) for _, r in chosen]
    elif benchmark == "infinitebench":
        samples = [infinitebench_sample(task, r, count_tokens, block) for _, r in chosen]
    else:
        context, window, lengths = pg19_lengths(block)
        built = [(sid, pg19_sample(sid, r, count_tokens, context, window, lengths[-1], task)) for sid, r in chosen]
        samples = [s for _, s in built if s is not None]
        too_short = [sid for sid, s in built if s is None]
        if too_short:  # the books cannot hold the longest context plus the window
            source = {**source, "skipped_too_short": too_short}
    return samples, source
