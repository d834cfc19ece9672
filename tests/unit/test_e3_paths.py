"""The ways E3 moves the KV (experiments.e3.kv_paths): parsing, refusals, and what each way's engines get."""

import pytest

from context_research.config import REPO_ROOT, load_config, validate_config
from context_research.disagg.paths import kv_paths, link_columns, ucx_env_text
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS

CONFIG = load_config(REPO_ROOT / "config" / "config.yaml", experiments=EXPERIMENTS)
BLOCK = CONFIG["experiments"]["e3"]


def with_e3(**e3):
    """The repository's config with E3's block changed, validated like the workflow does."""
    return validate_config({k: v for k, v in CONFIG.items() if k != "experiments"} | {"experiments": {"e3": e3}},
                           experiments=EXPERIMENTS)
ZCOPY = {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "y"}
FOUR = [{"name": "example", "connector": "ExampleConnector"},
        {"name": "nixl-pull", "connector": "NixlConnector"},
        {"name": "nixl-pull-get-zcopy", "connector": "NixlConnector", "ucx_env": ZCOPY},
        {"name": "nixl-push", "connector": "NixlPushConnector"}]


def test_without_kv_paths_the_one_way_is_the_blocks_connector():
    (way,) = kv_paths(BLOCK)
    assert way.name == way.connector == "ExampleConnector" and way.ucx_env == {} and way.key == "experiments.e3"
    (push,) = kv_paths({**BLOCK, "connector": "NixlPushConnector", "ucx_env": ZCOPY})
    assert push.name == "NixlPushConnector" and push.direction == "write" and push.ucx_env == ZCOPY


def test_four_ways_each_with_its_connector_ucx_variables_and_ports():
    ways = kv_paths({**BLOCK, "kv_paths": FOUR, "kv_connector_extra_config": {"a": 1}})
    assert [w.name for w in ways] == ["example", "nixl-pull", "nixl-pull-get-zcopy", "nixl-push"]
    assert [w.direction for w in ways] == ["files", "read", "read", "write"]
    cfgs = [w.cfg(BLOCK) for w in ways]
    assert [c["nixl_side_channel_port"] for c in cfgs] == [5600, 5602, 5604, 5606]   # prefill; decode is +1
    assert cfgs[2]["ucx_env"] == ZCOPY and cfgs[1]["ucx_env"] == {} and cfgs[3]["connector"] == "NixlPushConnector"
    assert ways[0].extra_config == {"a": 1}
    assert ways[2].columns(BLOCK) == {"kv_path": "nixl-pull-get-zcopy", "kv_transfer_direction": "read",
                                      "ucx_env": "UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y"}
    assert ways[3].describe(BLOCK) == {"name": "nixl-push", "connector": "NixlPushConnector", "direction": "write",
                                       "ucx_env": {}, "kv_connector_extra_config": {"a": 1}}
    # The schema accepts the same list (validated before any rule runs).
    assert with_e3(kv_paths=FOUR)["experiments"]["e3"]["kv_paths"] == FOUR


@pytest.mark.parametrize("change,key,fragment", [
    ({"kv_paths": [FOUR[1], {**FOUR[3], "name": "nixl-pull"}]}, "experiments.e3.kv_paths[1].name", "names two ways"),
    ({"kv_paths": [{"name": "Bad Name", "connector": "NixlConnector"}]}, "experiments.e3.kv_paths[0].name",
     "lower-case"),
    ({"kv_paths": [{**FOUR[0], "ucx_env": ZCOPY}]}, "experiments.e3.kv_paths[0].ucx_env", "does not move the KV"),
    ({"kv_paths": [{**FOUR[1], "ucx_env": {"LD_PRELOAD": "x"}}]}, "experiments.e3.kv_paths[0].ucx_env",
     "not a UCX variable"),
    ({"kv_paths": FOUR, "ucx_env": ZCOPY}, "experiments.e3.ucx_env", "give each way its own"),
    ({"kv_paths": FOUR, "connector": "NixlConnector"}, "experiments.e3.connector", "each way names its own"),
    ({"kv_paths": [{"name": "x"}]}, "experiments.e3.kv_paths[0]", "needs a name and a connector"),
    ({"kv_paths": FOUR, "nixl_side_channel_port": 65530}, "experiments.e3.nixl_side_channel_port", "65537"),
    ({"connector": "ExampleConnector", "ucx_env": ZCOPY}, "experiments.e3.ucx_env", "does not move the KV"),
])
def test_a_bad_way_is_refused_naming_its_key(change, key, fragment):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")) as err:
        kv_paths({**BLOCK, **change})
    assert fragment in str(err.value)


def test_the_schema_refuses_a_way_without_a_connector_or_with_an_unquoted_yes():
    with pytest.raises(ConfigError, match="kv_paths"):
        with_e3(kv_paths=[{"name": "x"}])
    with pytest.raises(ConfigError, match="kv_paths"):
        with_e3(kv_paths=[{**FOUR[2], "ucx_env": {"UCX_X": True}}])
    with pytest.raises(ConfigError, match="ucx_env"):
        with_e3(connector="NixlConnector", ucx_env={"UCX_X": True})


def test_link_columns_name_the_transport_and_the_share_of_the_ceiling():
    row = {"kv_load_gb_s_derived_p50": 150.0}
    t = {"available": True, "transports": ["cuda_ipc/cuda"], "slower_than_host_allows": False}
    assert link_columns(row, t, {"available": True, "gb_s": 1500.0}) == {
        "kv_transport": "cuda_ipc/cuda", "kv_transport_slow": False, "link_ceiling_gb_s": 1500.0,
        "kv_load_share_of_ceiling": pytest.approx(0.1)}
    assert link_columns(row, {"available": False}, {"available": False}) == {
        "kv_transport": None, "kv_transport_slow": None, "link_ceiling_gb_s": None, "kv_load_share_of_ceiling": None}
    assert ucx_env_text({}) is None and ucx_env_text({"UCX_B": "1", "UCX_A": "y"}) == "UCX_A=y;UCX_B=1"
