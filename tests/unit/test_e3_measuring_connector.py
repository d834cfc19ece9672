"""The measuring connector around a stand-in connector (no vLLM): the events it writes, and the
ledger's join of those events into per-handoff timings."""

import json
from types import SimpleNamespace

import pytest

from context_research.disagg import measuring_connector as mc
from context_research.disagg.ledger import Ledger, read_events, share


class FakeTensor:
    def __init__(self, numel, element_size=2, dtype="torch.bfloat16"):
        self._n, self._e, self.dtype, self.device = numel, element_size, dtype, "cpu"

    def numel(self):
        return self._n

    def element_size(self):
        return self._e


class FakeConnector:
    """The calls vLLM makes on a connector, with answers a synchronous (ExampleConnector-like) or
    asynchronous (NIXL-like) connector would give."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        self._kv_cache_config = kv_cache_config
        self.calls = []
        self.offer = 0          # tokens get_num_new_matched_tokens offers
        self.load_async = False

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        return self.offer, self.load_async

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        self.calls.append(("alloc", request.request_id, num_external_tokens))

    def build_connector_meta(self, scheduler_output):
        return SimpleNamespace(kind="inner")

    def update_connector_output(self, connector_output):
        return None

    def request_finished(self, request, block_ids):
        return False, None

    def register_kv_caches(self, kv_caches):
        self.calls.append(("register", len(kv_caches)))

    def bind_connector_metadata(self, meta):
        self.calls.append(("bind", meta.kind))

    def start_load_kv(self, forward_context, **kwargs):
        self.calls.append(("start_load",))

    def wait_for_layer_load(self, layer_name):
        self.calls.append(("wait_layer", layer_name))

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        self.calls.append(("save", layer_name))

    def wait_for_save(self):
        self.calls.append(("wait_save",))

    def get_finished(self, finished_req_ids):
        return None, None


def _config(tmp_path, label, role="kv_consumer", producer=False):
    transfer = SimpleNamespace(kv_connector_extra_config={mc.LEDGER_DIR_KEY: str(tmp_path), mc.LABEL_KEY: label},
                               kv_role=role, is_kv_producer=producer)
    return SimpleNamespace(kv_transfer_config=transfer, cache_config=SimpleNamespace(block_size=16))


def _request(rid, prompt=256):
    return SimpleNamespace(request_id=rid, num_prompt_tokens=prompt, arrival_time=1.0, num_output_tokens=4)


def _step(conn, scheduled):
    out = SimpleNamespace(scheduled_new_reqs=[SimpleNamespace(req_id=r, num_computed_tokens=0) for r in scheduled],
                          num_scheduled_tokens={r: 256 for r in scheduled})
    return conn.build_connector_meta(out)


def test_the_measured_class_keeps_the_connector_name_and_calls_through(tmp_path):
    cls = mc.measured(FakeConnector)
    assert cls.__name__ == "FakeConnector" and issubclass(cls, FakeConnector) and cls is mc.measured(FakeConnector)
    conn = cls(_config(tmp_path, "decode"), "KVConnectorRole.WORKER", SimpleNamespace(num_blocks=10))
    conn.register_kv_caches({"l0": FakeTensor(10 * 16 * 64), "l1": FakeTensor(10 * 16 * 64)})
    assert ("register", 2) in conn.calls
    layout = [e for e in read_events(tmp_path) if e["event"] == "layout"][0]
    # two layers x 64 elements x 2 bytes per token
    assert layout["bytes_per_token"] == 256 and layout["side"] == "worker" and layout["label"] == "decode"


def test_a_missing_ledger_folder_is_a_clear_error(tmp_path):
    cfg = _config(tmp_path, "decode")
    cfg.kv_transfer_config.kv_connector_extra_config = {}
    with pytest.raises(ValueError, match="measure_ledger_dir"):
        mc.measured(FakeConnector)(cfg, "KVConnectorRole.SCHEDULER", None)


def test_producer_and_synchronous_consumer_events_join_into_one_handoff(tmp_path):
    cls = mc.measured(FakeConnector)
    # Producer: scheduler and worker (the same process here, as with vLLM's one-process executor).
    p_sched = cls(_config(tmp_path, "prefill", "kv_producer", True), "KVConnectorRole.SCHEDULER", None)
    p_work = cls(_config(tmp_path, "prefill", "kv_producer", True), "KVConnectorRole.WORKER",
                 SimpleNamespace(num_blocks=10))
    req = _request("cmpl-handoff-00007-0")
    assert p_sched.get_num_new_matched_tokens(req, 0) == (0, False)
    meta = _step(p_sched, [req.request_id])
    assert getattr(meta, mc.STEP_TAG)["saves"] == {req.request_id: 256}   # with the tokens the step computed
    p_work.bind_connector_metadata(meta)
    p_work.start_load_kv(None)
    for layer in ("l0", "l1"):
        p_work.save_kv_layer(layer, None, None)
    p_work.wait_for_save()
    p_sched.request_finished(req, [1, 2])
    p_sched.request_finished(req, [1, 2])            # a second call is not a second end

    # Consumer: the connector offers 240 tokens, loaded synchronously in the step that schedules it.
    c_sched = cls(_config(tmp_path, "decode"), "KVConnectorRole.SCHEDULER", None)
    c_work = cls(_config(tmp_path, "decode"), "KVConnectorRole.WORKER", SimpleNamespace(num_blocks=10))
    c_work.register_kv_caches({"l0": FakeTensor(10 * 16 * 64), "l1": FakeTensor(10 * 16 * 64)})
    c_sched.offer = 240
    creq = _request("cmpl-handoff-00007-0-ab12")
    c_sched.get_num_new_matched_tokens(creq, 0)
    c_sched.update_state_after_alloc(creq, None, 240)
    cmeta = _step(c_sched, [creq.request_id])
    assert getattr(cmeta, mc.STEP_TAG) == {"step": 1, "loads": {creq.request_id: 240}, "saves": {}}
    c_work.bind_connector_metadata(cmeta)
    c_work.start_load_kv(None)
    c_work.wait_for_layer_load("l0")
    c_work.save_kv_layer("l0", None, None)           # a consumer saves nothing: not timed
    c_work.wait_for_save()
    c_sched.request_finished(creq, [1])

    events = read_events(tmp_path)
    kinds = [e["event"] for e in events]
    assert kinds.count("finished") == 2 and kinds.count("save") == 1 and kinds.count("load") == 1
    t = Ledger(events).timing("handoff-00007")
    assert t.producer_request_id == req.request_id and t.consumer_request_id == creq.request_id
    assert t.external_kv_tokens == 240 and t.kv_bytes_loaded == 240 * 256
    assert t.kv_save_ms is not None and t.kv_save_ms >= 0 and t.kv_save_window_ms >= 0
    assert t.kv_load_ms is not None and t.kv_load_ms >= 0 and t.kv_load_async is False
    assert t.kv_wait_ms >= 0 and t.kv_stall_ms >= t.kv_wait_ms
    assert 0 < t.kv_stall_ratio <= 1 or t.kv_stall_ms == 0
    assert t.source == "engine: measuring connector around FakeConnector"
    assert Ledger(events).timing("handoff-00008").source.endswith(
        "not recorded: producer lookup, consumer lookup, producer save, consumer load")


def _event(label, event, t, **fields):
    return {"label": label, "side": "x", "pid": 1, "event": event, "t": t, **fields}


def test_asynchronous_load_runs_from_the_read_issued_to_the_receive_done():
    rid = "cmpl-handoff-00001-0"
    events = [
        {"label": "decode", "event": "start", "connector": "NixlConnector"},
        _event("decode", "layout", 0.0, bytes_per_token=1000.0),
        _event("decode", "lookup", 10.000, req=rid, external_tokens=512, load_async=True),
        _event("decode", "alloc", 10.001, req=rid, external_tokens=512),
        {"label": "decode", "event": "load", "step": 3, "reqs": {rid: 512}, "t0": 10.002, "t1": 10.0021,
         "busy_s": 0.0001},
        {"label": "decode", "event": "recv_done", "reqs": [rid], "t": 10.042},   # worker
        {"label": "decode", "event": "recv_done", "reqs": [rid], "t": 10.045},   # scheduler, later
        _event("decode", "scheduled", 10.046, req=rid),
        _event("decode", "finished", 10.100, req=rid),
    ]
    t = Ledger(events).timing("handoff-00001")
    assert t.kv_load_async is True
    assert t.kv_load_ms == pytest.approx(40.0)          # 10.002 -> 10.042
    assert t.kv_wait_ms == pytest.approx(46.0)          # lookup -> scheduled
    assert t.kv_stall_ms == pytest.approx(42.0) and t.consumer_engine_ms == pytest.approx(100.0)
    assert t.kv_stall_ratio == pytest.approx(0.42)
    assert t.kv_bytes_loaded == 512_000


def test_a_consumer_that_found_nothing_loaded_zero_tokens():
    rid = "cmpl-handoff-00002-0"
    t = Ledger([_event("decode", "lookup", 1.0, req=rid, external_tokens=0, load_async=False)]).timing("handoff-00002")
    assert t.external_kv_tokens == 0 and t.kv_load_ms is None


def test_a_torn_last_line_is_skipped(tmp_path):
    (tmp_path / "decode-worker-1.jsonl").write_text(json.dumps({"event": "start"}) + "\n{\"event\": \"lo")
    assert read_events(tmp_path) == [{"event": "start"}]
    assert read_events(tmp_path / "missing") == [] and read_events(None) == []


def test_the_tail_reads_each_complete_line_once_and_the_ledger_grows_by_them(tmp_path):
    from context_research.disagg.ledger import LedgerTail

    path = tmp_path / "decode-worker-1.jsonl"
    rid = "cmpl-handoff-00003-0"
    lookup = _event("decode", "lookup", 1.0, req=rid, external_tokens=32, load_async=False)
    path.write_text(json.dumps({"event": "start", "connector": "ExampleConnector"}) + "\n" + json.dumps(lookup)[:10])
    tail, ledger = LedgerTail(tmp_path), Ledger()
    assert ledger.add(tail.read_new()).events == [{"event": "start", "connector": "ExampleConnector"}]
    assert ledger.connector == "ExampleConnector" and ledger.timing("handoff-00003").consumer_request_id is None
    with open(path, "a") as f:  # the torn line completes, and one more arrives
        f.write(json.dumps(lookup)[10:] + "\n" + json.dumps({"event": "layout", "label": "decode",
                                                             "bytes_per_token": 128}) + "\n")
    ledger.add(tail.read_new())
    assert tail.read_new() == []  # nothing new: nothing read twice
    assert len(ledger.events) == 3 and ledger.consumer_bytes_per_token == 128
    assert ledger.timing("handoff-00003").consumer_request_id == rid
    # the same as one read of the whole folder
    whole = Ledger(read_events(tmp_path))
    assert whole.events == ledger.events and whole.timing("handoff-00003") == ledger.timing("handoff-00003")


def test_module_getattr_refuses_dunder_names():
    with pytest.raises(AttributeError):
        mc.__getattr__("__path__")


def test_an_asynchronous_load_is_attributed_to_the_step_that_started_it(tmp_path):
    """NIXL: the read is issued in a step with no forward pass (no wait_for_save); the receive is
    reported steps later, while other requests' tags are bound."""

    class AsyncConnector(FakeConnector):
        done: set = set()

        def get_finished(self, finished_req_ids):
            return None, set(self.done)

    cls = mc.measured(AsyncConnector)
    sched = cls(_config(tmp_path, "decode"), "KVConnectorRole.SCHEDULER", None)
    work = cls(_config(tmp_path, "decode"), "KVConnectorRole.WORKER", SimpleNamespace(num_blocks=10))
    work.register_kv_caches({"l0": FakeTensor(10 * 16 * 64)})
    sched.offer, sched.load_async = 256, True
    req = _request("cmpl-handoff-00003-0")
    sched.get_num_new_matched_tokens(req, 0)
    sched.update_state_after_alloc(req, None, 256)
    work.bind_connector_metadata(_step(sched, []))     # the read is issued; nothing to compute
    work.start_load_kv(None)
    work.get_finished(set())
    work.bind_connector_metadata(_step(sched, []))     # a later step with other work
    work.start_load_kv(None)
    work.wait_for_save()
    AsyncConnector.done = {req.request_id}
    work.get_finished(set())
    work.get_finished(set())                           # reported once only
    work.bind_connector_metadata(_step(sched, [req.request_id]))
    events = read_events(tmp_path)
    loads = [e for e in events if e["event"] == "load"]
    assert [list(e["reqs"]) for e in loads] == [[req.request_id]] and loads[0]["step"] == 1
    assert [e["reqs"] for e in events if e["event"] == "recv_done"] == [[req.request_id]]
    t = Ledger(events).timing("handoff-00003")
    assert t.kv_load_async is True and t.kv_load_ms is not None and t.kv_load_ms >= 0
    assert t.external_kv_tokens == 256 and t.kv_bytes_loaded == 256 * 128


