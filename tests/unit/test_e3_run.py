"""E3 through the shared lifecycle (``run_declared``), engines simulated or faked: every declared
file in its shape, placeholder logs for engines that never started, every engine stopped."""

import json
import signal

import pandas as pd
import pytest

from context_research.backends.base import ServingBackend
from context_research.config import validate_config
from context_research.disagg import connectors
from context_research.disagg.rows import POINT_COLUMNS, handoff_columns
from context_research.errors import ConfigError, EngineStartError
from context_research.experiments import e3, runner
from context_research.experiments.catalog import EXPERIMENTS
from context_research.experiments.runner import Terminated, run_declared

STAMP = ["experiment", "run_id", "config_hash", "backend_mode", "weights", "model_id"]




def _config(src, backend, **e3cfg):
    return validate_config({"model_profile": "m", "models": {"m": {"source": str(src), "max_model_len": 2048}},
                            "serving": {"backend": backend, "device": "cpu"},
                            "experiments": {"e3": {"prompt_tokens": [256, 2040], "concurrency_levels": [1, 2],
                                                   "requests_per_point": 2, **e3cfg}}}, experiments=EXPERIMENTS)


@pytest.fixture
def shared_folders(tmp_path, monkeypatch):
    """ExampleConnector's per-run KV folders, made under tmp_path (so the test sees them go)."""
    made = []
    real = connectors.make_shared_storage

    def make(cfg, run_id):
        made.append(real({**cfg, "shared_storage_root": str(tmp_path)}, run_id))
        return made[-1]

    monkeypatch.setattr(connectors, "make_shared_storage", make)
    return made


def test_simulated_run_writes_every_declared_file_in_its_shape(tiny_model, tmp_path, monkeypatch, shared_folders):
    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")
    out = tmp_path / "e3"
    meta = run_declared(e3.EXPERIMENT, _config(tiny_model, "simulated"), out)
    for key in e3.EXPERIMENT.files:
        assert e3.EXPERIMENT.path(out, key).exists(), key
    assert sorted(p.name for p in out.iterdir()) == sorted(e3.EXPERIMENT.files.values())

    comparison = pd.read_csv(e3.EXPERIMENT.path(out, "comparison"))
    assert list(comparison.columns) == POINT_COLUMNS + STAMP
    assert len(comparison) == 8 and list(comparison["mode"][:2]) == ["aggregated", "disaggregated"]
    assert set(comparison.loc[comparison["mode"] == "aggregated", "status"]) == {"ok", "failed"}   # 2040: too long
    assert set(comparison.loc[comparison["mode"] == "disaggregated", "status"]) == {"failed"}
    assert list(pd.read_csv(e3.EXPERIMENT.path(out, "transfers")).columns) == handoff_columns() + STAMP
    requests = pd.read_csv(e3.EXPERIMENT.path(out, "requests"))
    assert list(requests.columns[:5]) == ["mode", "kv_path", "label", "point_prompt_tokens", "concurrency"]
    assert list(requests.columns[-len(STAMP) - 6:]) == ["handoff_id", "producer_e2e_s", "consumer_ttft_s", "kv_wait_ms",
                                                        "kv_load_ms", "external_kv_tokens"] + STAMP

    for key in ("engine_prefill", "engine_decode"):
        assert e3.EXPERIMENT.path(out, key).read_text().startswith(
            "# not started: the simulated backend has no KV connector")

    # run_metadata.json: the E3 engine block, then model_config, gpu_assignment, result_summary.
    assert list(meta["engine"]) == ["mode", "device", "engines", "startup_s"]
    assert meta["engine"]["mode"] == "simulated" and list(meta["engine"]["engines"]) == ["aggregated"]
    assert list(meta)[-4:] == ["model_config", "gpu_assignment", "kv_paths", "result_summary"]
    assert meta["model_config"]["hidden_size"] == 64
    assert meta["result_summary"] == {"points": 4, "rows_ok": 2, "rows_failed": 6, "bytes_agree": None,
                                      "handoffs": 0, "handoffs_kv_moved": 0, "kv_paths": ["ExampleConnector"]}
    assert any(n.startswith("CPU engines, no GPU") for n in meta["notes"])
    assert json.loads(e3.EXPERIMENT.path(out, "metadata").read_text())["run_id"] == meta["run_id"]
    gpu = json.loads(e3.EXPERIMENT.path(out, "gpu_stats").read_text())
    assert set(gpu) == set(STAMP) | {"nvml", "gpu_assignment"} and gpu["gpu_assignment"] == meta["gpu_assignment"]

    summary = json.loads(e3.EXPERIMENT.path(out, "summary").read_text())
    assert summary["run_id"] == meta["run_id"] and summary["rows"] == 8 and summary["rows_ok"] == 2
    (way,) = summary["kv_paths"]
    assert "simulated backend has no KV connector" in way["start_error"]
    assert way["connector"]["shared_storage_removed"] is True and summary["engine_starts"] == 3
    assert shared_folders and not any(p.exists() for p in shared_folders)


