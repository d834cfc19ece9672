"""Bad input gets a clear error naming the config key or the file (the faults issue):
E4 explicit files, JSONL line numbers, overlay attribution, exposure of the server, tokenizers."""

import asyncio
import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from aiohttp import web

from context_research import config as C
from context_research.backends import client as client_mod
from context_research.backends import vllm_server
from context_research.backends.client import StreamingClient, http_session
from context_research.backends.vllm_server import VllmServerBackend
from context_research.config import load_config, snakemake_config_origins, validate_config
from context_research.datasets import loaders, materialize as M, specs
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS
from context_research.models import resolve_model
from context_research.quality.perplexity import fetch_prompt_logprobs
from context_research.records import GenerationRequest

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "config" / "config.yaml"
FIX = REPO / "tests" / "fixtures" / "e4"
KEY_ENV = "CONTEXT_RESEARCH_API_KEY"


def ws_count(text: str) -> int:
    return len(text.split())


def default_config():
    return load_config(DEFAULT, experiments=EXPERIMENTS)


# ----------------------------------------------------------------------------- 1. E4 explicit files


def test_a_missing_explicit_file_names_the_key_and_never_falls_back_to_the_fixture(tmp_path):
    missing = tmp_path / "nope" / "qasper.jsonl"
    # local_dir is the fixture folder (the schema's default): it must not stand in for the file
    block = {"local_dir": str(FIX / "longbench"), "use_hub": True, "files": {"qasper": str(missing)}}
    with pytest.raises(ConfigError) as err:
        loaders.load_records("longbench", "qasper", block)
    msg = str(err.value)
    assert "config key 'experiments.e4.benchmarks.longbench.files.qasper'" in msg
    assert str(missing) in msg and "does not exist" in msg
    with pytest.raises(ConfigError, match=r"files\.qasper"):
        M.materialize_subset("longbench", "qasper", block, ws_count, tmp_path / "q.jsonl", tmp_path / "q.json")
    assert not (tmp_path / "q.jsonl").exists()
    # a folder is not a file either
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        loaders.load_records("longbench", "qasper", {**block, "files": {"qasper": str(tmp_path)}})


def test_a_missing_explicit_file_stops_the_workflow_before_any_rule(monkeypatch, tmp_path):
    """validate_config (common.smk, `context-research validate`) refuses it, naming the file that set
    it; specs.source_inputs (rule e4_data's input function) too."""
    monkeypatch.chdir(REPO)
    overlay = tmp_path / "e4.yaml"
    overlay.write_text("experiments:\n  e4:\n    benchmarks:\n      longbench:\n        files:\n"
                       "          qasper: /data/does-not-exist.jsonl\n")
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, [overlay], experiments=EXPERIMENTS)
    assert str(err.value).startswith(f"Invalid configuration ({overlay}): config key "
                                     "'experiments.e4.benchmarks.longbench.files.qasper': /data/does-not-exist.jsonl "
                                     "does not exist")
    # a file for a task that is not configured is not read, so not checked
    overlay.write_text("experiments:\n  e4:\n    benchmarks:\n      longbench:\n        files:\n"
                       "          narrativeqa: /data/does-not-exist.jsonl\n")
    assert load_config(DEFAULT, [overlay], experiments=EXPERIMENTS)
    cfg = default_config()
    cfg["experiments"]["e4"]["benchmarks"]["longbench"]["files"] = {"qasper": "/data/does-not-exist.jsonl"}
    with pytest.raises(ConfigError) as err:
        specs.source_inputs(cfg)
    assert "'experiments.e4.benchmarks.longbench.files.qasper'" in str(err.value)
    assert "/data/does-not-exist.jsonl" in str(err.value)
    cfg = default_config()
    cfg["experiments"]["e4"]["ruler"].update(tasks=["qa"], qa_records="/data/squad-missing.jsonl")
    with pytest.raises(ConfigError, match=r"'experiments\.e4\.ruler\.qa_records': /data/squad-missing\.jsonl"):
        specs.source_inputs(cfg)