def test_a_push_connector_is_wrapped_with_its_worker_and_scheduler_hooks(tmp_path):
    """NixlPushConnector-shaped: the consumer's load step hands a registration to the producer,
    the producer WRITEs from its own thread (no connector call to time) and reports the send when
    its WRITE is done; the consumer reports the receive when the completion notice comes."""

    class PushConnector(FakeConnector):
        sent: set = frozenset()
        received: set = frozenset()

        def has_pending_push_work(self):
            return not self.sent

        def get_finished(self, finished_req_ids):
            return set(self.sent), set(self.received)

    cls = mc.measured(PushConnector)
    p_sched = cls(_config(tmp_path, "prefill", "kv_producer", True), "KVConnectorRole.SCHEDULER", None)
    p_work = cls(_config(tmp_path, "prefill", "kv_producer", True), "KVConnectorRole.WORKER",
                 SimpleNamespace(num_blocks=10))
    c_sched = cls(_config(tmp_path, "decode"), "KVConnectorRole.SCHEDULER", None)
    c_work = cls(_config(tmp_path, "decode"), "KVConnectorRole.WORKER", SimpleNamespace(num_blocks=10))
    c_work.register_kv_caches({"l0": FakeTensor(10 * 16 * 64)})
    assert p_sched.has_pending_push_work() is True          # not wrapped: the engine loop still sees it
    preq, creq = _request("cmpl-handoff-00004-0"), _request("cmpl-handoff-00004-0-cd34")
    p_sched.get_num_new_matched_tokens(preq, 0)
    p_work.bind_connector_metadata(_step(p_sched, [preq.request_id]))
    p_work.start_load_kv(None)                              # the producer loads nothing: not timed
    p_work.save_kv_layer("l0", None, None)                  # NIXL saves nothing in the forward pass
    p_work.wait_for_save()
    p_sched.request_finished(preq, [1])
    c_sched.offer, c_sched.load_async = 256, True
    c_sched.get_num_new_matched_tokens(creq, 0)
    c_sched.update_state_after_alloc(creq, None, 256)
    c_work.bind_connector_metadata(_step(c_sched, []))      # registration handed to the writer thread
    c_work.start_load_kv(None)
    c_work.get_finished(set())
    p_work.sent = {preq.request_id}                         # the producer's WRITE is done ...
    p_work.get_finished(set())
    c_work.received = {creq.request_id}                     # ... and its notice reached the consumer
    c_work.get_finished(set())
    c_sched.update_connector_output(SimpleNamespace(finished_recving=[creq.request_id], finished_sending=[]))
    c_work.bind_connector_metadata(_step(c_sched, [creq.request_id]))
    events = read_events(tmp_path)
    assert [e["label"] for e in events if e["event"] == "load"] == ["decode"]
    assert [e["label"] for e in events if e["event"] == "send_done"] == ["prefill"]
    t = Ledger(events).timing("handoff-00004")
    assert t.kv_load_async is True and t.kv_load_ms >= 0 and t.external_kv_tokens == 256
    assert t.kv_send_done_ms is not None and t.kv_send_done_ms >= 0
    assert t.kv_save_ms is not None and t.t_consumer_kv_ready is not None
    assert t.source == "engine: measuring connector around PushConnector"


