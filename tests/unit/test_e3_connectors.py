"""E3 connector configs: kv_transfer_config JSON per connector, engine env, request fields."""

import json

import pytest

from context_research.disagg import connectors as c
from context_research.errors import ConfigError

CFG = {"kv_connector_extra_config": {}, "p2p_kv_ports": [21001, 22001], "p2p_send_type": "PUT_ASYNC",
       "p2p_kv_buffer_bytes": 8e9, "nixl_side_channel_port": 5600, "connector_host": "10.0.0.5"}


def parsed(connector, pool, cfg=CFG, path="/dev/shm/run1"):
    args = c.kv_transfer_args(c.kv_transfer_config(connector, pool, cfg, path))
    assert args[0] == "--kv-transfer-config" and len(args) == 2
    return json.loads(args[1])


def test_example_connector_json():
    assert parsed("ExampleConnector", "prefill") == {
        "kv_connector": "ExampleConnector", "kv_role": "kv_producer",
        "kv_connector_extra_config": {"shared_storage_path": "/dev/shm/run1"}}
    assert parsed("ExampleConnector", "decode")["kv_role"] == "kv_consumer"
    assert c.connector_env("ExampleConnector", "prefill", CFG) == {}


def test_example_connector_needs_a_folder():
    with pytest.raises(ConfigError, match="shared storage"):
        c.kv_transfer_config("ExampleConnector", "prefill", CFG, None)


def test_extra_config_is_merged_but_cannot_move_the_folder():
    cfg = {**CFG, "kv_connector_extra_config": {"shared_storage_path": "/elsewhere", "foo": 1}}
    extra = parsed("ExampleConnector", "decode", cfg)["kv_connector_extra_config"]
    assert extra == {"shared_storage_path": "/dev/shm/run1", "foo": 1}


