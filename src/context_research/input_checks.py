"""Settings that the schema allows but no run can serve, found before any engine starts.

``config.validate_config`` (so ``context-research validate``, the Snakemake DAG build and every
run) refuses, naming the key and the file:

* an experiment none of whose requests fits the served context (``max_tokens`` plus its shortest
  prompt above ``max_model_len``): every request would be refused after a minute of engine start;
* a model source or tokenizer given as a path where nothing is;
* a tokenizer file of the served model that does not parse (a truncated ``tokenizer.json``);
* E2's trace file: missing, not JSONL, invalid values, or requests longer than the context.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from .errors import ConfigError

Problem = tuple[str, str]  # (dotted config key, message)

# experiment -> (its prompt-length keys, its output-length key); the context is the profile's
# max_model_len, E6's own (experiments.e6.max_model_len) for E6.
LENGTH_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "e0": (("prompt_tokens",), "max_tokens"),
    "e1": (("prompt_tokens",), "max_tokens"),
    "e2": (("prompt_tokens", "capacity_prompt_tokens"), "max_tokens"),
    "e3": (("prompt_tokens",), "max_tokens"),
    "e5": (("prompt_tokens",), "max_tokens"),
    "e6": (("targets",), "max_tokens"),
}


def input_problems(config: dict, given: Iterable[str] | None = None) -> Iterator[Problem]:
    """Every problem of ``config`` (validated by the schema) that would fail a run late.

    ``given``: the experiments whose block the config sets (before the schema filled defaults);
    only their lengths are checked, so a small model's config is not refused for the default
    lengths of an experiment it does not run. A run's own config (the rule's ``--config-json``)
    always sets its experiment's block, so every run checks its own. None: every block."""
    name = config["model_profile"]
    profile = config["models"][name]
    yield from model_path_problems(name, profile)
    yield from tokenizer_problems(name, profile)
    experiments = config.get("experiments") or {}
    checked = set(experiments if given is None else given)
    for experiment, block in experiments.items():
        if experiment in LENGTH_KEYS and experiment in checked and block:
            yield from length_problems(experiment, block, name, profile)
    e2 = experiments.get("e2") or {}
    if e2.get("trace_file"):
        yield from trace_problems(e2["trace_file"], name, int(profile["max_model_len"]))
    pg19 = ((experiments.get("e4") or {}).get("benchmarks") or {}).get("pg19") or {}
    if "e4" in checked and pg19.get("tasks") and pg19.get("context_lengths"):
        yield from pg19_problems(pg19, name, int(profile["max_model_len"]))


# -- paths --------------------------------------------------------------------------------------
def looks_like_path(source: str) -> bool:
    """Whether ``source`` is written as a path rather than a hub id (``org/name``): absolute,
    ``./``, ``../`` or ``~``, more than one ``/``, or a first component that is a local folder."""
    s = str(source)
    if s in (".", "..") or s.startswith(("./", "../", "~")) or os.path.isabs(s):
        return True
    parts = s.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def model_path_problems(name: str, profile: dict) -> Iterator[Problem]:
    for field in ("source", "tokenizer"):
        value = profile.get(field)
        if not value or value == "embedded" or not looks_like_path(str(value)):
            continue
        if field == "source" and profile.get("dummy_config"):
            continue  # a shape-only folder is built for it (models.dummy_model_dir)
        path = Path(str(value)).expanduser()
        if not path.exists():
            key = f"models.{name}.{field}"
            where = "" if str(path.absolute()) == str(value) else f" ({path.absolute()})"
            yield key, (f"config key '{key}': {value!r} is a path, and nothing is there{where}. Give an existing "
                        "model folder, or a hub id written 'org/name'.")


# -- the tokenizer ------------------------------------------------------------------------------
def tokenizer_folder(name: str, profile: dict) -> tuple[Path, str] | None:
    """The local folder the engine will read the tokenizer from, and the key that names it; None
    for a hub id or a folder not built yet (the embedded model: the workflow builds it)."""
    from .models import EMBEDDED_DIR

    if profile.get("tokenizer"):
        folder, key = Path(str(profile["tokenizer"])).expanduser(), f"models.{name}.tokenizer"
    elif profile["source"] == "embedded":
        folder, key = EMBEDDED_DIR, f"models.{name}.source (the embedded model, {EMBEDDED_DIR})"
    else:
        folder, key = Path(str(profile["source"])).expanduser(), f"models.{name}.source"
    return (folder, key) if folder.is_dir() else None