class FakeEngine(ServingBackend):
    """A 'real' engine that never starts (``fail``: an EngineStartError or a BaseException)."""

    mode = "real"
    made: list["FakeEngine"] = []
    fail: BaseException = EngineStartError("cannot start\nsecond line")

    def __init__(self, *args):
        super().__init__(*args)
        self.stops = 0
        FakeEngine.made.append(self)

    def start(self):
        if "prefill" in self.log_path.name:
            self.log_path.write_text("the prefill engine's own log\n")
        raise FakeEngine.fail

    def stop(self):
        self.stops += 1

    async def generate(self, req, run_t0):
        raise AssertionError("never started")

    def info(self):
        return {"mode": self.mode, "startup_s": None}


@pytest.fixture
def fake_engines(monkeypatch):
    FakeEngine.made = []
    monkeypatch.setattr(runner, "make_backend", FakeEngine)
    monkeypatch.setattr(connectors, "installed_support", lambda *a: None)   # whatever vLLM is installed
    return FakeEngine


def test_engines_that_never_start_get_placeholder_logs_and_failed_rows(tiny_model, tmp_path, fake_engines,
                                                                       shared_folders):
    out = tmp_path / "e3"
    meta = run_declared(e3.EXPERIMENT, _config(tiny_model, "vllm", concurrency_levels=[1]), out)
    assert e3.EXPERIMENT.path(out, "engine_aggregated").read_text() == "# engine not started\n"
    assert e3.EXPERIMENT.path(out, "engine_prefill").read_text() == "the prefill engine's own log\n"   # kept
    assert e3.EXPERIMENT.path(out, "engine_decode").read_text().startswith("# not started: ")
    rows = pd.read_csv(e3.EXPERIMENT.path(out, "comparison"))
    assert (rows["status"] == "failed").all()
    assert rows.loc[rows["mode"] == "aggregated", "reason"].str.startswith(
        "aggregated engine did not start: cannot start").all()
    assert rows.loc[rows["mode"] == "disaggregated", "reason"].str.contains("engine did not start: cannot start").all()
    assert "second line" not in " ".join(rows["reason"])
    assert list(meta["engine"]["engines"]) == ["aggregated", "prefill", "decode"]
    assert meta["result_summary"]["rows_failed"] == len(rows) == 4
    assert len(fake_engines.made) == 3 and all(e.stops >= 1 for e in fake_engines.made)
    assert not any(p.exists() for p in shared_folders)


def test_a_terminated_run_stops_every_engine_and_writes_no_metadata(tiny_model, tmp_path, fake_engines,
                                                                   shared_folders, monkeypatch):
    monkeypatch.setattr(fake_engines, "fail", Terminated(signal.SIGTERM))   # SIGTERM while the engine starts
    out = tmp_path / "e3"
    with pytest.raises(Terminated):
        run_declared(e3.EXPERIMENT, _config(tiny_model, "vllm"), out)
    assert len(fake_engines.made) == 1 and fake_engines.made[0].stops >= 1
    assert not e3.EXPERIMENT.path(out, "metadata").exists()
    assert not any(p.exists() for p in shared_folders)


