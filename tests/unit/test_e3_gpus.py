"""E3 GPU assignment: CPU, 0/1/2/4 GPUs, config overrides."""

import pytest

from context_research.disagg.gpus import assign_gpus
from context_research.errors import ConfigError

CFG = {"prefill_visible_devices": None, "decode_visible_devices": None, "shared_gpu_memory_utilization": 0.40}


def gpus(n):
    return [f"NVIDIA H200 #{i}" for i in range(n)]


def test_cpu_assigns_no_gpu_but_splits_the_cores():
    a = assign_gpus("cpu", [], CFG, 0.9, cpus=[0, 1])
    assert a.device == "cpu" and a.prefill_visible_devices is None and a.decode_visible_devices is None
    assert a.engine_settings("prefill") == {"env": {"VLLM_CPU_OMP_THREADS_BIND": "0"}}
    assert a.engine_settings("decode") == {"env": {"VLLM_CPU_OMP_THREADS_BIND": "1"}}
    assert a.engine_settings("aggregated") == a.engine_settings("prefill")
    assert a.gpus_used("disaggregated") == 0 and a.gpus_used("aggregated") == 0
    assert a.as_dict()["device"] == "cpu"
    wide = assign_gpus("cpu", [], CFG, 0.9, cpus=[4, 5, 6, 7, 8])
    assert (wide.prefill_cpu_bind, wide.decode_cpu_bind) == ("4,5", "6,7,8")


def test_cpu_split_off_or_one_core_leaves_vllm_binding():
    for cfg, cpus in (({**CFG, "cpu_core_split": False}, [0, 1]), (CFG, [3])):
        a = assign_gpus("cpu", [], cfg, 0.9, cpus=cpus)
        assert a.engine_settings("prefill") == {} and a.engine_settings("decode") == {}


def test_cpu_refuses_gpu_overrides():
    with pytest.raises(ConfigError, match="experiments.e3.decode_visible_devices"):
        assign_gpus("cpu", [], {**CFG, "decode_visible_devices": "1"}, 0.9)


def test_cuda_without_gpus_is_a_config_error():
    with pytest.raises(ConfigError, match="serving.device"):
        assign_gpus("cuda", gpus(0), CFG, 0.9)


def test_one_gpu_is_shared_with_split_memory():
    a = assign_gpus("cuda", gpus(1), CFG, 0.9)
    assert (a.prefill_visible_devices, a.decode_visible_devices) == ("0", "0")
    assert a.shared_gpu
    assert a.prefill_gpu_memory_utilization == a.decode_gpu_memory_utilization == 0.40
    assert a.aggregated_gpu_memory_utilization == 0.9 and a.aggregated_visible_devices == "0"
    assert a.engine_settings("prefill") == {"env": {"CUDA_VISIBLE_DEVICES": "0"}, "gpu_memory_utilization": 0.40}
    assert a.engine_settings("aggregated") == {"env": {"CUDA_VISIBLE_DEVICES": "0"}, "gpu_memory_utilization": 0.9}
    assert a.gpus_used("disaggregated") == 1 and a.gpus_used("aggregated") == 1
    assert a.source == "auto"


@pytest.mark.parametrize("n", [2, 4])
def test_two_or_more_gpus_split_prefill_and_decode(n):
    a = assign_gpus("cuda", gpus(n), CFG, 0.85)
    assert (a.prefill_visible_devices, a.decode_visible_devices) == ("0", "1")
    assert not a.shared_gpu
    assert a.prefill_gpu_memory_utilization == a.decode_gpu_memory_utilization == 0.85
    assert a.engine_settings("decode")["env"] == {"CUDA_VISIBLE_DEVICES": "1"}
    assert a.gpus_used("disaggregated") == 2 and a.gpus_used("aggregated") == 1
    assert a.gpus_found == n


def test_overrides_win_and_are_recorded():
    a = assign_gpus("cuda", gpus(4), {**CFG, "prefill_visible_devices": "2", "decode_visible_devices": "3"}, 0.9)
    assert (a.prefill_visible_devices, a.decode_visible_devices, a.source) == ("2", "3", "config")
    assert not a.shared_gpu


def test_single_override_picks_another_gpu_for_the_other_side():
    a = assign_gpus("cuda", gpus(4), {**CFG, "prefill_visible_devices": "0,1"}, 0.9)
    assert a.prefill_visible_devices == "0,1" and a.decode_visible_devices == "2"
    assert a.gpus_used("disaggregated") == 3


def test_overlapping_overrides_share_memory():
    a = assign_gpus("cuda", gpus(2), {**CFG, "prefill_visible_devices": "1", "decode_visible_devices": "1",
                                      "shared_gpu_memory_utilization": 0.3}, 0.9)
    assert a.shared_gpu and a.prefill_gpu_memory_utilization == 0.3


@pytest.mark.parametrize("value,match", [("5", "does not exist"), ("a", "not a GPU index"), ("", "names no GPU")])
def test_bad_override_names_the_key(value, match):
    with pytest.raises(ConfigError, match=f"experiments.e3.prefill_visible_devices.*{match}"):
        assign_gpus("cuda", gpus(2), {**CFG, "prefill_visible_devices": value}, 0.9)


def test_shared_split_must_leave_room_for_two_engines():
    with pytest.raises(ConfigError, match="shared_gpu_memory_utilization"):
        assign_gpus("cuda", gpus(1), {**CFG, "shared_gpu_memory_utilization": 0.5}, 0.9)
