"""A KV connector that times the connector it wraps, per request, inside the engine.

vLLM loads an external connector class through ``kv_transfer_config.kv_connector_module_path``:
it imports this module and reads the attribute named by ``kv_connector``. ``__getattr__`` below
answers any registered connector name (``ExampleConnector``, ``NixlConnector``, ...) with a
subclass of that very connector whose timed methods call the original and write what they saw
to a ledger. The connector keeps its own name, so vLLM's checks on the name (NIXL's side channel,
layouts) see what they would see without the wrapper; only the class differs.

The ledger is one JSONL file per engine process and side (scheduler / worker) in the folder
``kv_connector_extra_config.measure_ledger_dir``; ``measure_label`` names the engine (prefill or
decode). Every time is ``time.perf_counter()``, which on Linux reads CLOCK_MONOTONIC, the clock
the client's records use, so engine and client times line up. ``context_research.disagg.ledger``
reads the files and joins them to the client's handoffs by request id.

What is recorded (engine side):

- scheduler: the first KV lookup of a request (``get_num_new_matched_tokens``: tokens the
  connector offers, whether it loads them asynchronously, the request's arrival time), the
  allocation of external tokens (``update_state_after_alloc``), the step in which the request is
  first scheduled to compute, asynchronous receives reported done (``update_connector_output``),
  and the request's end (``request_finished``).
- worker: per forward step, the time spent inside ``start_load_kv`` and ``wait_for_layer_load``
  (the load) and inside ``save_kv_layer`` and ``wait_for_save`` (the save), with the requests
  that loaded or saved in that step and each one's tokens (loaded, or computed and saved), so the
  step's time can be shared among them; asynchronous receives and sends reported done
  (``get_finished`` / ``get_transfer_results``); once, the bytes per token of the KV cache
  tensors the engine registered. On CUDA each timed call runs between two device
  synchronizations: the layers' queued compute is not counted, and a copy still queued on the
  GPU is not missed.

NIXL, pull and push (vLLM 0.26.0, ``kv_connector/v1/nixl/``). Neither saves inside the forward
pass: ``save_kv_layer`` and ``wait_for_layer_load`` do nothing and ``wait_for_save`` only copies to
a host buffer where one is configured, so the producer's ``save`` events time near-empty calls. The
consumer's scheduler offers the whole prompt asynchronously in both modes, and its worker's
``start_load_kv`` of the step that allocated the blocks is where the transfer is requested:

- pull (``NixlConnector`` = ``NixlPullConnector``): the consumer issues a READ of the producer's
  blocks there; ``get_finished`` reports the receive when the READ is done, and the producer
  reports the send when the consumer's read-done notice reaches it;
- push (``NixlPushConnector``): the consumer hands a registration of its blocks to its writer
  thread there, which sends it to the producer; the producer's writer thread WRITEs the blocks
  (outside any connector call this module can time) and notifies the consumer, whose
  ``get_finished`` then reports the receive; the producer reports the send when its WRITE is done.

So the load (``start_load_kv`` to the receive reported done) spans the whole transfer as the
consumer waits for it in both modes, registration and WRITE included for push. The wrapped
methods are the same for both classes: nothing here depends on which side issues the transfer.

This module runs inside the engine process; it imports vLLM only when vLLM asks for a class.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

LEDGER_DIR_KEY = "measure_ledger_dir"
LABEL_KEY = "measure_label"
STEP_TAG = "_context_research_step"  # our per-step note on the wrapped connector's metadata
_classes: dict[str, type] = {}


class LedgerWriter:
    """Appends one JSON line per event to ``<dir>/<label>-<side>-<pid>.jsonl`` (flushed per line,
    so the client can read a point's events as soon as its requests are answered)."""

    def __init__(self, folder: str | os.PathLike, label: str, side: str):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / f"{label}-{side}-{os.getpid()}.jsonl"
        self.base = {"label": label, "side": side, "pid": os.getpid()}
        self._lock = threading.Lock()
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({**self.base, "event": event, **fields}, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()


def _synchronize_device() -> None:
    """Wait for queued GPU work (a KV copy launched asynchronously) before reading the clock. The
    engine has imported torch already; where it has not, nothing can be queued."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except Exception:  # no usable CUDA device: nothing is queued
        pass


class MeasuringMixin:
    """Placed before the wrapped connector in the MRO: every override calls ``super()``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        role = kwargs.get("role", args[1] if len(args) > 1 else None)
        transfer = vllm_config.kv_transfer_config
        extra = dict(transfer.kv_connector_extra_config or {})
        folder = extra.get(LEDGER_DIR_KEY)
        if not folder:
            raise ValueError(f"kv_connector_extra_config.{LEDGER_DIR_KEY} is not set: the measuring connector "
                             f"needs a folder for its ledger")
        side = "scheduler" if "SCHEDULER" in str(role).upper() else "worker"
        self._ledger = LedgerWriter(folder, str(extra.get(LABEL_KEY) or transfer.kv_role), side)
        self._saves_kv = bool(getattr(transfer, "is_kv_producer", False))
        self._block_size = int(getattr(vllm_config.cache_config, "block_size", 0) or 0)
        # scheduler side
        self._looked_up: set[str] = set()
        self._scheduled: set[str] = set()
        self._finished: set[str] = set()
        self._loads_this_step: dict[str, int] = {}
        self._step = 0
        # worker side
        self._tag: dict[str, Any] | None = None
        self._load_reqs: dict[str, int] = {}   # the requests whose load the pending timing belongs to
        self._load_step: int | None = None
        self._load_t0: float | None = None
        self._load_busy = 0.0
        self._load_end: float | None = None
        self._save_t0: float | None = None
        self._save_busy = 0.0
        self._done_recving: set[str] = set()
        self._done_sending: set[str] = set()
        self._ledger.write("start", connector=type(self).__mro__[2].__name__, kv_role=transfer.kv_role,
                           block_size=self._block_size, t=time.perf_counter())

    # -- scheduler side ------------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> Any:
        result = super().get_num_new_matched_tokens(request, num_computed_tokens)
        rid = request.request_id
        if rid not in self._looked_up and result is not None and result[0] is not None:
            self._looked_up.add(rid)
            self._ledger.write("lookup", req=rid, t=time.perf_counter(), t_wall=time.time(),
                               arrival_wall=getattr(request, "arrival_time", None),
                               prompt_tokens=getattr(request, "num_prompt_tokens", None),
                               computed_tokens=num_computed_tokens, external_tokens=result[0],
                               load_async=bool(result[1]))
        return result

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> Any:
        out = super().update_state_after_alloc(request, blocks, num_external_tokens)
        if num_external_tokens:
            self._loads_this_step[request.request_id] = int(num_external_tokens)
            self._ledger.write("alloc", req=request.request_id, t=time.perf_counter(),
                               external_tokens=int(num_external_tokens))
        return out

    def build_connector_meta(self, scheduler_output: Any) -> Any:
        meta = super().build_connector_meta(scheduler_output)
        self._step += 1
        now = time.perf_counter()
        for new in getattr(scheduler_output, "scheduled_new_reqs", None) or ():
            if new.req_id not in self._scheduled:
                self._scheduled.add(new.req_id)
                self._ledger.write("scheduled", req=new.req_id, t=now, step=self._step,
                                   computed_tokens=new.num_computed_tokens)
        scheduled = dict(getattr(scheduler_output, "num_scheduled_tokens", None) or {})
        # Saves: every request the step computes, with its tokens (the step's save time is shared
        # by them in proportion, ledger.share); loads: the requests allocated external tokens.
        tag = {"step": self._step, "loads": dict(self._loads_this_step),
               "saves": {rid: int(n) for rid, n in sorted(scheduled.items())} if self._saves_kv else {}}
        self._loads_this_step.clear()
        try:
            setattr(meta, STEP_TAG, tag)
        except (AttributeError, TypeError):  # a metadata class with __slots__: steps go unattributed
            pass
        return meta

    def update_connector_output(self, connector_output: Any) -> Any:
        out = super().update_connector_output(connector_output)
        now = time.perf_counter()
        recving = sorted(getattr(connector_output, "finished_recving", None) or ())
        sending = sorted(getattr(connector_output, "finished_sending", None) or ())
        if recving:
            self._ledger.write("recv_done", reqs=recving, t=now)
        if sending:
            self._ledger.write("send_done", reqs=sending, t=now)
        return out

    def _finished_once(self, request: Any) -> None:
        rid = request.request_id
        if rid not in self._finished:
            self._finished.add(rid)
            self._ledger.write("finished", req=rid, t=time.perf_counter(),
                               output_tokens=getattr(request, "num_output_tokens", None))
            self._looked_up.discard(rid)
            self._scheduled.discard(rid)

    def request_finished(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        out = super().request_finished(request, *args, **kwargs)
        self._finished_once(request)
        return out

    def request_finished_all_groups(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        out = super().request_finished_all_groups(request, *args, **kwargs)
        self._finished_once(request)
        return out

    # -- worker side ---------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, Any]) -> Any:
        out = super().register_kv_caches(kv_caches)
        self._write_layout(list(kv_caches.values()), layers=len(kv_caches))
        return out

    def register_cross_layers_kv_cache(self, kv_cache: Any, *args: Any, **kwargs: Any) -> Any:
        out = super().register_cross_layers_kv_cache(kv_cache, *args, **kwargs)
        self._write_layout([kv_cache], layers=None)
        return out

    def _write_layout(self, tensors: list[Any], layers: int | None) -> None:
        """Bytes per token of the KV cache the engine allocated: every registered tensor's bytes
        over the tokens its blocks hold (num_blocks x block_size)."""
        num_blocks = getattr(getattr(self, "_kv_cache_config", None), "num_blocks", None)
        total = sum(int(t.numel()) * int(t.element_size()) for t in tensors)
        per_token = (total / (num_blocks * self._block_size)) if num_blocks and self._block_size else None
        self._ledger.write("layout", t=time.perf_counter(), layers=layers, cache_bytes=total, num_blocks=num_blocks,
                           block_size=self._block_size, bytes_per_token=per_token,
                           dtypes=sorted({str(t.dtype) for t in tensors}),
                           device=str(tensors[0].device) if tensors else None)

    def bind_connector_metadata(self, connector_metadata: Any) -> Any:
        self._flush_load()
        self._tag = getattr(connector_metadata, STEP_TAG, None)
        return super().bind_connector_metadata(connector_metadata)

    # A call is timed from a synchronized device to a synchronized device, so the GPU work the
    # engine queued before it (the layers' compute) is not counted as the connector's. This
    # serializes the launch queue only in steps that load or save.
    def _timed(self, call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
        _synchronize_device()
        t0 = time.perf_counter()
        out = call(*args, **kwargs)
        _synchronize_device()
        return out, t0, time.perf_counter()

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> Any:
        loads = (self._tag or {}).get("loads") or {}
        if not loads:
            return super().start_load_kv(forward_context, **kwargs)
        self._flush_load()
        out, t0, t1 = self._timed(super().start_load_kv, forward_context, **kwargs)
        self._load_reqs, self._load_step = dict(loads), (self._tag or {}).get("step")
        self._load_t0, self._load_busy, self._load_end = t0, t1 - t0, t1
        return out

    def wait_for_layer_load(self, layer_name: str) -> Any:
        if self._load_t0 is None:
            return super().wait_for_layer_load(layer_name)
        out, t0, t1 = self._timed(super().wait_for_layer_load, layer_name)
        self._load_busy += t1 - t0
        self._load_end = t1
        return out

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> Any:
        if not (self._tag or {}).get("saves"):
            return super().save_kv_layer(layer_name, kv_layer, attn_metadata, **kwargs)
        out, t0, t1 = self._timed(super().save_kv_layer, layer_name, kv_layer, attn_metadata, **kwargs)
        if self._save_t0 is None:
            self._save_t0 = t0
        self._save_busy += t1 - t0
        return out

    def wait_for_save(self) -> Any:
        tag = self._tag or {}
        if not tag.get("saves"):
            out = super().wait_for_save()
        else:
            out, t0, t1 = self._timed(super().wait_for_save)
            self._ledger.write("save", step=tag.get("step"), reqs=tag["saves"],
                               t0=self._save_t0 if self._save_t0 is not None else t0, t1=t1,
                               busy_s=self._save_busy + (t1 - t0))
        self._save_t0 = None
        self._save_busy = 0.0
        self._flush_load()
        return out

    def _flush_load(self) -> None:
        """Write the pending load timing under the requests of the step that STARTED it: an
        asynchronous load starts in a step without a forward pass (no ``wait_for_save``), and
        the next step's tag belongs to other requests."""
        if self._load_t0 is not None:
            self._ledger.write("load", step=self._load_step, reqs=self._load_reqs, t0=self._load_t0,
                               t1=self._load_end, busy_s=self._load_busy)
        self._load_t0 = self._load_end = self._load_step = None
        self._load_reqs = {}
        self._load_busy = 0.0

    def _transfers_done(self, sending: Any, recving: Any) -> None:
        self._flush_load()
        now = time.perf_counter()
        recv = sorted(set(recving or ()) - self._done_recving)
        send = sorted(set(sending or ()) - self._done_sending)
        self._done_recving.update(recv)
        self._done_sending.update(send)
        if recv:
            self._ledger.write("recv_done", reqs=recv, t=now)
        if send:
            self._ledger.write("send_done", reqs=send, t=now)

    def get_finished(self, finished_req_ids: set[str]) -> Any:
        out = super().get_finished(finished_req_ids)
        if out:
            self._transfers_done(*out)
        return out

    def get_transfer_results(self, finished_req_ids: set[str]) -> Any:
        out = super().get_transfer_results(finished_req_ids)
        self._transfers_done(getattr(out, "finished_sending", None), getattr(out, "finished_recving", None))
        return out


def measured(connector_cls: type) -> type:
    """``connector_cls`` with the measuring mixin in front, under the same name."""
    name = connector_cls.__name__
    if name not in _classes:
        _classes[name] = type(name, (MeasuringMixin, connector_cls),
                              {"__module__": __name__, "__doc__": f"{name}, timed per request (context-research)."})
    return _classes[name]


def __getattr__(name: str) -> type:
    """vLLM's factory reads ``getattr(module, kv_connector)``: answer with the measured connector."""
    if name.startswith("__"):
        raise AttributeError(name)
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    try:
        inner = KVConnectorFactory.get_connector_class_by_name(name)
    except (ValueError, KeyError) as exc:
        raise AttributeError(f"{name!r} is not a KV connector vLLM registers ({exc})") from exc
    return measured(inner)