def test_fixture_data_only_when_nothing_is_configured(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = default_config()
    spec = specs.dataset_spec(cfg, "longbench", "qasper")
    man = M.materialize_subset("longbench", "qasper", spec["block"], ws_count, tmp_path / "a.jsonl", tmp_path / "a.json")
    assert specs.data_source_kind(man) == "fixture"          # nothing configured: the fixture, and it says so
    own = tmp_path / "data" / "qasper.jsonl"
    own.parent.mkdir()
    shutil.copy(FIX / "longbench" / "qasper.jsonl", own)
    cfg["experiments"]["e4"]["benchmarks"]["longbench"]["files"] = {"qasper": str(own)}
    spec = specs.dataset_spec(cfg, "longbench", "qasper")
    assert specs.source_inputs(cfg)[0] == str(own)
    man = M.materialize_subset("longbench", "qasper", spec["block"], ws_count, tmp_path / "b.jsonl", tmp_path / "b.json")
    assert man["source"]["path"] == str(own) and specs.data_source_kind(man) == "local"


# ----------------------------------------------------------------------------- 2. messages that name the right thing


def test_jsonl_error_gives_the_file_line_and_the_key_that_named_it(tmp_path):
    bad = tmp_path / "qasper.jsonl"
    good = json.loads((FIX / "longbench" / "qasper.jsonl").read_text().splitlines()[0])
    bad.write_text(json.dumps(good) + "\n\n" + '{"input": "x", oops}\n')          # line 3, after a blank line
    with pytest.raises(ConfigError) as err:
        loaders.load_records("longbench", "qasper", {"files": {"qasper": str(bad)}, "use_hub": False})
    msg = str(err.value)
    assert f"{bad}, line 3, column" in msg
    assert "'experiments.e4.benchmarks.longbench.files.qasper'" in msg and "local_dir" not in msg
    # the same file found through local_dir names local_dir
    with pytest.raises(ConfigError) as err:
        loaders.load_records("longbench", "qasper", {"local_dir": str(tmp_path), "use_hub": False})
    assert f"{bad}, line 3" in str(err.value)
    assert "'experiments.e4.benchmarks.longbench.local_dir'" in str(err.value)
    # a record without the upstream fields: its line, not its index among the non-blank lines
    bad.write_text(json.dumps(good) + "\n\n" + json.dumps({"context": "x"}) + "\n")
    with pytest.raises(ConfigError) as err:
        loaders.load_records("longbench", "qasper", {"files": {"qasper": str(bad)}, "use_hub": False})
    assert f"line 3 of {bad}" in str(err.value) and "files.qasper" in str(err.value)
    assert "lacks field(s)" in str(err.value)
    bad.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match=r"line 1: a JSON list, not an object"):
        loaders.load_records("longbench", "qasper", {"files": {"qasper": str(bad)}, "use_hub": False})


def test_ruler_qa_records_errors_name_the_ruler_key(tmp_path):
    qa = tmp_path / "squad.jsonl"
    qa.write_text('{"question": "q"}\nnot json\n')
    with pytest.raises(ConfigError) as err:
        M.materialize_subset("ruler", "qa", {"context_tokens": 500, "qa_records": str(qa)}, ws_count,
                             tmp_path / "q.jsonl", tmp_path / "q.json")
    assert f"{qa}, line 2" in str(err.value) and "'experiments.e4.ruler.qa_records'" in str(err.value)
    with pytest.raises(ConfigError, match=r"'experiments\.e4\.ruler\.qa_records': .*does not exist"):
        M.materialize_subset("ruler", "qa", {"context_tokens": 500, "qa_records": str(tmp_path / "x.jsonl")},
                             ws_count, tmp_path / "q.jsonl", tmp_path / "q.json")


