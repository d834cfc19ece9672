"""The measuring connector's ledger, read back and joined to the client's handoffs.

``measuring_connector`` (inside the prefill and decode engines) writes JSONL events; this module
turns them into one ``KvTiming`` per handoff. The join key is the handoff id, which the broker
puts into both requests' ``request_id`` (vLLM wraps it, e.g. ``cmpl-handoff-00003-0``).

Definitions (engine side, milliseconds; "step" = one engine forward step):

- ``kv_save_step_ms`` (producer worker): time spent inside the connector's ``save_kv_layer`` calls
  and ``wait_for_save``, summed over the steps that computed the request's prompt: the steps'
  whole time, whoever else they saved. ``kv_save_step_requests``: the most requests one of those
  steps saved.
- ``kv_save_ms``: the request's share of that time (``share``): each step's time x the request's
  tokens in the step / all tokens the step saved. Requests of equal length share a step equally;
  the shares of a step add up to the step's time.
- ``kv_save_window_ms``: from the first layer saved to ``wait_for_save`` done (the layers'
  compute between the saves included), summed over the same steps (the step's, not shared).
- ``kv_load_step_ms`` (consumer worker): time inside ``start_load_kv`` and every
  ``wait_for_layer_load`` of the steps that loaded the request (an asynchronous load: of the step
  that requested it); ``kv_load_step_requests``: the most requests one of them loaded.
- ``kv_load_ms``: a synchronous load (ExampleConnector): the request's share of
  ``kv_load_step_ms`` by the same rule (its loaded tokens / the step's); an asynchronous load
  (NIXL): the request's own interval, from the ``start_load_kv`` of the step that requested the
  KV (pull: issued the READ; push: sent the registration the producer WRITEs against) to the
  worker reporting its receive done. Requests issued together overlap in that interval.
- ``kv_wait_ms`` (consumer scheduler): from the request's first KV lookup to the step in which it
  was first scheduled to compute: how long it waited for remote KV (and, under load, for a slot)
  before it could run.
- ``kv_stall_ms``: from the first lookup until the KV was in place (the load's end, or the receive
  reported done); ``consumer_engine_ms``: from the first lookup to the request's end;
  ``kv_stall_ratio = kv_stall_ms / consumer_engine_ms`` (the seeds' stall ratio, measured).
- ``external_kv_tokens``: tokens the consumer's connector said it would load and the engine
  allocated (``update_state_after_alloc``); ``kv_bytes_loaded`` = those tokens x the bytes per
  token of the KV cache tensors the consumer engine registered.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

MS = 1000.0


@dataclass
class KvTiming:
    """What the engines recorded about one handoff (None: not recorded)."""

    producer_request_id: str | None = None
    consumer_request_id: str | None = None
    kv_save_ms: float | None = None
    kv_save_step_ms: float | None = None
    kv_save_step_requests: int | None = None
    kv_save_window_ms: float | None = None
    kv_load_ms: float | None = None
    kv_load_step_ms: float | None = None
    kv_load_step_requests: int | None = None
    kv_load_async: bool | None = None
    kv_wait_ms: float | None = None
    kv_stall_ms: float | None = None
    consumer_engine_ms: float | None = None
    kv_stall_ratio: float | None = None
    producer_engine_ms: float | None = None
    external_kv_tokens: int | None = None
    kv_bytes_loaded: float | None = None
    # producer: request end -> its KV reported sent (pull: the consumer's read-done notice came;
    # push: its own WRITE completed)
    kv_send_done_ms: float | None = None
    # Times on the shared monotonic clock (perf_counter), for the waterfall.
    t_producer_lookup: float | None = None
    t_producer_save_end: float | None = None
    t_producer_finished: float | None = None
    t_consumer_lookup: float | None = None
    t_consumer_scheduled: float | None = None
    t_consumer_kv_ready: float | None = None
    t_consumer_finished: float | None = None
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SHARE_RULE = ("a step's save or load time is shared among the requests it served in proportion to their tokens "
              "(saved: computed in the step; loaded: allocated as external); equal tokens, equal shares")


def share(event: dict[str, Any], request_id: str) -> float:
    """``request_id``'s share (seconds) of a load or save event's time by ``SHARE_RULE``. An event
    whose requests carry no token counts (a list) is shared equally."""
    reqs = event.get("reqs") or ()
    busy = float(event["busy_s"])
    if isinstance(reqs, dict):
        total = sum(float(n or 0) for n in reqs.values())
        if total > 0:
            return busy * float(reqs.get(request_id) or 0) / total
    return busy / len(reqs) if reqs else busy


def read_events(folder: Path | None) -> list[dict[str, Any]]:
    """Every event of every ledger file in ``folder`` (a torn last line is skipped)."""
    return LedgerTail(folder).read_new()


class LedgerTail:
    """Reads a ledger folder as it grows: each ``read_new`` parses only the complete lines written
    since the last call (an E3 run joins after every point; re-reading every file each time grew
    with points x events). A last line without its newline yet is read once it is complete."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder is not None else None
        self._offsets: dict[Path, int] = {}

    def read_new(self) -> list[dict[str, Any]]:
        if self.folder is None or not self.folder.is_dir():
            return []
        events = []
        for path in sorted(self.folder.glob("*.jsonl")):
            start = self._offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self._offsets[path] = start + len(complete)
            for line in complete.decode("utf-8", errors="replace").splitlines():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events


