"""The GPU overlays of E3 (issue 27), read and validated as the workflow reads them: the four ways
of moving the KV (config/e3-kv-paths.yaml, as a baseline and two variants, each one call of under 10 minutes)
and the two-GPU placement (config/e3-two-gpus.yaml)."""

import pytest

from context_research.config import REPO_ROOT, experiment_hash, load_config
from context_research.disagg.gpus import assign_gpus
from context_research.disagg.paths import kv_paths
from context_research.disagg.phases import aggregated_serving, pair_servings
from context_research.errors import ConfigError
from context_research.experiments.catalog import EXPERIMENTS
from context_research.variants import BASELINE, variant_configs

CONFIG = REPO_ROOT / "config"
MODEL = [CONFIG / "qwen3-8b.yaml"]
PATHS = CONFIG / "e3-kv-paths.yaml"
TWO_GPUS = CONFIG / "e3-two-gpus.yaml"


def configs(*overlays):
    return variant_configs(load_config(CONFIG / "config.yaml", [*MODEL, *overlays], experiments=EXPERIMENTS),
                           experiments=EXPERIMENTS)


def test_the_plan_runs_the_four_ways_as_three_runs():
    runs = configs(PATHS)
    assert list(runs) == [BASELINE, "get-zcopy", "push"]
    ways = {run: [(w.name, w.connector, w.ucx_env) for w in kv_paths(cfg["experiments"]["e3"])]
            for run, cfg in runs.items()}
    assert ways == {
        BASELINE: [("example", "ExampleConnector", {}), ("nixl-pull", "NixlConnector", {})],
        "get-zcopy": [("nixl-pull-get-zcopy", "NixlConnector", {"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": "y"})],
        "push": [("nixl-push", "NixlPushConnector", {})]}
    # Same workload as the qwen3-8b profile's E3 (the ways are all that differs), each run its own hash.
    for cfg in runs.values():
        e3 = cfg["experiments"]["e3"]
        assert (e3["prompt_tokens"], e3["concurrency_levels"], e3["requests_per_point"]) == ([4096, 16384], [1, 2], 4)
    for variant in ("get-zcopy", "push"):
        assert experiment_hash(runs[variant], EXPERIMENTS["e3"]) != experiment_hash(runs[BASELINE], EXPERIMENTS["e3"])
        assert experiment_hash(runs[variant], EXPERIMENTS["e1"]) == experiment_hash(runs[BASELINE], EXPERIMENTS["e1"])


def test_each_way_of_the_plan_gets_the_engine_settings_it_needs():
    runs = configs(PATHS)
    model = {"max_model_len": 32768}
    (zcopy,), (push,) = (kv_paths(runs[v]["experiments"]["e3"]) for v in ("get-zcopy", "push"))
    zblock, pblock = (runs[v]["experiments"]["e3"] for v in ("get-zcopy", "push"))
    one_gpu = assign_gpus("cuda", ["NVIDIA H100 80GB HBM3"], zblock, 0.9)
    pull_env = pair_servings(runs["get-zcopy"], zcopy.cfg(zblock), model, one_gpu, None)
    push_env = pair_servings(runs["push"], push.cfg(pblock), model, one_gpu, None)
    for pool in ("prefill", "decode"):
        assert pull_env[pool]["env"]["UCX_CUDA_IPC_ENABLE_GET_ZCOPY"] == "y"
        assert "UCX_CUDA_IPC_ENABLE_GET_ZCOPY" not in push_env[pool]["env"]
        assert pull_env[pool]["env"]["UCX_PROTO_INFO"] == "y" == push_env[pool]["env"]["UCX_PROTO_INFO"]
        assert pull_env[pool]["gpu_memory_utilization"] == 0.40 and pull_env[pool]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert push_env[pool]["_kv_transfer_config"]["kv_connector"] == "NixlPushConnector"
        assert pull_env[pool]["max_num_batched_tokens"] == 32768    # no chunked prefill: 16K prompts whole
    assert pull_env["decode"]["env"]["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5601"


def test_the_two_gpu_overlay_puts_prefill_on_gpu_0_and_decode_on_gpu_1():
    for run, cfg in configs(PATHS, TWO_GPUS).items():
        block = cfg["experiments"]["e3"]
        a = assign_gpus("cuda", ["H100", "H100"], block, cfg["serving"]["gpu_memory_utilization"])
        assert (a.prefill_visible_devices, a.decode_visible_devices, a.aggregated_visible_devices) == ("0", "1", "0")
        assert not a.shared_gpu and a.source == "config" and a.gpus_used("disaggregated") == 2
        assert a.prefill_gpu_memory_utilization == a.decode_gpu_memory_utilization == 0.9
        servings = pair_servings(cfg, kv_paths(block)[0].cfg(block), {"max_model_len": 32768}, a, "/dev/shm/x")
        assert servings["prefill"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert servings["decode"]["env"]["CUDA_VISIBLE_DEVICES"] == "1"
        assert aggregated_serving(cfg, block, {"max_model_len": 32768}, a)["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        # More GPUs: still 0 and 1.
        assert assign_gpus("cuda", ["H100"] * 4, block, 0.9).decode_visible_devices == "1"


def test_the_two_gpu_overlay_refuses_a_one_gpu_host_instead_of_sharing_it():
    block = configs(TWO_GPUS)[BASELINE]["experiments"]["e3"]
    with pytest.raises(ConfigError, match="experiments.e3.decode_visible_devices.*GPU 1 does not exist"):
        assign_gpus("cuda", ["H200"], block, 0.9)
    with pytest.raises(ConfigError, match="experiments.e3.prefill_visible_devices"):
        assign_gpus("cpu", [], block, 0.9)    # the CPU host: no GPU to place engines on