def test_an_error_in_an_overlay_names_the_overlay(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("serving:\n  backend: vlm\n")
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, [overlay], experiments=EXPERIMENTS)
    assert str(err.value).startswith(f"Invalid configuration ({overlay}): config key 'serving.backend'")
    assert "config.yaml" not in str(err.value)
    overlay.write_text("experiments:\n  e0:\n    bogus: 1\n")
    with pytest.raises(ConfigError, match=rf"\({overlay}\): config key 'experiments.e0.bogus' is not allowed"):
        load_config(DEFAULT, [overlay], experiments=EXPERIMENTS)
    overlay.write_text("model_profile: nope\n")
    with pytest.raises(ConfigError, match=rf"\({overlay}\): config key 'model_profile'"):
        load_config(DEFAULT, [overlay], experiments=EXPERIMENTS)
    # a bad value in the base file still names the base file, even with an overlay on top
    base = tmp_path / "base.yaml"
    data = yaml.safe_load(DEFAULT.read_text())
    data["experiments"]["e0"]["repeats"] = "five"
    base.write_text(yaml.safe_dump(data))
    overlay.write_text("serving:\n  enforce_eager: true\n")
    with pytest.raises(ConfigError, match=rf"\({base}\): config key 'experiments.e0.repeats'"):
        load_config(base, [overlay], experiments=EXPERIMENTS)
    # ... unless the overlay replaced it
    overlay.write_text("experiments:\n  e0:\n    repeats: 0\n")
    with pytest.raises(ConfigError, match=rf"\({overlay}\): config key 'experiments.e0.repeats'"):
        load_config(base, [overlay], experiments=EXPERIMENTS)


def test_record_origins_follows_deep_update():
    origins = C.record_origins({}, {"a": {"b": 1, "c": {"d": 2}}, "x": 1}, "base")
    C.record_origins(origins, {"a": {"c": 5}, "y": {"z": 1}}, "over")
    assert C.origin_of("a.b", origins) == "base" and C.origin_of("a.c", origins) == "over"
    assert C.origin_of("a.c.d", origins) == "over"             # the overlay replaced the whole mapping
    assert C.origin_of("y.z.0", origins) == "over" and C.origin_of("nowhere", origins) is None


def test_snakemake_config_is_attributed_to_the_last_file_that_sets_the_key(tmp_path, monkeypatch):
    """What common.smk sees: the configfile: directive's file, then --configfile, then --config."""
    monkeypatch.chdir(REPO)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("serving:\n  backend: vlm\n")
    cfg = "config/config.yaml"
    # `snakemake --configfile config/config.yaml overlay.yaml`: Snakemake lists the command line's
    # files first (made absolute), then the directive's file again
    wf = SimpleNamespace(overwrite_configfiles=[DEFAULT, overlay], configfiles=[DEFAULT, overlay, cfg],
                         config_settings=SimpleNamespace(config={"experiments": {"e0": {"repeats": 9}}},
                                                         replace_workflow_config=False))
    source, origins = snakemake_config_origins(wf)
    assert source == f"{cfg}, {cfg}, {overlay}"
    merged = yaml.safe_load(DEFAULT.read_text())
    C.deep_update(merged, {"serving": {"backend": "vlm"}})
    with pytest.raises(ConfigError) as err:
        validate_config(merged, source=source, origins=origins, experiments=EXPERIMENTS)
    assert str(err.value).startswith(f"Invalid configuration ({overlay}): config key 'serving.backend'")
    assert C.origin_of("experiments.e0.repeats", origins) == "--config on the command line"
    assert C.origin_of("experiments.e0.seed", origins) == cfg
    # no overlay at all: the directive's file
    wf = SimpleNamespace(overwrite_configfiles=[], configfiles=[cfg], config_settings=SimpleNamespace(config={}))
    assert snakemake_config_origins(wf) == (cfg, snakemake_config_origins(wf)[1])
    assert C.origin_of("serving.backend", snakemake_config_origins(wf)[1]) == cfg