class Ledger:
    """The events of both engines, indexed for the per-handoff join."""

    def __init__(self, events: Iterable[dict[str, Any]] = (), handoff_pattern: str = r"handoff-\d+"):
        self.events: list[dict[str, Any]] = []
        self._pattern = re.compile(handoff_pattern)
        self.connector = None
        self.consumer_bytes_per_token = None
        self.consumer_layout = None
        self._by_handoff: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._steps: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (label, request id) -> load/save events
        self._done: dict[tuple[str, str, str], float] = {}  # (label, event, request id) -> first time
        self.add(events)

    def add(self, events: Iterable[dict[str, Any]]) -> "Ledger":
        """Index more events (the lines a ``LedgerTail`` read since the last call)."""
        for e in events:
            self.events.append(e)
            label, kind = e.get("label"), e.get("event")
            if kind == "start" and self.connector is None:
                self.connector = e.get("connector")
            if kind == "layout" and label == "decode":
                self.consumer_layout, self.consumer_bytes_per_token = e, e.get("bytes_per_token")
            if "req" in e:
                hid = self.handoff_of(e["req"])
                if hid:
                    self._by_handoff.setdefault((label, hid), []).append(e)
            elif kind in ("load", "save"):
                for rid in e.get("reqs") or ():
                    self._steps.setdefault((label, rid), []).append(e)
            elif kind in ("recv_done", "send_done"):
                for rid in e.get("reqs") or ():
                    key = (label, kind, rid)
                    # The worker's report comes before the scheduler's: the first time is the done time.
                    self._done[key] = min(self._done.get(key, e["t"]), e["t"])
        return self

    def handoff_of(self, engine_request_id: str) -> str | None:
        m = self._pattern.search(str(engine_request_id))
        return m.group(0) if m else None

    def _first(self, label: str, handoff_id: str, event: str) -> dict[str, Any] | None:
        return next((e for e in self._by_handoff.get((label, handoff_id), ()) if e.get("event") == event), None)

    def timing(self, handoff_id: str) -> KvTiming:
        """The handoff's engine-side timings; ``source`` says what was missing, if anything."""
        out = KvTiming()
        p_lookup = self._first("prefill", handoff_id, "lookup")
        p_end = self._first("prefill", handoff_id, "finished")
        c_lookup = self._first("decode", handoff_id, "lookup")
        c_alloc = self._first("decode", handoff_id, "alloc")
        c_sched = self._first("decode", handoff_id, "scheduled")
        c_end = self._first("decode", handoff_id, "finished")
        if p_lookup:
            out.producer_request_id, out.t_producer_lookup = p_lookup["req"], p_lookup["t"]
        if p_end:
            out.t_producer_finished = p_end["t"]
            if p_lookup:
                out.producer_engine_ms = (p_end["t"] - p_lookup["t"]) * MS
        if out.producer_request_id:
            saves = [e for e in self._steps.get(("prefill", out.producer_request_id), ()) if e["event"] == "save"]
            if saves:
                out.kv_save_step_ms = sum(e["busy_s"] for e in saves) * MS
                out.kv_save_ms = sum(share(e, out.producer_request_id) for e in saves) * MS
                out.kv_save_step_requests = max(len(e.get("reqs") or ()) for e in saves)
                out.kv_save_window_ms = sum(e["t1"] - e["t0"] for e in saves) * MS
                out.t_producer_save_end = max(e["t1"] for e in saves)
            sent = self._done.get(("prefill", "send_done", out.producer_request_id))
            if sent is not None and p_end:
                out.kv_send_done_ms = (sent - p_end["t"]) * MS
        if c_lookup:
            out.consumer_request_id, out.t_consumer_lookup = c_lookup["req"], c_lookup["t"]
            out.kv_load_async = bool(c_lookup.get("load_async"))
        if c_alloc:
            out.external_kv_tokens = int(c_alloc["external_tokens"])
        elif c_lookup:
            out.external_kv_tokens = 0  # looked up, nothing allocated from outside: computed locally
        if out.external_kv_tokens is not None and self.consumer_bytes_per_token:
            out.kv_bytes_loaded = out.external_kv_tokens * self.consumer_bytes_per_token
        if c_sched:
            out.t_consumer_scheduled = c_sched["t"]
            if c_lookup:
                out.kv_wait_ms = (c_sched["t"] - c_lookup["t"]) * MS
        if out.consumer_request_id:
            loads = [e for e in self._steps.get(("decode", out.consumer_request_id), ()) if e["event"] == "load"]
            recv = self._done.get(("decode", "recv_done", out.consumer_request_id))
            if loads:
                out.kv_load_step_ms = sum(e["busy_s"] for e in loads) * MS
                out.kv_load_step_requests = max(len(e.get("reqs") or ()) for e in loads)
            if out.kv_load_async and loads and recv is not None:
                out.kv_load_ms = (recv - min(e["t0"] for e in loads)) * MS
                out.t_consumer_kv_ready = recv
            elif loads:
                out.kv_load_ms = sum(share(e, out.consumer_request_id) for e in loads) * MS
                out.t_consumer_kv_ready = max(e["t1"] for e in loads)
        if c_end:
            out.t_consumer_finished = c_end["t"]
            if c_lookup:
                out.consumer_engine_ms = (c_end["t"] - c_lookup["t"]) * MS
        if c_lookup and out.t_consumer_kv_ready is not None:
            out.kv_stall_ms = (out.t_consumer_kv_ready - c_lookup["t"]) * MS
            if out.consumer_engine_ms:
                out.kv_stall_ratio = out.kv_stall_ms / out.consumer_engine_ms
        out.source = self._source(out)
        return out

    def _source(self, t: KvTiming) -> str:
        if not self.events:
            return "not measured: the measuring connector wrote no ledger"
        missing = [name for name, value in (("producer lookup", t.producer_request_id),
                                            ("consumer lookup", t.consumer_request_id),
                                            ("producer save", t.kv_save_ms), ("consumer load", t.kv_load_ms))
                   if value is None]
        what = f"engine: measuring connector around {self.connector or 'the connector'}"
        return what if not missing else f"{what}; not recorded: {', '.join(missing)}"
