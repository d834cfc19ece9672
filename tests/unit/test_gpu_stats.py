import sys
import types

from context_research.gpu_stats import NvmlSampler


def test_without_nvml_the_block_says_why(monkeypatch):
    fake = types.ModuleType("pynvml")

    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    summary = NvmlSampler().start().stop()
    assert summary == {"available": False,
                       "reason": "NVML unavailable: RuntimeError: NVML Shared Library Not Found"}


def test_sampler_reports_peak_and_mean(monkeypatch):
    used = iter([10, 30, 20, 20, 20, 20, 20, 20, 20, 20] + [20] * 1000)
    util = iter([100, 50] + [50] * 1000)
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlSystemGetDriverVersion = lambda: "580.0"
    fake.nvmlDeviceGetName = lambda h: "NVIDIA H200"
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=100, used=next(used))
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=next(util))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = NvmlSampler(interval_s=3600)  # the thread never fires: samples at start and stop only
    sampler.start()
    summary = sampler.stop()
    dev = summary["devices"][0]
    # start() reads total once (10 consumed), then samples 30/100 at start and 20/50 at stop.
    assert summary["available"] and dev["name"] == "NVIDIA H200" and dev["samples"] == 2
    assert dev["memory_used_peak_bytes"] == 30 and dev["memory_used_mean_bytes"] == 25
    assert dev["utilization_peak_pct"] == 100 and dev["utilization_mean_pct"] == 75
