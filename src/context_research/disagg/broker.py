"""KV handoffs between the prefill and the decode pool: ids, bytes moved, timings, cross-checks.

Definitions (all client-side, seconds in fields ending ``_s``):

- ``bytes_moved``: the sizes of the files the connector wrote for this prompt in the shared folder
  (ExampleConnector: one safetensors file per attention layer, headers included); the consumer
  reads exactly these files. They are measured after the consumer's request completed (the
  folder stays until the run ends), so the accounting is outside every timed window.
- ``payload_bytes``: the tensor bytes inside those files (from the safetensors headers);
  ``stored_tokens_measured`` is the token dimension of the stored tensors.
- ``analytical_bytes``: ``kv_bytes_per_token(model config, served KV dtype)`` x the tokens
  ExampleConnector stores for an n-token prompt, ``((n - 1) // block) * block`` (whole blocks,
  never the last token; e.g. 16,368 of 16,384 with 16-token blocks). ``bytes_agree`` is
  ``|bytes_moved - analytical| / analytical <= tolerance`` (default 2%).
- ``store_s``: producer request E2E (prefill with ``max_tokens=1``, KV written) minus the median
  E2E of isolated prefills of the same length on the aggregated engine (``max_tokens=1``, one in
  flight, nothing written). At concurrency > 1 any queueing on the producer counts as store
  time; on a quiet engine a store cheaper than the baseline's noise comes out slightly negative.
- ``load_s``: the consumer request's TTFT: reading the files, writing them into the paged KV
  cache, computing the prompt tokens not transferred and sampling the first token. An upper
  bound on the load itself.
- ``transfer_s = store_s + load_s``; ``throughput_bytes_per_s = bytes_moved / transfer_s``
  (None when transfer_s <= 0, i.e. the store cost was within the baseline's noise).
- ``stall_ratio = load_s / consumer E2E``: the share of the decode engine's request time spent
  waiting for the KV before it can decode.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_TOLERANCE = 0.02


def example_connector_stored_tokens(n_tokens: int, block_size: int) -> int:
    """Tokens ExampleConnector stores for an n-token prompt (its ``align_to_block_size(n)``)."""
    return max(0, (n_tokens - 1) // block_size * block_size)


def example_connector_lookup_tokens(n_tokens: int, block_size: int) -> int:
    """Tokens the consumer looks up for the same prompt (``align_to_block_size(n - 1)``)."""
    return max(0, (n_tokens - 2) // block_size * block_size)


def example_connector_folder(token_ids: Sequence[int], block_size: int) -> str:
    """Folder name ExampleConnector stores a prompt's KV under: md5 of the stored tokens' int64
    bytes (vLLM builds ``torch.tensor(token_ids)``, int64, and hashes ``.numpy().tobytes()``)."""
    stored = example_connector_stored_tokens(len(token_ids), block_size)
    data = np.asarray(list(token_ids)[:stored], dtype=np.int64).tobytes()
    try:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    except ValueError:  # FIPS host: vLLM's safe_hash falls back to sha256 the same way
        return hashlib.sha256(data).hexdigest()


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (format: u64 little-endian length, then JSON)."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def folder_bytes(folder: Path) -> dict[str, Any]:
    """Files, total bytes, tensor payload bytes, header bytes, dtypes and token counts of a KV folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    total = payload = 0
    dtypes: set[str] = set()
    tokens: set[int] = set()
    for f in files:
        size = f.stat().st_size
        total += size
        if f.suffix == ".safetensors":
            for name, meta in safetensors_header(f).items():
                if name == "__metadata__":
                    continue
                start, end = meta["data_offsets"]
                payload += end - start
                dtypes.add(str(meta["dtype"]))
                if meta.get("shape"):
                    tokens.add(int(meta["shape"][0]))
    return {"files": len(files), "bytes": total, "payload_bytes": payload, "header_bytes": total - payload,
            "stored_dtypes": sorted(dtypes), "stored_tokens_measured": sorted(tokens)}