# ----------------------------------------------------------------------------- 3. exposure


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "myhost.example.org", "127.0.0.1.nip.io"])
def test_a_non_loopback_host_needs_allow_remote(host, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["serving"]["host"] = host
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(cfg), experiments=EXPERIMENTS)
    msg = str(err.value)
    assert "config key 'serving.host'" in msg and "serving.allow_remote: true" in msg and repr(host) in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="serving.allow_remote"):
        VllmServerBackend({"path": "x", "max_model_len": 8}, {"host": host, "device": "cpu"}, "engine.log")
    cfg["serving"]["allow_remote"] = True
    assert validate_config(cfg, experiments=EXPERIMENTS)["serving"]["allow_remote"] is True


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_hosts_need_nothing(host, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["serving"]["host"] = host
    # no default: config hashes unchanged
    assert "allow_remote" not in validate_config(cfg, experiments=EXPERIMENTS)["serving"]
    assert VllmServerBackend({"path": "x", "max_model_len": 8}, {"host": host, "device": "cpu"}, "e.log").api_key is None


def test_allow_remote_without_the_key_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["serving"].update(host="0.0.0.0", allow_remote=True)
    with pytest.raises(ConfigError, match=f"set the environment variable {KEY_ENV}"):
        validate_config(copy.deepcopy(cfg), experiments=EXPERIMENTS)
    monkeypatch.setenv(KEY_ENV, "   ")                                # empty counts as missing
    with pytest.raises(ConfigError, match=KEY_ENV):
        VllmServerBackend({"path": "x", "max_model_len": 8}, cfg["serving"], tmp_path / "e.log")


def test_a_key_in_the_config_is_refused(monkeypatch):
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["serving"]["env"] = {"VLLM_API_KEY": "abc"}
    with pytest.raises(ConfigError, match=rf"'serving.env.VLLM_API_KEY'.*{KEY_ENV}"):
        validate_config(cfg, experiments=EXPERIMENTS)


MODEL = {"name": "m", "source": "Qwen/x", "path": "Qwen/x", "max_model_len": 2048, "load_format": "dummy"}


def test_remote_server_requires_the_key_and_never_records_it(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "s3cret-key")
    monkeypatch.setenv("VLLM_API_KEY", "stray")
    b = VllmServerBackend(MODEL, {"host": "0.0.0.0", "allow_remote": True, "device": "cpu",
                                  "extra_args": ["--api-key=also-secret"]}, tmp_path / "engine.log")
    cmd = b.build_command(1234)
    env = b.build_env()
    try:
        assert "--host 0.0.0.0" in " ".join(cmd)
        # vLLM's --api-key, through vLLM's own variable: never on the command line (ps, logs)
        assert env["VLLM_API_KEY"] == "s3cret-key" and "s3cret-key" not in " ".join(cmd)
        b.command = cmd
        stored = json.dumps(b.info())
        assert "s3cret-key" not in stored and "also-secret" not in stored and "stray" not in stored
        assert "--api-key=<redacted" in stored
        # our clients reach a wildcard bind through loopback, with the key
        b.port = 1234
        assert b.base_url == "http://127.0.0.1:1234"
        assert b._request("/metrics").get_header("Authorization") == "Bearer s3cret-key"
    finally:
        b.stop()
    # on loopback no key goes to the engine, not even a stray one from the shell
    local = VllmServerBackend(MODEL, {"host": "127.0.0.1", "device": "cpu"}, tmp_path / "e2.log")
    try:
        assert "VLLM_API_KEY" not in local.build_env() and local._request("/health").get_header("Authorization") is None
    finally:
        local.stop()


def test_ipv6_binds_are_reached_in_brackets():
    assert vllm_server.connect_host("::") == "[::1]" and vllm_server.connect_host("::1") == "[::1]"
    assert vllm_server.connect_host("10.0.0.5") == "10.0.0.5"


def _auth_server(seen):
    async def completions(request):
        seen.append((request.path, request.headers.get("Authorization")))
        body = await request.json()
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for chunk in ({"choices": [{"index": 0, "text": "a", "token_ids": [5]}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
                          {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}):
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            return resp
        return web.json_response({"choices": [{"prompt_logprobs": [None, {"2": {"logprob": -1.0}}]}],
                                  "usage": {"prompt_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


async def _serve_and_call(seen, key):
    runner = web.AppRunner(_auth_server(seen))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        async with StreamingClient(base, "m", timeout_s=30, api_key=key) as client:   # every measuring request
            rec = await client.generate(GenerationRequest("r", [1], 1), run_t0=0.0)
        async with http_session(30) as http:                  # E4's prompt logprobs, E3's scheduler
            got = await fetch_prompt_logprobs(http, base, "m", [1, 2])
        return rec, got
    finally:
        await runner.cleanup()


def test_every_client_request_carries_the_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret-key")
    seen = []
    rec, got = asyncio.run(_serve_and_call(seen, "s3cret-key"))
    assert rec.ok, rec.error
    assert got["logprobs"] == [None, -1.0]
    assert seen == [("/v1/completions", "Bearer s3cret-key")] * 2
    assert StreamingClient("http://x", "m", api_key="k").headers == {"Authorization": "Bearer k"}
    monkeypatch.delenv(KEY_ENV)
    assert client_mod.auth_headers() == {} and StreamingClient("http://x", "m").headers == {}


# ----------------------------------------------------------------------------- tokenizers


def _model_dir(tmp_path, *files):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 8}))
    for f in files:
        (d / f).write_text("{}")
    return d


def test_a_model_folder_without_a_tokenizer_is_refused_before_any_engine(tmp_path, monkeypatch):
    from context_research.experiments import e0
    from context_research.experiments.runner import run_declared

    d = _model_dir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_model({"name": "mine", "source": str(d), "max_model_len": 512})
    msg = str(err.value)
    assert f"model folder {d} (models.mine.source) has no tokenizer" in msg
    assert "models.mine.tokenizer" in msg and "install" not in msg   # not vLLM's sentencepiece/tiktoken hint

    def no_engine(*a, **k):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(vllm_server.subprocess, "Popen", no_engine)
    config = validate_config({"model_profile": "m", "models": {"m": {"source": str(d), "max_model_len": 512}},
                              "serving": {"device": "cpu"}}, experiments=EXPERIMENTS)
    with pytest.raises(ConfigError, match="has no tokenizer"):
        run_declared(e0.EXPERIMENT, config, tmp_path / "out")
    # E4's materialization refuses it in the same words
    with pytest.raises(ConfigError, match="has no tokenizer"):
        M.served_tokenizer(str(d))


@pytest.mark.parametrize("files", [["tokenizer.json"], ["tokenizer_config.json"], ["vocab.json", "merges.txt"],
                                   ["tokenizer.model"], ["cl100k_base.tiktoken"]])
def test_a_folder_with_some_tokenizer_passes(tmp_path, files):
    d = _model_dir(tmp_path, *files)
    assert resolve_model({"name": "m", "source": str(d), "max_model_len": 512})["path"] == str(d.resolve())


def test_tokenizer_override_and_hub_ids(tmp_path):
    d = _model_dir(tmp_path)
    tok = tmp_path / "tok"
    tok.mkdir()
    with pytest.raises(ConfigError, match=r"\(models\.m\.tokenizer\) has no tokenizer"):
        resolve_model({"name": "m", "source": str(d), "tokenizer": str(tok), "max_model_len": 512})
    (tok / "tokenizer.json").write_text("{}")
    assert resolve_model({"name": "m", "source": str(d), "tokenizer": str(tok), "max_model_len": 512})
    # a hub id (cached or not) is the engine's business: nothing local to check
    assert resolve_model({"name": "m", "source": "Qwen/NotCachedHere-0B", "max_model_len": 512})["path"] == \
        "Qwen/NotCachedHere-0B"
