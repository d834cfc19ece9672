"""Which E4 datasets the config asks for, and everything each one's materialization depends on.

RULER and PG19 datasets are named ``{task}-{context_tokens}`` (PG19: the preceding-context length);
the others by their task. Each lives at
``results/data/{benchmark}/{name}.jsonl`` plus a manifest (``datasets.materialize``); a spec
(``dataset_spec``) is the ``e4_data`` rule's params, so only what a dataset depends on reruns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import model_profile
from ..errors import ConfigError
from ..hashing import sha256_file, sha256_obj
from ..models import dummy_model_dir
from . import templates
from .loaders import explicit_file_problem, local_candidates

DATA_ROOT = Path("results/data")
BENCHMARKS = ("ruler", "longbench", "infinitebench", "pg19")
EMBEDDED_TOKENIZER = "resources/models/embedded-qwen3"
FIXTURES_DIR = "tests/fixtures/e4"


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
        block = (e4.get("benchmarks") or {}).get(bench, {}) or {}
        for task in block.get("tasks") or []:
            if bench == "pg19":  # one dataset per preceding-context length, like RULER
                for ctx in block.get("context_lengths") or []:
                    out.append(Dataset(bench, f"{task}-{int(ctx)}", task, int(ctx)))
            else:
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
    if ds.benchmark == "pg19":
        block["context_tokens"] = ds.context_tokens
    return _drop_none(block)


def tokenizer_source(config: dict) -> str:
    """What AutoTokenizer loads, the tokenizer the engine serves: the profile's ``tokenizer``, the
    embedded model's folder (relative, so manifests do not depend on where the checkout lives),
    a dummy model's shape-only folder, or ``source``."""
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
    if ds.benchmark in ("longbench", "infinitebench"):
        # a new upstream template version rematerializes the prompts
        spec["prompt_template"] = templates.prompt_source(ds.benchmark)
    if ds.benchmark == "ruler" and "reserve_tokens" not in spec["block"]:
        # the automatic reserve is measured through the chat template the engine run will use
        spec["chat"] = {"system_prompt": e4.get("system_prompt"), "prefill_answer": e4.get("prefill_answer_prefix", True)}
    return spec


def dataset_specs(config: dict) -> list[dict]:
    return [dataset_spec(config, ds.benchmark, ds.name) for ds in datasets(config["experiments"]["e4"])]


def spec_dataset(spec: dict) -> Dataset:
    """The ``Dataset`` a ``dataset_spec`` describes."""
    return Dataset(spec["benchmark"], spec["name"], spec["task"], spec.get("context_tokens"))


def qa_records_problem(e4: dict) -> str | None:
    """Why RULER's ``qa`` task cannot read the ``qa_records`` file the config names."""
    ruler = e4.get("ruler") or {}
    path = ruler.get("qa_records")
    if "qa" not in (ruler.get("tasks") or []) or not path or Path(path).is_file():
        return None
    return (f"config key 'experiments.e4.ruler.qa_records': {path} does not exist (resolved against "
            f"{Path.cwd()}); ruler task 'qa' reads SQuAD-style records from it")


def explicit_file_problems(e4: dict) -> list[tuple[str, str]]:
    """(config key, message) for every file the E4 config names explicitly that cannot be read:
    ``benchmarks.<b>.files.<task>`` of a configured task, RULER's ``qa_records`` for its ``qa``
    task. Never replaced by the fixtures: E4 declares this as its ``config_problems``, so
    ``config.validate_config`` refuses them up front."""
    out: list[tuple[str, str]] = []
    qa = qa_records_problem(e4)
    if qa is not None and (e4.get("ruler") or {}).get("context_lengths"):
        out.append(("experiments.e4.ruler.qa_records", qa))
    for ds in datasets(e4):
        if ds.benchmark != "ruler":
            problem = explicit_file_problem(ds.benchmark, ds.task, dataset_block(e4, ds))
            if problem is not None:
                out.append((f"experiments.e4.benchmarks.{ds.benchmark}.files.{ds.task}", problem))
    return out


def source_inputs(config: dict) -> list[str]:
    """Local files the datasets read (so editing one reruns the materialization). A file the config
    names explicitly (``files.<task>``, RULER's ``qa_records`` for its ``qa`` task) must exist: a
    missing one is a ``ConfigError`` naming the key, before any rule runs."""
    found: list[str] = []
    for spec in dataset_specs(config):
        block = spec["block"]
        if spec["benchmark"] == "ruler":
            paths = [Path(block["qa_records"])] if block.get("qa_records") else []
            problem = qa_records_problem(config["experiments"]["e4"]) if spec["task"] == "qa" else None
            if problem is not None:
                raise ConfigError(problem)
        else:
            paths = local_candidates(spec["benchmark"], spec["task"], block)  # raises for a missing files.<task>
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