# -- one engine step, several requests: the step's time and each request's share ---------------------
def _save(step, reqs, busy_s, t0=1.0):
    return {"label": "prefill", "event": "save", "step": step, "reqs": reqs, "t0": t0, "t1": t0 + busy_s,
            "busy_s": busy_s}


def _handoff_events(i, label="prefill"):
    return [_event(label, "lookup", 0.5, req=f"cmpl-handoff-0000{i}-0", external_tokens=0, load_async=False)]


def test_a_shared_save_step_is_recorded_whole_and_shared_by_tokens():
    """issue 27: at concurrency 2 on the H200 handoffs 6 and 7 showed the same save time, the step's.
    Now the step's time and its request count are kept, and each request gets its token share."""
    a, b = "cmpl-handoff-00001-0", "cmpl-handoff-00002-0"
    events = _handoff_events(1) + _handoff_events(2) + [_save(4, {a: 3072, b: 1024}, 0.008)]
    ledger = Ledger(events)
    ta, tb = ledger.timing("handoff-00001"), ledger.timing("handoff-00002")
    assert ta.kv_save_step_ms == tb.kv_save_step_ms == pytest.approx(8.0)
    assert ta.kv_save_step_requests == tb.kv_save_step_requests == 2
    assert (ta.kv_save_ms, tb.kv_save_ms) == (pytest.approx(6.0), pytest.approx(2.0))
    assert ta.kv_save_window_ms == pytest.approx(8.0)          # the step's window, not shared
    # A ledger written before token counts were recorded (a list): shared equally.
    old = Ledger(_handoff_events(1) + _handoff_events(2) + [_save(4, [a, b], 0.008)])
    assert old.timing("handoff-00001").kv_save_ms == pytest.approx(4.0)