def tokenizer_problems(name: str, profile: dict) -> Iterator[Problem]:
    found = tokenizer_folder(name, profile)
    if found is None:
        return
    folder, key = found
    for file in ("tokenizer.json", "tokenizer_config.json"):
        path = folder / file
        if path.is_file():
            stat = path.stat()
            why = _unparsable(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
            if why:
                yield key.split(" ")[0], (f"config key '{key}': the tokenizer file {path} does not parse ({why}); "
                                          "the engine could not load it. Restore the file (the embedded model: "
                                          "delete its folder and run again to rebuild it).")


@functools.lru_cache(maxsize=16)
def _unparsable(path: str, mtime_ns: int, size: int) -> str | None:
    """Why the tokenizer file at ``path`` is not a JSON object, or None (cached per file version).
    A parse, not a load: a truncated or garbled file is what goes wrong on disk."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"not JSON: {exc}"
    return None if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"


# -- lengths ------------------------------------------------------------------------------------
def length_problems(experiment: str, block: dict, name: str, profile: dict) -> Iterator[Problem]:
    """An experiment none of whose prompt lengths leaves room for its ``max_tokens`` output."""
    prompt_keys, out_key = LENGTH_KEYS[experiment]
    if experiment == "e6":
        max_len, where = int(block["max_model_len"]), "experiments.e6.max_model_len"
    else:
        max_len, where = int(profile["max_model_len"]), f"models.{name}.max_model_len"
    out = block.get(out_key)
    prompts: list[int] = []
    for k in prompt_keys:
        v = block.get(k)
        prompts += [int(x) for x in (v if isinstance(v, list) else [v]) if x is not None]
    if out is None or not prompts or min(prompts) + int(out) <= max_len:
        return
    shortest = min(prompts)
    key = f"experiments.{experiment}.{out_key if int(out) >= max_len else prompt_keys[0]}"
    yield key, (f"config key '{key}': no request of {experiment} fits the context: its shortest prompt "
                f"({shortest} tokens, experiments.{experiment}.{'/'.join(prompt_keys)}) plus {out} output tokens "
                f"(experiments.{experiment}.{out_key}) is {shortest + int(out)} tokens, above {where} = {max_len}; "
                "every request would be refused after the engine started. Lower the lengths or raise the context.")


def pg19_problems(pg19: dict, name: str, max_len: int) -> Iterator[Problem]:
    """PG19 lengths none of which fits (one that does not is a failed line with the reason)."""
    window = int(pg19.get("window_tokens") or 0)
    shortest = min(int(n) for n in pg19["context_lengths"])
    if shortest + window > max_len:
        key = "experiments.e4.benchmarks.pg19.context_lengths"
        yield key, (f"config key '{key}': no PG19 length fits the context: the shortest, {shortest}, plus "
                    f"window_tokens {window} exceeds models.{name}.max_model_len = {max_len}")


# -- E2's trace ---------------------------------------------------------------------------------
def trace_problems(trace_file: str, name: str, max_len: int) -> Iterator[Problem]:
    from .traces import read_trace

    key = "experiments.e2.trace_file"
    path = Path(str(trace_file))
    if not path.is_file():
        yield key, (f"config key '{key}': the trace file {path} does not exist"
                    + (" (it is a folder)" if path.is_dir() else "") + " (relative paths start at the workflow's folder)")
        return
    try:
        trace = read_trace(path)
    except ConfigError as exc:
        yield key, f"config key '{key}': {exc}"
        return
    except (OSError, UnicodeDecodeError) as exc:
        yield key, f"config key '{key}': the trace file {path} cannot be read as text: {exc}"
        return
    over = [t for t in trace if t.input_tokens + t.output_tokens > max_len]
    if over:
        longest = max(t.input_tokens + t.output_tokens for t in over)
        yield key, (f"config key '{key}': {len(over)} request(s) of the trace {path} exceed "
                    f"models.{name}.max_model_len = {max_len} (the longest: {longest} tokens)")
