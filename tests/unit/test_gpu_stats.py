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


def fake_energy_nvml(monkeypatch, counters):
    """A fake pynvml whose total-energy counter returns the next value of ``counters[index]``."""
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: len(counters)
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: next(counters[h])
    monkeypatch.setitem(sys.modules, "pynvml", fake)


def test_energy_arithmetic_on_recorded_counters(monkeypatch):
    from context_research.gpu_stats import energy_columns, read_energy_mj

    fake_energy_nvml(monkeypatch, [iter([1_000_000, 1_700_000]), iter([5_000, 305_000])])
    before, after = read_energy_mj(), read_energy_mj()
    cols = energy_columns(before, after, duration_s=10.0, output_tokens=500, requests=4)
    # (700 + 300) J over 10 s: 100 W, 2 J per output token, 250 J per request, 2 GPUs summed
    assert cols["energy_available"] and cols["energy_j"] == 1000.0 and cols["energy_gpus"] == 2
    assert cols["energy_j_per_output_token"] == 2.0 and cols["energy_j_per_request"] == 250.0
    assert cols["energy_avg_power_w"] == 100.0 and cols["energy_note"] is None


def test_energy_only_on_the_engines_gpus(monkeypatch):
    from context_research.gpu_stats import energy_device_indices, read_energy_mj

    assert energy_device_indices("1") == [1] and energy_device_indices("GPU-abc") is None
    assert energy_device_indices(None) is None
    fake_energy_nvml(monkeypatch, [iter([0]), iter([42])])
    assert read_energy_mj([1]) == {"available": True, "energy_mj": {1: 42}}


def test_energy_unavailable_says_why(monkeypatch):
    from context_research.gpu_stats import energy_columns, read_energy_mj

    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: (_ for _ in ()).throw(RuntimeError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    reading = read_energy_mj()
    assert reading == {"available": False, "reason": "NVML unavailable: RuntimeError: NVML Shared Library Not Found"}
    cols = energy_columns(reading, reading, 1.0, 10, 1)
    assert cols["energy_available"] is False and cols["energy_j_per_output_token"] is None
    assert "Shared Library" in cols["energy_note"]
    # a GPU without the counter (pre-Volta): NVML raises NotSupported
    fake_energy_nvml(monkeypatch, [iter([])])
    sys.modules["pynvml"].nvmlDeviceGetTotalEnergyConsumption = lambda h: (_ for _ in ()).throw(
        RuntimeError("Not Supported"))
    assert "total-energy counter unavailable" in read_energy_mj()["reason"]
    ok = {"available": True, "energy_mj": {0: 10}}
    assert "backwards" in energy_columns(ok, {"available": True, "energy_mj": {0: 5}}, 1.0, 1, 1)["energy_note"]