def test_a_shared_synchronous_load_is_shared_and_an_asynchronous_one_keeps_its_own_interval():
    a, b = "cmpl-handoff-00001-0", "cmpl-handoff-00002-0"
    base = [{"label": "decode", "event": "start", "connector": "X"}]
    for rid, is_async in ((a, False), (b, False)):
        base.append(_event("decode", "lookup", 1.0, req=rid, external_tokens=128, load_async=is_async))
    load = {"label": "decode", "event": "load", "step": 2, "reqs": {a: 128, b: 128}, "t0": 1.01, "t1": 1.02,
            "busy_s": 0.010}
    ledger = Ledger(base + [load])
    for hid in ("handoff-00001", "handoff-00002"):
        t = ledger.timing(hid)
        assert t.kv_load_ms == pytest.approx(5.0) and t.kv_load_step_ms == pytest.approx(10.0)
        assert t.kv_load_step_requests == 2 and t.t_consumer_kv_ready == pytest.approx(1.02)
    asynchronous = [{**e, "load_async": True} if e.get("event") == "lookup" else e for e in base] + [
        {**load, "busy_s": 0.0004}, {"label": "decode", "event": "recv_done", "reqs": [a], "t": 1.05},
        {"label": "decode", "event": "recv_done", "reqs": [b], "t": 1.09}]
    ledger = Ledger(asynchronous)
    ta, tb = ledger.timing("handoff-00001"), ledger.timing("handoff-00002")
    assert (ta.kv_load_ms, tb.kv_load_ms) == (pytest.approx(40.0), pytest.approx(80.0))   # each its own receive
    assert ta.kv_load_step_ms == tb.kv_load_step_ms == pytest.approx(0.4)


def test_token_shares_recover_per_request_costs_of_known_truth_and_the_step_time_does_not():
    """Simulated steps of 1-4 requests whose true save cost is proportional to their tokens (as
    their bytes are): the token share recovers each request's cost, every step's shares add up to
    its time, and the step's time given to each request (the old per-request value) overstates
    their total by the number of requests that shared the step."""
    import numpy as np

    rng = np.random.default_rng(27)
    per_token_s, errors, overstated = 2e-7, [], []
    for step in range(400):
        n = int(rng.integers(1, 5))
        tokens = {f"cmpl-handoff-{step * 10 + i:05d}-0": int(rng.integers(16, 16_384)) for i in range(n)}
        truth = {rid: k * per_token_s for rid, k in tokens.items()}
        event = _save(step, tokens, sum(truth.values()))
        shares = {rid: share(event, rid) for rid in tokens}
        assert sum(shares.values()) == pytest.approx(event["busy_s"])
        errors += [shares[rid] - truth[rid] for rid in tokens]
        overstated.append(n * event["busy_s"] / sum(truth.values()))
    assert max(abs(e) for e in errors) < 1e-12                      # exact for costs proportional to tokens
    assert np.mean(overstated) > 2.0                                 # the old per-request value: n x the step
