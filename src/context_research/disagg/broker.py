"""KV handoffs between the prefill and the decode pool: ids, bytes moved, timings, cross-checks.

Every timing of the transfer is measured inside the engines by the measuring connector
(``measuring_connector``; definitions in ``ledger``) and joined to the handoff by its id. The
client adds what only it sees: the producer's and consumer's request times, and the waterfall of
one handoff on the shared monotonic clock. Bytes (all measured after the point's requests
completed, outside every timed window):

- ``bytes_moved``: the sizes of the files the connector wrote for this prompt in the shared folder
  (ExampleConnector: one safetensors file per attention layer, headers included); the consumer
  reads exactly these files. Connectors without a folder (NIXL, P2P NCCL) leave it empty.
- ``payload_bytes``: the tensor bytes inside those files (from the safetensors headers);
  ``stored_tokens_measured`` is the token dimension of the stored tensors.
- ``kv_bytes_loaded`` (derived, not a byte count): the tokens the consumer's connector loaded x the
  bytes per token of the consumer's registered KV cache.
- ``analytical_bytes``: ``kv_bytes_per_token(model config, served KV dtype)`` x the tokens the
  connector should store for an n-token prompt (ExampleConnector: ``((n - 1) // block) * block``,
  whole blocks, never the last token; NIXL: every block the prompt touches,
  ``ceil(n / block) * block``). ``bytes_agree`` compares the files' bytes with it:
  ``|measured - analytical| / analytical <= tolerance`` (default 2%). NIXL leaves no files: its own
  byte counter is compared per point (``verdict.point_bytes_check``).
- ``expected_external_kv_tokens``: the prompt tokens the consumer should load rather than compute
  (ExampleConnector: ``((n - 2) // block) * block``; NIXL: n). ``kv_moved`` is true only when the
  consumer succeeded, the bytes agree and the consumer's connector loaded exactly that many
  tokens (``verdict.handoff_verdict``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .connectors import DIRECTIONS, NIXL_CONNECTORS
from .ledger import KvTiming

DEFAULT_TOLERANCE = 0.02


def example_connector_stored_tokens(n_tokens: int, block_size: int) -> int:
    """Tokens ExampleConnector stores for an n-token prompt (its ``align_to_block_size(n)``)."""
    return max(0, (n_tokens - 1) // block_size * block_size)


def example_connector_lookup_tokens(n_tokens: int, block_size: int) -> int:
    """Tokens the consumer looks up for the same prompt (``align_to_block_size(n - 1)``)."""
    return max(0, (n_tokens - 2) // block_size * block_size)


def expected_external_kv_tokens(connector: str, n_tokens: int, block_size: int | None) -> int | None:
    """Prompt tokens the consumer should load instead of computing: ExampleConnector looks up
    ``((n-2)//block)*block``; NIXL (pull and push) moves every prompt token (vLLM's remote-prefill
    count, no back-off for a dense model); other connectors: unknown (None)."""
    if connector == "ExampleConnector":
        return example_connector_lookup_tokens(n_tokens, block_size) if block_size else None
    if connector in NIXL_CONNECTORS:
        return n_tokens
    return None


def nixl_moved_tokens(n_tokens: int, block_size: int | None) -> int:
    """Token slots whose KV NIXL moves for an n-token prompt: it transfers whole blocks (one
    descriptor per block and layer), so the last, partly filled block counts whole."""
    return -(-n_tokens // block_size) * block_size if block_size else n_tokens


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


# The waterfall of one handoff: consecutive segments on the shared monotonic clock, each from a
# measured time to the next (client: send / reply / first token; engine: the ledger's events).
WATERFALL = (
    ("waterfall_producer_frontend_ms", "t_producer_sent", "t_producer_lookup"),
    ("waterfall_producer_engine_ms", "t_producer_lookup", "t_producer_finished"),
    ("waterfall_producer_reply_ms", "t_producer_finished", "t_producer_replied"),
    ("waterfall_broker_ms", "t_producer_replied", "t_consumer_sent"),
    ("waterfall_consumer_frontend_ms", "t_consumer_sent", "t_consumer_lookup"),
    ("waterfall_kv_wait_load_ms", "t_consumer_lookup", "t_consumer_kv_ready"),
    ("waterfall_first_token_ms", "t_consumer_kv_ready", "t_consumer_first_token"),
)
TIMING_COLUMNS = ("kv_save_ms", "kv_save_step_ms", "kv_save_step_requests", "kv_save_window_ms", "kv_load_ms",
                  "kv_load_step_ms", "kv_load_step_requests", "kv_load_async", "kv_wait_ms", "kv_stall_ms",
                  "consumer_engine_ms", "kv_stall_ratio", "producer_engine_ms", "external_kv_tokens",
                  "kv_bytes_loaded", "kv_send_done_ms")


@dataclass
class Handoff:
    """One KV handoff from the prefill pool to the decode pool."""

    handoff_id: str
    request_id: str
    prompt_tokens: int
    connector: str
    kv_path: str | None = None
    label: str = "measured"
    concurrency: int | None = None
    storage_key: str | None = None
    stored_tokens_expected: int | None = None
    expected_external_kv_tokens: int | None = None
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
    timing: KvTiming | None = None
    # Client times on the monotonic clock (perf_counter), for the waterfall.
    t_producer_sent: float | None = None
    t_producer_replied: float | None = None
    t_consumer_sent: float | None = None
    t_consumer_first_token: float | None = None

    def measured_bytes(self) -> tuple[float | None, str]:
        """The bytes this handoff's own check uses, and where they come from: the connector's files.
        NIXL's bytes are counted per point (``verdict.point_bytes_check``); loaded tokens x bytes per
        token (``kv_bytes_loaded``) is derived from a token count and never checks bytes."""
        if self.bytes_moved is not None:
            return self.bytes_moved, "files"
        if self.connector in NIXL_CONNECTORS:
            return None, "per point: NIXL's byte counter"
        return None, "not measured"

    def waterfall(self) -> dict[str, float | None]:
        times = {**{k: getattr(self, k) for k in ("t_producer_sent", "t_producer_replied", "t_consumer_sent",
                                                    "t_consumer_first_token")},
                 **({k: v for k, v in self.timing.as_dict().items() if k.startswith("t_")} if self.timing else {})}
        out: dict[str, float | None] = {}
        for name, start, end in WATERFALL:
            a, b = times.get(start), times.get(end)
            out[name] = (b - a) * 1000.0 if a is not None and b is not None else None
        return out

    def as_row(self, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
        from .verdict import handoff_verdict

        row = {k: v for k, v in asdict(self).items() if k != "timing" and not k.startswith("t_")}
        row["kv_transfer_direction"] = DIRECTIONS.get(self.connector)
        row["stored_dtypes"] = ",".join(self.stored_dtypes)
        row["stored_tokens_measured"] = ",".join(map(str, self.stored_tokens_measured))
        timing = self.timing.as_dict() if self.timing else {}
        row.update({k: timing.get(k) for k in TIMING_COLUMNS})
        row["kv_timing_source"] = timing.get("source") or "not measured: no ledger joined"
        loaded, load_ms = row["kv_bytes_loaded"], row["kv_load_ms"]
        row["kv_load_gb_s_derived"] = loaded / load_ms / 1e6 if loaded is not None and load_ms else None
        measured, row["bytes_source"] = self.measured_bytes()
        row.update(analytical_check(measured, self.analytical_bytes, tolerance))
        row["kv_moved"], row["kv_check"] = handoff_verdict(row)
        row.update(self.waterfall())
        return row


class KvBroker:
    """Hands out handoff ids and measures what each handoff moved.

    ``kv_bytes_per_token`` is the analytical per-token KV size of the served model (K and V, all
    layers, the served KV dtype: ``analysis.model_math.kv_bytes_per_token(config, kv_dtype)``);
    ``block_size`` the engines' KV block size. The agreement tolerance is applied when a handoff
    is turned into a row (``Handoff.as_row(tolerance)``).
    """

    def __init__(self, connector: str, kv_bytes_per_token: int, block_size: int | None,
                 storage_dir: Path | None = None, prefix: str = "handoff", kv_path: str | None = None,
                 ids: Iterator[int] | None = None):
        self.connector = connector
        self.kv_bytes_per_token = int(kv_bytes_per_token)
        self.block_size = block_size
        self.storage_dir = Path(storage_dir) if storage_dir is not None else None
        self.prefix = prefix
        self.kv_path = kv_path
        # One counter for every way of a run keeps handoff ids unique across its transfers.csv.
        self._ids = ids if ids is not None else itertools.count()
        self.handoffs: list[Handoff] = []

    def open(self, request_id: str, prompt: Sequence[int] | str) -> Handoff:
        n = len(prompt)
        h = Handoff(handoff_id=f"{self.prefix}-{next(self._ids):05d}", request_id=request_id, prompt_tokens=n,
                    connector=self.connector, kv_path=self.kv_path)
        if self.connector == "ExampleConnector" and self.block_size and not isinstance(prompt, str):
            h.stored_tokens_expected = example_connector_stored_tokens(n, self.block_size)
            h.storage_key = example_connector_folder(prompt, self.block_size)
        elif self.connector in NIXL_CONNECTORS:
            # NIXL moves whole blocks; there is no folder to measure: NIXL's own byte counter over the
            # point is checked against the sum of these (rows.transfer_columns).
            h.stored_tokens_expected = nixl_moved_tokens(n, self.block_size)
        elif self.connector != "ExampleConnector":
            h.stored_tokens_expected = n  # P2P NCCL: every prompt token, nothing to measure them by
        h.expected_external_kv_tokens = expected_external_kv_tokens(self.connector, n, self.block_size)
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