def analytical_check(measured_bytes: float | None, analytical_bytes: float | None,
                     tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Relative error of measured vs analytical bytes and whether it is within ``tolerance``."""
    if measured_bytes is None or not analytical_bytes:
        return {"bytes_relative_error": None, "bytes_agree": None}
    err = (float(measured_bytes) - float(analytical_bytes)) / float(analytical_bytes)
    return {"bytes_relative_error": err, "bytes_agree": abs(err) <= tolerance}


@dataclass
class Handoff:
    """One KV handoff from the prefill pool to the decode pool."""

    handoff_id: str
    request_id: str
    prompt_tokens: int
    connector: str
    storage_key: str | None = None
    stored_tokens_expected: int | None = None
    lookup_tokens_expected: int | None = None
    analytical_bytes: int | None = None
    bytes_moved: int | None = None
    payload_bytes: int | None = None
    header_bytes: int | None = None
    files: int | None = None
    stored_dtypes: list[str] = field(default_factory=list)
    stored_tokens_measured: list[int] = field(default_factory=list)
    producer_e2e_s: float | None = None
    baseline_prefill_s: float | None = None
    consumer_ttft_s: float | None = None
    consumer_e2e_s: float | None = None
    ok: bool = False
    error: str | None = None

    @property
    def store_s(self) -> float | None:
        if self.producer_e2e_s is None or self.baseline_prefill_s is None:
            return None
        return self.producer_e2e_s - self.baseline_prefill_s

    @property
    def load_s(self) -> float | None:
        return self.consumer_ttft_s

    @property
    def transfer_s(self) -> float | None:
        if self.store_s is None or self.load_s is None:
            return None
        return self.store_s + self.load_s

    @property
    def throughput_bytes_per_s(self) -> float | None:
        t = self.transfer_s
        return self.bytes_moved / t if self.bytes_moved is not None and t and t > 0 else None

    @property
    def stall_ratio(self) -> float | None:
        if self.load_s is None or not self.consumer_e2e_s:
            return None
        return self.load_s / self.consumer_e2e_s

    def as_row(self, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
        row = asdict(self)
        row["stored_dtypes"] = ",".join(self.stored_dtypes)
        row["stored_tokens_measured"] = ",".join(map(str, self.stored_tokens_measured))
        row.update({"store_s": self.store_s, "load_s": self.load_s, "transfer_s": self.transfer_s,
                    "throughput_bytes_per_s": self.throughput_bytes_per_s, "stall_ratio": self.stall_ratio})
        row.update(analytical_check(self.bytes_moved, self.analytical_bytes, tolerance))
        return row


class KvBroker:
    """Hands out handoff ids and measures what each handoff moved.

    ``kv_bytes_per_token`` is the analytical per-token KV size of the served model (K and V, all
    layers, the served KV dtype: ``analysis.model_math.kv_bytes_per_token(config, kv_dtype)``);
    ``block_size`` the engines' KV block size. The agreement tolerance is applied when a handoff
    is turned into a row (``Handoff.as_row(tolerance)``).
    """

    def __init__(self, connector: str, kv_bytes_per_token: int, block_size: int | None,
                 storage_dir: Path | None = None, prefix: str = "handoff"):
        self.connector = connector
        self.kv_bytes_per_token = int(kv_bytes_per_token)
        self.block_size = block_size
        self.storage_dir = Path(storage_dir) if storage_dir is not None else None
        self.prefix = prefix
        self._ids = itertools.count()
        self.handoffs: list[Handoff] = []

    def open(self, request_id: str, prompt: Sequence[int] | str) -> Handoff:
        n = len(prompt)
        h = Handoff(handoff_id=f"{self.prefix}-{next(self._ids):05d}", request_id=request_id, prompt_tokens=n,
                    connector=self.connector)
        if self.connector == "ExampleConnector" and self.block_size and not isinstance(prompt, str):
            h.stored_tokens_expected = example_connector_stored_tokens(n, self.block_size)
            h.lookup_tokens_expected = example_connector_lookup_tokens(n, self.block_size)
            h.storage_key = example_connector_folder(prompt, self.block_size)
        elif self.connector != "ExampleConnector":
            # NIXL / P2P NCCL send the KV of every prompt token; there is no folder to measure, so
            # only the analytical size is known (bytes_moved stays None, agreement unknown).
            h.stored_tokens_expected = n
        if h.stored_tokens_expected is not None:
            h.analytical_bytes = h.stored_tokens_expected * self.kv_bytes_per_token
        self.handoffs.append(h)
        return h

    def account_store(self, h: Handoff) -> None:
        """Measure the bytes the producer wrote for this handoff (ExampleConnector's folder)."""
        if self.storage_dir is None or h.storage_key is None:
            return
        info = folder_bytes(self.storage_dir / h.storage_key)
        h.bytes_moved, h.payload_bytes, h.header_bytes, h.files = (
            info["bytes"], info["payload_bytes"], info["header_bytes"], info["files"])
        h.stored_dtypes, h.stored_tokens_measured = info["stored_dtypes"], info["stored_tokens_measured"]

    def storage_total_bytes(self) -> int | None:
        """Every byte in the shared folder (cross-check of the per-handoff sums)."""
        if self.storage_dir is None or not self.storage_dir.is_dir():
            return None
        return sum(p.stat().st_size for p in self.storage_dir.rglob("*") if p.is_file())


def served_kv_dtype(cache_info: dict[str, str] | None, engine_log: str, hf_config: dict[str, Any] | None,
                    ) -> tuple[str | None, str]:
    """The KV cache dtype the engine serves, and where that came from.

    vLLM's ``cache_config_info`` gauge names ``cache_dtype`` ("auto" = the model dtype); the model
    dtype is in the engine's "Initializing a V1 LLM engine ... dtype=torch.X" line; the model's
    ``config.json`` is the last resort.
    """
    import re

    cache_dtype = (cache_info or {}).get("cache_dtype")
    if cache_dtype and cache_dtype != "auto":
        return cache_dtype, "engine cache_config_info.cache_dtype"
    m = re.search(r"dtype=torch\.(\w+)", engine_log or "")
    if m:
        return m.group(1), "engine log (model dtype; cache_dtype auto)"
    cfg = hf_config or {}
    name = cfg.get("torch_dtype") or cfg.get("dtype")
    return (str(name) if name else None), "model config.json"
