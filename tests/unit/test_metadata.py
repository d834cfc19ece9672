import datetime as dt
import re

from context_research import metadata


def test_run_id_is_utc_time_plus_short_hash():
    now = dt.datetime(2026, 11, 23, 16, 0, 5, tzinfo=dt.timezone.utc)
    rid = metadata.make_run_id("f" * 64, now)
    assert re.fullmatch(r"20261123T160005Z-[0-9a-f]{8}", rid)


def test_weights_mode():
    assert metadata.weights_mode({"source": "embedded", "load_format": "auto"}) == "random-embedded"
    assert metadata.weights_mode({"source": "Qwen/Qwen3-8B", "load_format": "dummy"}) == "dummy"
    assert metadata.weights_mode({"source": "Qwen/Qwen3-8B", "load_format": "auto"}) == "real"


def test_run_metadata_has_required_fields():
    meta = metadata.build_run_metadata(
        experiment="e0", config_hash="a" * 64, hash_inputs={"x": 1},
        model={"source": "embedded", "name": "embedded", "load_format": "auto"}, backend_mode="real")
    for key in ("run_id", "config_hash", "hardware", "os", "python", "versions", "model_id", "weights",
                "backend_mode", "git", "notes"):
        assert key in meta, key
    for pkg in ("vllm", "torch", "transformers", "snakemake"):
        assert pkg in meta["versions"]
    hw = meta["hardware"]
    assert hw["cpu_cores"] and hw["ram_bytes"] > 0
    gpu = hw["gpu"]
    assert gpu["available"] or gpu["reason"]  # either real GPUs or an explicit reason
    assert meta["weights"] == "random-embedded"


def test_git_commit_of_a_copy_without_git_comes_from_the_environment(tmp_path, monkeypatch):
    from context_research.metadata import git_commit
    monkeypatch.delenv("CONTEXT_RESEARCH_GIT_COMMIT", raising=False)
    bare = git_commit(tmp_path)
    assert bare["commit"] is None and bare["reason"]
    monkeypatch.setenv("CONTEXT_RESEARCH_GIT_COMMIT", "abc123")
    declared = git_commit(tmp_path)
    assert declared["commit"] == "abc123" and declared["dirty"] is None and "not checked" in declared["source"]


def test_a_declared_commit_wins_over_a_stale_git_in_the_copy(monkeypatch):
    """A copied tree can carry an old .git (the GPU host's copy did): the declaration is what ran."""
    from context_research.config import REPO_ROOT
    from context_research.metadata import git_commit

    monkeypatch.setenv("CONTEXT_RESEARCH_GIT_COMMIT", "07b665b")
    assert git_commit(REPO_ROOT)["commit"] == "07b665b"
