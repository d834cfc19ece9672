"""Vendor-datasheet GPU specifications, for physical floors (TTFT / TPOT) and efficiency ratios.

Every number below is copied from the NVIDIA document named in the entry's ``source``; none is
measured here. Conventions:

- ``bf16_dense_tflops``: peak BF16 *tensor-core* throughput **without** structured sparsity
  (datasheets often print the 2:4-sparse figure with an asterisk; we store half of it). For
  GeForce/Ada parts it is the "BF16 Tensor TFLOPS with FP32 accumulate" figure.
- ``mem_bandwidth_gbs``: peak DRAM bandwidth in decimal GB/s (1 GB/s = 1e9 B/s).
- ``memory_gib``: nominal capacity as printed ("80GB" HBM stacks are 80 GiB); NVML reports a
  little less because the driver reserves some of it.

Datasheet peaks are upper bounds: measured GEMM throughput and copy bandwidth are typically
70-90 % of them, so floors computed from this table are optimistic by design.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    key: str
    name: str
    bf16_dense_tflops: float
    mem_bandwidth_gbs: float
    memory_gib: float
    memory_type: str
    source: str

    @property
    def peak_bf16_flops(self) -> float:
        """Dense BF16 tensor FLOP/s."""
        return self.bf16_dense_tflops * 1e12

    @property
    def mem_bandwidth_bytes_per_s(self) -> float:
        return self.mem_bandwidth_gbs * 1e9


_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet"
_A100_DS = "NVIDIA A100 Tensor Core GPU datasheet"

GPU_SPECS: dict[str, GpuSpec] = {s.key: s for s in (
    GpuSpec("H100-SXM", "NVIDIA H100 SXM5 80GB", 989.0, 3350.0, 80, "HBM3", _H100_DS + " (H100 SXM column)"),
    GpuSpec("H100-PCIe", "NVIDIA H100 PCIe 80GB", 756.0, 2000.0, 80, "HBM2e", _H100_DS + " (H100 PCIe column)"),
    GpuSpec("H100-NVL", "NVIDIA H100 NVL 94GB", 835.0, 3900.0, 94, "HBM3", _H100_DS + " (H100 NVL column)"),
    GpuSpec("H200-SXM", "NVIDIA H200 SXM 141GB", 989.0, 4800.0, 141, "HBM3e", _H200_DS + " (H200 SXM column)"),
    GpuSpec("H200-NVL", "NVIDIA H200 NVL 141GB", 835.0, 4800.0, 141, "HBM3e", _H200_DS + " (H200 NVL column)"),
    GpuSpec("A100-SXM-40GB", "NVIDIA A100 SXM4 40GB", 312.0, 1555.0, 40, "HBM2", _A100_DS + " (A100 40GB SXM column)"),
    GpuSpec("A100-SXM-80GB", "NVIDIA A100 SXM4 80GB", 312.0, 2039.0, 80, "HBM2e", _A100_DS + " (A100 80GB SXM column)"),
    GpuSpec("A100-PCIe-40GB", "NVIDIA A100 PCIe 40GB", 312.0, 1555.0, 40, "HBM2", _A100_DS + " (A100 40GB PCIe column)"),
    GpuSpec("A100-PCIe-80GB", "NVIDIA A100 PCIe 80GB", 312.0, 1935.0, 80, "HBM2e", _A100_DS + " (A100 80GB PCIe column)"),
    GpuSpec("L40S", "NVIDIA L40S", 362.05, 864.0, 48, "GDDR6", "NVIDIA L40S GPU datasheet"),
    GpuSpec("L4", "NVIDIA L4", 121.0, 300.0, 24, "GDDR6", "NVIDIA L4 Tensor Core GPU datasheet"),
    GpuSpec("RTX-4090", "NVIDIA GeForce RTX 4090", 165.2, 1008.0, 24, "GDDR6X",
            "NVIDIA Ada GPU Architecture whitepaper, Appendix A (GeForce RTX 4090; BF16 tensor, FP32 accumulate)"),
)}

# (regex over the normalized name, spec key); first match wins, so specific patterns come first.
# Normalized = lower-case, alphanumerics only, leading "nvidia"/"geforce" removed. NVML examples:
# "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe",
# "NVIDIA H100 NVL", "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB",
# "NVIDIA A100 80GB PCIe", "NVIDIA L40S", "NVIDIA L4", "NVIDIA GeForce RTX 4090".
_RULES: list[tuple[re.Pattern[str], str]] = [(re.compile(p), k) for p, k in (
    (r"^h200nvl", "H200-NVL"),
    (r"^h200(sxm\w*|141gb\w*|hbm3e)?$", "H200-SXM"),
    (r"^h100nvl", "H100-NVL"),
    (r"^h100(80gb)?pcie", "H100-PCIe"),
    (r"^h100(sxm\w*|80gb\w*|hbm3)?$", "H100-SXM"),
    (r"^a100.*pcie.*80gb|^a100.*80gb.*pcie", "A100-PCIe-80GB"),
    (r"^a100.*pcie", "A100-PCIe-40GB"),
    (r"^a100.*80gb", "A100-SXM-80GB"),
    (r"^a100(sxm\w*)?(40gb)?$", "A100-SXM-40GB"),
    (r"^l40s$", "L40S"),
    (r"^l4$", "L4"),
    (r"^rtx4090$", "RTX-4090"),
)]


def _normalize(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for prefix in ("nvidia", "geforce"):
        key = key.removeprefix(prefix)
    return key


def lookup_gpu(name: str | None) -> GpuSpec | None:
    """The spec for an NVML device name (or a table key such as "H200-SXM"); None if unknown."""
    if not name:
        return None
    for key, spec in GPU_SPECS.items():
        if name.strip().lower() == key.lower():
            return spec
    norm = _normalize(name)
    for pattern, key in _RULES:
        if pattern.search(norm):
            return GPU_SPECS[key]
    return None