def test_an_engine_death_fails_the_run_and_its_later_points(tiny_model, tmp_path, monkeypatch, shared_folders):
    """The aggregated engine dies after its second point: the points measured stay, the later ones
    are failed rows with the engine's reason, every table is kept, and the run fails."""
    from context_research.backends.simulated import SimulatedBackend
    from context_research.errors import EngineDiedError

    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")
    asked = []

    def exit_reason(self):   # asked once after each served point
        asked.append(1)
        return "engine died: its server was killed by SIGKILL" if len(asked) >= 2 else None

    monkeypatch.setattr(SimulatedBackend, "exit_reason", exit_reason)
    out = tmp_path / "e3"
    with pytest.raises(EngineDiedError, match="aggregated engine died: its server was killed by SIGKILL"):
        run_declared(e3.EXPERIMENT, _config(tiny_model, "simulated", prompt_tokens=[256, 512]), out)
    kept = next(out.with_name("e3.partial").iterdir())
    rows = pd.read_csv(kept / "mode_comparison.csv")
    agg = rows[rows["mode"] == "aggregated"]
    assert list(agg["status"]) == ["ok", "ok", "failed", "failed"]
    assert agg["reason"].iloc[2:].str.startswith("aggregated engine died: its server was killed by SIGKILL").all()
    assert (kept / "requests.csv").exists() and (kept / "summary.json").exists()
    assert not (out / "run_metadata.json").exists()


