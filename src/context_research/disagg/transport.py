"""Which transport carried the KV, and the link it could have used.

NIXL moves the KV through UCX. With ``UCX_PROTO_INFO=y`` (set for NIXL engines by
``connectors.connector_env``) UCX prints, per endpoint and operation, the protocol it selected
and the transport ("Config" column), e.g.::

    | remote memory read by ucp_get*(multi) into cuda/GPU0 from cuda/dev[1] |
    | 0..inf | software emulation | tcp/lo                                  |

``kv_transport`` reads the log of the engine that issues the transfer (pull, ``read``: the decode
engine's GPU-to-GPU reads; push, ``write``: the prefill engine's GPU-to-GPU writes) and says
whether the transport is slower than the host allows: on one host, GPU memory should move by CUDA
IPC (``cuda_ipc``) or NVLink, not over TCP or in software emulation.

``link_ceiling_gb_s`` measures what the link can do: a device-to-device copy on one GPU, or a
GPU-to-GPU copy between the prefill and decode GPUs, with torch, in the driver process.
"""

from __future__ import annotations

import re
import statistics
import time
from typing import Any

_HEADER = re.compile(r"\|\s*(remote memory (?:read|write) by ucp_\w+\*?(?:\([^)]*\))?\s+(?:into|from)\s+[^|]+?)\s*\|")
_ROW = re.compile(r"\|\s*[\d.]+\.\.(?:inf|\d+)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|")
FAST_GPU_TRANSPORTS = ("cuda_ipc", "nvlink", "gdr_copy", "rc_mlx", "dc_mlx", "ud_mlx")


def ucx_protocols(log_text: str) -> list[dict[str, str]]:
    """Every (operation, description, transport) UCX_PROTO_INFO printed, in order, deduplicated."""
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    operation = None
    for line in (log_text or "").splitlines():
        head = _HEADER.search(line)
        if head:
            operation = " ".join(head.group(1).split())
            continue
        row = _ROW.search(line)
        if row and operation:
            key = (operation, row.group(1).strip(), row.group(2).strip())
            if key not in seen:
                seen.add(key)
                out.append({"operation": key[0], "description": key[1], "transport": key[2]})
    return out


# Which engine issues the transfer, by direction: its log has UCX's protocol selection.
ISSUING_ENGINE = {"read": "decode", "write": "prefill"}


def kv_transport(log_text: str, direction: str = "read") -> dict[str, Any]:
    """The transport of the GPU-to-GPU ``direction`` ("read": the decode engine pulls; "write":
    the prefill engine pushes) in the issuing engine's log, and whether it is slower than a host
    with CUDA IPC allows. ``available: false`` with the reason when UCX printed nothing."""
    if direction not in ISSUING_ENGINE:
        return {"available": False, "direction": direction,
                "reason": f"the KV moves by {direction}, not by a UCX read or write"}
    engine = ISSUING_ENGINE[direction]
    ops = [p for p in ucx_protocols(log_text)
           if p["operation"].startswith(f"remote memory {direction}") and p["operation"].count("cuda") >= 2]
    if not ops:
        return {"available": False, "direction": direction, "engine": engine,
                "reason": f"no UCX protocol selection for a GPU-to-GPU {direction} in the {engine} engine log "
                          f"(UCX_PROTO_INFO unset, or not a NIXL run)"}
    transports = sorted({p["transport"] for p in ops})
    descriptions = sorted({p["description"] for p in ops})
    fast = [t for t in transports if any(t.startswith(f) for f in FAST_GPU_TRANSPORTS)]
    slow = not fast
    what = f"GPU-to-GPU KV {direction}s ({engine} engine) went over {', '.join(transports)}"
    return {"available": True, "direction": direction, "engine": engine, "transports": transports,
            "descriptions": descriptions, "slower_than_host_allows": slow,
            "note": (f"{what} ({', '.join(descriptions)}): slower than CUDA IPC or NVLink, which one host allows; "
                     f"UCX found no GPU transport (is its cuda_ipc module present, may the engines share CUDA "
                     f"memory, and does its UCX allow this operation over CUDA IPC?)") if slow else what}


def link_ceiling_gb_s(src_device: str, dst_device: str, gib: float = 1.0, repeats: int = 5) -> dict[str, Any]:
    """Median GB/s (1e9 bytes/s) of copying ``gib`` GiB from ``src_device`` to ``dst_device`` with
    torch: what the KV's link can carry. ``available: false`` with the reason where it cannot run."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {"available": False, "reason": "no CUDA device in the driver process"}
        n = int(gib * (1 << 30))
        src = torch.empty(n, dtype=torch.uint8, device=src_device)
        dst = torch.empty(n, dtype=torch.uint8, device=dst_device)
        dst.copy_(src)  # warm-up: peer mappings, allocator
        torch.cuda.synchronize()
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst.copy_(src)
            torch.cuda.synchronize()
            rates.append(n / (time.perf_counter() - t0) / 1e9)
        del src, dst
        torch.cuda.empty_cache()
        kind = "device copy on one GPU" if src_device == dst_device else "GPU-to-GPU copy"
        return {"available": True, "gb_s": statistics.median(rates), "kind": kind, "src": src_device,
                "dst": dst_device, "bytes": n, "repeats": repeats, "how": "torch Tensor.copy_, median"}
    except Exception as exc:  # a probe that cannot run is a recorded reason, not a failed run
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}


def measure_link_ceiling(prefill_devices: str | None, decode_devices: str | None, timeout_s: float = 180.0
                         ) -> dict[str, Any]:
    """``link_ceiling_gb_s`` between the prefill and the decode engine's first GPUs, run in a
    child process so that its CUDA context is gone before the engines start."""
    import json
    import subprocess
    import sys

    src = f"cuda:{(prefill_devices or '0').split(',')[0]}"
    dst = f"cuda:{(decode_devices or prefill_devices or '0').split(',')[0]}"
    code = ("import json, sys; from context_research.disagg.transport import link_ceiling_gb_s; "
            "print(json.dumps(link_ceiling_gb_s(sys.argv[1], sys.argv[2])))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, src, dst], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1])
        return {"available": False, "reason": f"probe exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