def test_nixl_json_and_side_channel_ports():
    p, d = parsed("NixlConnector", "prefill"), parsed("NixlConnector", "decode")
    assert p == {"kv_connector": "NixlConnector", "kv_role": "kv_producer", "kv_connector_extra_config": {}}
    assert d["kv_role"] == "kv_consumer"
    pe, de = c.connector_env("NixlConnector", "prefill", CFG), c.connector_env("NixlConnector", "decode", CFG)
    assert pe == {"VLLM_NIXL_SIDE_CHANNEL_HOST": "10.0.0.5", "VLLM_NIXL_SIDE_CHANNEL_PORT": "5600", "UCX_PROTO_INFO": "y"}
    assert de["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5601"


def test_nixl_request_flow():
    assert c.producer_request_extra("NixlConnector", CFG)["kv_transfer_params"]["do_remote_decode"] is True
    params = {"do_remote_prefill": True, "remote_engine_id": "e", "remote_block_ids": [1]}
    assert c.consumer_request_extra("NixlConnector", params) == {"kv_transfer_params": params}
    with pytest.raises(ValueError, match="kv_transfer_params"):
        c.consumer_request_extra("NixlConnector", None)


def test_p2p_nccl_json():
    p, d = parsed("P2pNcclConnector", "prefill"), parsed("P2pNcclConnector", "decode")
    assert p["kv_connector"] == "P2pNcclConnector" and p["kv_role"] == "kv_producer"
    assert (p["kv_port"], d["kv_port"]) == (21001, 22001)
    assert p["kv_buffer_size"] == c.P2P_PRODUCER_BUFFER_BYTES and d["kv_buffer_size"] == 8e9
    assert p["kv_connector_extra_config"] == {"send_type": "PUT_ASYNC"}
    get = parsed("P2pNcclConnector", "prefill", {**CFG, "p2p_send_type": "GET"})
    assert get["kv_buffer_size"] == 8e9  # GET mode keeps the KV on the producer until fetched


def test_p2p_request_id_names_both_zmq_addresses():
    rid = c.p2p_request_id(CFG, token="abc")
    assert rid == "___prefill_addr_10.0.0.5:21001___decode_addr_10.0.0.5:22001_abc"
    assert c.producer_request_extra("P2pNcclConnector", CFG, rid) == {"request_id": rid}
    assert c.consumer_request_extra("P2pNcclConnector", None, rid) == {"request_id": rid}


def test_p2p_ports_must_differ():
    with pytest.raises(ConfigError, match="p2p_kv_ports"):
        c.kv_transfer_config("P2pNcclConnector", "prefill", {**CFG, "p2p_kv_ports": [1, 1]})


def test_unknown_connector_and_pool():
    with pytest.raises(ConfigError, match="experiments.e3.connector"):
        c.kv_transfer_config("LMCache", "prefill", CFG)
    with pytest.raises(ValueError, match="pool"):
        c.kv_transfer_config("ExampleConnector", "both", CFG, "/x")


def test_installed_support_reads_vllm_source(monkeypatch, tmp_path):
    pkg = tmp_path / "vllm"
    (pkg / "distributed/kv_transfer/kv_connector").mkdir(parents=True)
    (pkg / "config").mkdir()
    for d in (pkg, pkg / "distributed", pkg / "distributed/kv_transfer", pkg / "distributed/kv_transfer/kv_connector",
              pkg / "config"):
        (d / "__init__.py").write_text("")
    (pkg / "distributed/kv_transfer/kv_connector/factory.py").write_text(
        'KVConnectorFactory.register_connector(\n    "ExampleConnector",\n    "m",\n    "C",\n)\n')
    (pkg / "config/kv_transfer.py").write_text(
        "class KVTransferConfig:\n    kv_connector: str | None = None\n    kv_role: str | None = None\n"
        "    kv_port: int = 1\n    kv_connector_extra_config: dict = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    ok = c.kv_transfer_config("ExampleConnector", "prefill", CFG, "/x")
    assert c.installed_support("ExampleConnector", ok) is None
    assert "does not register" in c.installed_support("NixlConnector", {})
    p2p = c.kv_transfer_config("P2pNcclConnector", "decode", CFG)
    (pkg / "distributed/kv_transfer/kv_connector/factory.py").write_text(
        'KVConnectorFactory.register_connector("P2pNcclConnector", "m", "C")\n')
    assert "kv_buffer_size" in c.installed_support("P2pNcclConnector", p2p)


def test_shared_storage_is_fresh_per_run_and_removed(tmp_path):
    cfg = {"shared_storage_root": str(tmp_path)}
    a, b = c.make_shared_storage(cfg, "run1"), c.make_shared_storage(cfg, "run1")
    assert a != b and a.parent == tmp_path and a.name.startswith("context-research-e3-run1-")
    (a / "x").mkdir()
    (a / "x" / "f").write_bytes(b"1")
    c.remove_shared_storage(a)
    assert not a.exists() and b.exists()
    with pytest.raises(ConfigError, match="shared_storage_root"):
        c.shared_storage_root({"shared_storage_root": str(tmp_path / "nope")})


# -- NIXL push and pull, and the UCX environment ---------------------------------------------------
GET_ZCOPY = {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "y"}


@pytest.mark.parametrize("connector,direction", [("NixlConnector", "read"), ("NixlPullConnector", "read"),
                                                 ("NixlPushConnector", "write"), ("ExampleConnector", "files")])
def test_nixl_pull_and_push_configs_name_their_class_and_direction(connector, direction):
    p, d = parsed(connector, "prefill"), parsed(connector, "decode")
    assert p == {"kv_connector": connector, "kv_role": "kv_producer",
                 "kv_connector_extra_config": p["kv_connector_extra_config"]}
    assert d["kv_connector"] == connector and d["kv_role"] == "kv_consumer"
    assert c.transfer_direction(connector, CFG) == direction


def test_p2p_direction_follows_its_send_type():
    assert c.transfer_direction("P2pNcclConnector", CFG) == "write"
    assert c.transfer_direction("P2pNcclConnector", {**CFG, "p2p_send_type": "GET"}) == "read"


def test_push_requests_flow_like_pull():
    assert c.producer_request_extra("NixlPushConnector", CFG) == c.producer_request_extra("NixlConnector", CFG)
    params = {"do_remote_prefill": True, "remote_engine_id": "e", "remote_block_ids": [1], "remote_request_id": "x"}
    assert c.consumer_request_extra("NixlPushConnector", params) == {"kv_transfer_params": params}
    with pytest.raises(ValueError, match="NixlPushConnector"):
        c.consumer_request_extra("NixlPushConnector", {})


@pytest.mark.parametrize("connector", c.NIXL_CONNECTORS)
def test_the_ucx_environment_reaches_both_nixl_engines(connector):
    cfg = {**CFG, "connector": connector, "ucx_env": GET_ZCOPY}
    for pool, port in (("prefill", "5600"), ("decode", "5601")):
        env = c.connector_env(connector, pool, cfg)
        assert env["UCX_CUDA_IPC_ENABLE_GET_ZCOPY"] == "y" and env["UCX_PROTO_INFO"] == "y"
        assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == port
    # As shipped: no UCX variable besides the protocol report.
    plain = c.connector_env(connector, "decode", {**CFG, "connector": connector})
    assert [k for k in plain if k.startswith("UCX_")] == ["UCX_PROTO_INFO"]


@pytest.mark.parametrize("env,fragment", [
    ({"CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES is not a UCX variable"),
    ({"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": True}, "unquoted yes/no is a YAML boolean"),
    ("y", "must be a mapping"),
])
def test_a_bad_ucx_environment_is_refused_naming_the_key(env, fragment):
    with pytest.raises(ConfigError, match="experiments.e3.ucx_env") as err:
        c.connector_env("NixlConnector", "decode", {**CFG, "connector": "NixlConnector", "ucx_env": env})
    assert fragment in str(err.value)


def test_a_ucx_environment_for_a_connector_without_ucx_is_refused():
    with pytest.raises(ConfigError, match="does not move the KV through UCX"):
        c.connector_env("ExampleConnector", "decode", {**CFG, "connector": "ExampleConnector", "ucx_env": GET_ZCOPY})
    assert c.connector_env("ExampleConnector", "decode", {**CFG, "connector": "ExampleConnector", "ucx_env": {}}) == {}


def test_nixl_is_refused_where_python_cannot_import_it(monkeypatch):
    """The installed vLLM registers both NIXL connectors (read from its source); without the
    ``nixl`` package the check says so instead of letting an engine fail to start."""
    monkeypatch.setattr(c, "_module_source", lambda module: (
        'register_connector(\n    "NixlConnector"\nregister_connector(\n    "NixlPushConnector"'
        if module.endswith("factory") else "    kv_connector: str\n    kv_role: str\n"))
    monkeypatch.setattr(c, "nixl_importable", lambda: False)
    reason = c.installed_support("NixlPushConnector", {"kv_connector": "NixlPushConnector", "kv_role": "kv_consumer"})
    assert "NIXL Python package" in reason and "PYTHONPATH" in reason
    assert c.installed_support("ExampleConnector") is not None      # not registered in this fake source
    monkeypatch.setattr(c, "nixl_importable", lambda: True)
    assert c.installed_support("NixlPushConnector", {"kv_connector": "x", "kv_role": "y"}) is None