def test_the_ucx_environment_is_recorded_in_the_run_metadata_and_its_hash(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")
    ucx = {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "y"}
    meta = run_declared(e3.EXPERIMENT, _config(tiny_model, "simulated", connector="NixlPushConnector", ucx_env=ucx),
                        tmp_path / "e3")
    assert meta["kv_paths"] == [{"name": "NixlPushConnector", "connector": "NixlPushConnector", "direction": "write",
                                 "ucx_env": ucx, "kv_connector_extra_config": {}}]
    assert meta["hash_inputs"]["experiment_config"]["ucx_env"] == ucx
    plain = run_declared(e3.EXPERIMENT, _config(tiny_model, "simulated", connector="NixlPushConnector"),
                         tmp_path / "plain")
    assert plain["config_hash"] != meta["config_hash"] and plain["kv_paths"][0]["ucx_env"] == {}


def test_nixl_without_the_nixl_package_is_refused_before_any_engine_starts(tiny_model, tmp_path, monkeypatch):
    FakeEngine.made = []
    monkeypatch.setattr(runner, "make_backend", FakeEngine)
    monkeypatch.setattr(connectors, "nixl_importable", lambda: False)   # the installed vLLM's own source is read
    with pytest.raises(ConfigError, match="experiments.e3.connector") as err:
        run_declared(e3.EXPERIMENT, _config(tiny_model, "vllm", connector="NixlPushConnector"), tmp_path / "e3")
    assert "NIXL" in str(err.value) or "vLLM is not installed" in str(err.value)
    assert FakeEngine.made == []


TWO_WAYS = [{"name": "shm", "connector": "ExampleConnector"},
            {"name": "tmp", "connector": "ExampleConnector", "kv_connector_extra_config": {"x": 1}}]


def test_several_ways_share_one_aggregated_engine_and_each_gets_its_own_pair(tiny_model, tmp_path, fake_engines,
                                                                              shared_folders):
    """1 + 2 x ways engine starts: the aggregated engine once, then a pair per way, each stopped."""
    out = tmp_path / "e3"
    meta = run_declared(e3.EXPERIMENT, _config(tiny_model, "vllm", concurrency_levels=[1], kv_paths=TWO_WAYS), out)
    assert len(fake_engines.made) == 1 + 2 * 2 and all(e.stops >= 1 for e in fake_engines.made)
    assert [e.log_path.name for e in fake_engines.made] == [
        "engine_aggregated.log", "engine_prefill.shm.log", "engine_decode.shm.log", "engine_prefill.tmp.log",
        "engine_decode.tmp.log"]
    assert e3.EXPERIMENT.path(out, "engine_kv_path", "prefill", "tmp").read_text() == "the prefill engine's own log\n"
    index = e3.EXPERIMENT.path(out, "engine_prefill").read_text()
    assert "2 ways" in index and "# shm: engine_prefill.shm.log" in index and "# tmp: engine_prefill.tmp.log" in index
    rows = pd.read_csv(e3.EXPERIMENT.path(out, "comparison"))
    dis = rows[rows["mode"] == "disaggregated"]
    assert list(rows["mode"]) == ["aggregated", "disaggregated", "disaggregated"] * 2
    assert list(dis["kv_path"]) == ["shm", "tmp", "shm", "tmp"]
    assert rows.loc[rows["mode"] == "aggregated", "kv_path"].isna().all()
    assert (dis["kv_transfer_direction"] == "files").all() and dis["reason"].str.contains("did not start").all()
    assert list(meta["engine"]["engines"]) == ["aggregated", "prefill.shm", "decode.shm", "prefill.tmp", "decode.tmp"]
    assert [w["name"] for w in meta["kv_paths"]] == ["shm", "tmp"]
    assert meta["kv_paths"][1]["kv_connector_extra_config"] == {"x": 1}
    summary = json.loads(e3.EXPERIMENT.path(out, "summary").read_text())
    assert summary["engine_starts"] == 5 and [w["name"] for w in summary["kv_paths"]] == ["shm", "tmp"]
    assert all("did not start" in w["start_error"] for w in summary["kv_paths"])
    assert len(shared_folders) == 2 and not any(p.exists() for p in shared_folders)   # one folder per way, removed


def test_a_simulated_run_of_several_ways_names_each_row_its_way(tiny_model, tmp_path, monkeypatch, shared_folders):
    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")
    ways = [{"name": "example", "connector": "ExampleConnector"},
            {"name": "push", "connector": "NixlPushConnector", "ucx_env": {"UCX_TLS": "cuda_ipc,tcp"}}]
    out = tmp_path / "e3"
    meta = run_declared(e3.EXPERIMENT, _config(tiny_model, "simulated", kv_paths=ways), out)
    rows = pd.read_csv(e3.EXPERIMENT.path(out, "comparison"))
    push = rows[rows["kv_path"] == "push"]
    assert len(push) == 4 and (push["kv_transfer_direction"] == "write").all()
    assert (push["ucx_env"] == "UCX_TLS=cuda_ipc,tcp").all() and (push["connector"] != "ExampleConnector").all()
    assert meta["result_summary"]["kv_paths"] == ["example", "push"]
    assert meta["hash_inputs"]["experiment_config"]["kv_paths"] == ways
    requests = pd.read_csv(e3.EXPERIMENT.path(out, "requests"))
    assert requests.loc[requests["mode"] == "aggregated", "kv_path"].isna().all()


def test_every_way_is_checked_before_any_engine_starts(tiny_model, tmp_path, monkeypatch):
    """The first way (ExampleConnector) would run; the second (NIXL) cannot: nothing starts."""
    FakeEngine.made = []
    monkeypatch.setattr(runner, "make_backend", FakeEngine)
    monkeypatch.setattr(connectors, "nixl_importable", lambda: False)
    ways = [{"name": "example", "connector": "ExampleConnector"}, {"name": "push", "connector": "NixlPushConnector"}]
    with pytest.raises(ConfigError, match=r"experiments\.e3\.kv_paths\[1\]\.connector"):
        run_declared(e3.EXPERIMENT, _config(tiny_model, "vllm", kv_paths=ways), tmp_path / "e3")
    assert FakeEngine.made == []
    bad_env = [{"name": "example", "connector": "ExampleConnector", "ucx_env": {"UCX_TLS": "tcp"}}]
    with pytest.raises(ConfigError, match=r"kv_paths\[0\]\.ucx_env"):
        run_declared(e3.EXPERIMENT, _config(tiny_model, "vllm", kv_paths=bad_env), tmp_path / "e3b")
    assert FakeEngine.made == []


def test_an_interrupt_during_a_later_way_keeps_the_ways_finished_before(tiny_model, tmp_path, monkeypatch,
                                                                       shared_folders):
    """Found on the H100 (2026-12-07): a call's time limit stopped the second way's pair, and the
    first way's measured rows were lost with it. Every finished way is checkpointed."""
    monkeypatch.setenv("CONTEXT_RESEARCH_ALLOW_SIMULATED_BACKEND", "1")
    real = e3.run_path
    calls = []

    def run_path(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Terminated(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(e3, "run_path", run_path)
    ways = [{"name": "example", "connector": "ExampleConnector"}, {"name": "push", "connector": "NixlPushConnector"}]
    out = tmp_path / "e3"
    with pytest.raises(Terminated):
        run_declared(e3.EXPERIMENT, _config(tiny_model, "simulated", kv_paths=ways), out)
    kept = next(out.with_name("e3.partial").iterdir())
    rows = pd.read_csv(kept / "mode_comparison.csv")
    assert list(rows["mode"]).count("aggregated") == 4
    assert (rows.loc[rows["mode"] == "disaggregated", "kv_path"] == "example").sum() == 4
    assert len(pd.read_csv(kept / "requests.csv")) > 0
    # (a simulated engine moves no KV: there are no handoff rows to keep; transfers.csv is registered
    # the same way and written when it has rows)
