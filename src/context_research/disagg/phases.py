"""E3's two phases on real engines: aggregated serving, then prefill/decode disaggregation.

1. ``run_aggregated``: one engine (no connector) serves every prompt length's isolated prefill
   baseline and every point's workload; it is stopped before phase 2 starts.
2. ``run_disaggregated``: a prefill (``kv_producer``) and a decode (``kv_consumer``) engine
   joined by the KV connector; the broker accounts every handoff.

Engines come from ``new_engine(model, serving, log_key)`` (``ExperimentRun.backend``: the run
stops every engine it made, whatever happens); each phase also stops its own engines when done.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..analysis.integrity import apply_status, check_point_row
from ..analysis.model_math import kv_bytes_per_token
from ..analysis.stats import ms, percentile
from ..backends.base import ServingBackend
from ..engine_metrics import cache_config_info, engine_summary, nixl_telemetry
from ..errors import ConfigError, EngineStartError
from ..backends.session import EngineSession
from ..io import write_text
from ..metadata import engine_gpu_name
from ..tables import fmt
from ..workload.checks import died_in_flight
from . import connectors
from .broker import DEFAULT_TOLERANCE, Handoff, KvBroker, served_kv_dtype
from .gpus import GpuAssignment
from .ledger import Ledger, LedgerTail
from .plan import Point, Workload, batched_tokens_budget, refusal_reason, warmup_point
from .rows import empty_row, failed_row, latency_columns, nixl_counter, request_rows, transfer_columns
from .schedulers import AggregatedScheduler, DisaggregatedScheduler, RouteLog, ServeResult

# Each engine's log: the experiment's declared output key.
ENGINE_LOGS = {"aggregated": "engine_aggregated", "prefill": "engine_prefill", "decode": "engine_decode"}
NewEngine = Callable[[dict[str, Any], dict[str, Any], str], ServingBackend]


# -- engine settings ----------------------------------------------------------------------------
def merge_serving(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """``serving`` with overrides: ``env`` dicts merge, ``extra_args`` lists append, the rest replace."""
    out = dict(base)
    out["env"] = dict(base.get("env") or {})
    out["extra_args"] = list(base.get("extra_args") or [])
    for o in overrides:
        for k, v in o.items():
            if k == "env":
                out["env"].update({kk: str(vv) for kk, vv in v.items() if vv is not None})
            elif k == "extra_args":
                out["extra_args"] += [str(a) for a in v]
            else:
                out[k] = v
    return out


def _base_serving(config: dict[str, Any], cfg: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    common: dict[str, Any] = {"max_num_batched_tokens": batched_tokens_budget(cfg, int(model["max_model_len"]))}
    if cfg.get("block_size"):
        common["extra_args"] = ["--block-size", str(cfg["block_size"])]
    return merge_serving(config["serving"], common)


def aggregated_serving(config: dict[str, Any], cfg: dict[str, Any], model: dict[str, Any],
                       assignment: GpuAssignment) -> dict[str, Any]:
    """``serving`` of the aggregated engine (the same for every way of moving the KV)."""
    return merge_serving(_base_serving(config, cfg, model), assignment.engine_settings("aggregated"))


def pair_servings(config: dict[str, Any], cfg: dict[str, Any], model: dict[str, Any], assignment: GpuAssignment,
                  storage: Path | str | None, ledger_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """``serving`` dicts of the prefill and decode engines for ``cfg["connector"]`` (each also
    carries its ``_kv_transfer_config``, for the summary; ``without_private_keys`` drops it). With
    a ``ledger_dir`` the two connectors are loaded through the measuring connector."""
    base, connector, out = _base_serving(config, cfg, model), cfg["connector"], {}
    for pool in ("prefill", "decode"):
        transfer = connectors.kv_transfer_config(connector, pool, cfg, storage, ledger_dir)
        out[pool] = merge_serving(base, assignment.engine_settings(pool),
                                  {"extra_args": connectors.kv_transfer_args(transfer),
                                   "env": connectors.connector_env(connector, pool, cfg)})
        out[pool]["_kv_transfer_config"] = transfer
    return out


def engine_servings(config: dict[str, Any], cfg: dict[str, Any], model: dict[str, Any], assignment: GpuAssignment,
                    storage: Path | None, ledger_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """``serving`` dicts of the aggregated, prefill and decode engines of one way."""
    return {"aggregated": aggregated_serving(config, cfg, model, assignment),
            **pair_servings(config, cfg, model, assignment, storage, ledger_dir)}


def without_private_keys(serving: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in serving.items() if not k.startswith("_")}


def require_installed_connector(cfg: dict[str, Any], key: str = "experiments.e3.connector") -> None:
    """Refuse, before any engine starts, a connector (or a field of its config) the installed vLLM
    or NIXL lacks."""
    connector = cfg["connector"]
    probe = connectors.kv_transfer_config(connector, "decode", cfg, "/nonexistent")
    unsupported = connectors.installed_support(connector, probe)
    if unsupported:
        raise ConfigError(f"config key '{key}': {unsupported}; choose one the installed vLLM provides "
                          f"(ExampleConnector works everywhere)")


def join_ledger(handoffs: list[Handoff], ledger: Ledger, tail: LedgerTail) -> None:
    """Attach to each handoff what the engines' measuring connectors recorded about it, reading
    only what the ledger files gained since the last join."""
    ledger.add(tail.read_new())
    for h in handoffs:
        h.timing = ledger.timing(h.handoff_id)


def start_engines(engines: Mapping[str, ServingBackend], parallel: bool) -> dict[str, str]:
    """Start engines (in threads when ``parallel``); returns {name: error} of those that failed."""
    errors: dict[str, str] = {}

    def start(name: str, b: ServingBackend) -> None:
        try:
            b.start()
        except EngineStartError as exc:
            errors[name] = str(exc)
        except Exception as exc:  # a start that crashes is a recorded failure too
            errors[name] = f"{type(exc).__name__}: {exc}"

    if not parallel:
        for name, b in engines.items():
            start(name, b)
            if errors:
                break
        return errors
    threads = [threading.Thread(target=start, args=item, daemon=True) for item in engines.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"


def log(msg: str) -> None:
    print(f"e3: {msg}", file=sys.stderr, flush=True)


def engine_died(engines: Mapping[str, ServingBackend]) -> str | None:
    """Why one of ``engines`` has died ("decode engine died: ..."), or None while all run."""
    for name, b in engines.items():
        why = b.exit_reason()
        if why:
            return f"{name} {why}"
    return None


# -- the two phases -----------------------------------------------------------------------------
@dataclass
class ModeOutcome:
    rows: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    route_log: RouteLog
    engines: dict[str, Any]  # engine name -> info()
    start_error: str | None = None
    # Disaggregated only: block size, KV dtype, bytes per token (with their sources) and the
    # shared folder's total bytes; the broker holds every handoff; each engine's log file.
    transfer_setup: dict[str, Any] = field(default_factory=dict)
    broker: KvBroker | None = None
    log_paths: dict[str, Path] = field(default_factory=dict)
    # Why an engine of this mode died mid-phase (its later points are failed rows); None if none did.
    engine_died: str | None = None


def run_aggregated(new_engine: NewEngine, model: dict[str, Any], serving: dict[str, Any], cfg: dict[str, Any],
                   workload: Workload, assignment: GpuAssignment,
                   budget: int) -> tuple[ModeOutcome, dict[int, float | None]]:
    """Phase 1: one engine; each prompt length's isolated prefill baseline and every point's workload.
    Returns the outcome and the baselines (median prefill-only E2E in seconds, by prompt length)."""
    points, warm_reqs = workload.points, workload.warmup
    route_log = RouteLog("aggregated")
    backend = new_engine(model, serving, ENGINE_LOGS["aggregated"])
    outcome = ModeOutcome(rows=[], requests=[], route_log=route_log, engines={})
    baselines: dict[int, float | None] = {}
    gpus = assignment.gpus_used("aggregated")
    try:
        log("starting the aggregated engine")
        errors = start_engines({"aggregated": backend}, parallel=False)
        if errors:
            outcome.start_error = "aggregated engine did not start: " + first_line(errors["aggregated"])
            outcome.rows = [failed_row(p, "aggregated", cfg, outcome.start_error, gpus) for p in points]
            return outcome, baselines
        session = EngineSession(backend, model, progress=False)
        gpu_name = engine_gpu_name(session)
        sched = AggregatedScheduler(session, route_log, float(serving.get("request_timeout_s", 900)))
        real = backend.mode == "real"

        async def main() -> None:
            try:
                if warm_reqs:
                    warm = await sched.serve(warm_reqs, max(cfg["concurrency_levels"]), warmup_point(warm_reqs),
                                             label="warmup")
                    outcome.requests.extend(request_rows(warm.records, "aggregated", None, "warmup"))
                    if real:
                        await sched.prefill_baseline(warm_reqs[:1], 1, warmup_point(warm_reqs), label="warmup")
                for p in points:
                    reason = outcome.engine_died or refusal_reason(
                        p, "aggregated", max_tokens=cfg["max_tokens"], max_model_len=int(model["max_model_len"]),
                        budget=budget)
                    if reason:
                        outcome.rows.append(failed_row(p, "aggregated", cfg, reason, gpus))
                        continue
                    if real and p.prompt_tokens not in baselines:
                        # Isolated prefills (one in flight): the prefill cost without any queueing.
                        base = await sched.prefill_baseline(workload.baselines[p.prompt_tokens], 1,
                                                            {"prompt_tokens": p.prompt_tokens, "concurrency": 1})
                        baselines[p.prompt_tokens] = percentile([b.e2e_s for b in base if b.ok], 50)
                    before = session.snapshot()
                    served = await sched.serve(workload.requests[p.key], p.concurrency, p.as_dict())
                    after = session.snapshot()
                    row = empty_row(p, "aggregated", cfg)
                    latency_columns(row, served.records, served.duration_s, cfg, gpus)
                    if before is not None and after is not None:
                        row["engine_ttft_ms_mean"] = ms(engine_summary(before, after).get("engine_ttft_mean_s"))
                    apply_status(row, check_point_row(row, gpu_name, model.get("hf_config"), served.records))
                    outcome.engine_died = engine_died({"aggregated": backend})
                    outcome.rows.append(died_in_flight(row, served.records, outcome.engine_died))
                    outcome.requests.extend(request_rows(served.records, "aggregated", p, "measured"))
                    log(f"aggregated {p.label}: {row['status']}, TTFT p50 {fmt(row['ttft_ms_p50'], 1)} ms, "
                        f"TPOT p50 {fmt(row['tpot_ms_p50'], 1)} ms")
            finally:
                await sched.aclose()
                await session.aclose()

        asyncio.run(main())
    finally:
        backend.stop()  # before phase 2: its engines need this one's memory
        outcome.engines["aggregated"] = backend.info()
    return outcome, baselines


def run_disaggregated(new_engine: NewEngine, model: dict[str, Any], servings: dict[str, dict[str, Any]],
                      cfg: dict[str, Any], workload: Workload, assignment: GpuAssignment, budget: int,
                      storage: Path | None, baselines: dict[int, float | None],
                      ledger_dir: Path | None = None, *, columns: dict[str, Any] | None = None,
                      handoff_ids: Iterator[int] | None = None) -> ModeOutcome:
    """Phase 2 for one way of moving the KV: a prefill (producer) and a decode (consumer) engine
    joined by ``cfg["connector"]``; each handoff is joined to what the measuring connector
    recorded in ``ledger_dir``. ``columns`` (the way's name, direction, UCX variables) go on every
    row; ``handoff_ids`` continues the run's handoff numbering."""
    columns = dict(columns or {})
    outcome = _disaggregated(new_engine, model, servings, cfg, workload, assignment, budget, storage, baselines,
                             ledger_dir, columns.get("kv_path"), handoff_ids)
    for row in outcome.rows:
        row.update(columns)
    for row in outcome.requests:
        row["kv_path"] = columns.get("kv_path")
    return outcome


def _disaggregated(new_engine: NewEngine, model: dict[str, Any], servings: dict[str, dict[str, Any]],
                   cfg: dict[str, Any], workload: Workload, assignment: GpuAssignment, budget: int,
                   storage: Path | None, baselines: dict[int, float | None], ledger_dir: Path | None,
                   kv_path: str | None, handoff_ids: Iterator[int] | None) -> ModeOutcome:
    connector = cfg["connector"]
    outcome = ModeOutcome(rows=[], requests=[], route_log=RouteLog("disaggregated", kv_path), engines={})
    gpus = assignment.gpus_used("disaggregated")
    engines = {pool: new_engine(model, without_private_keys(servings[pool]), ENGINE_LOGS[pool])
               for pool in ("prefill", "decode")}
    outcome.log_paths = {pool: b.log_path for pool, b in engines.items()}
    if engines["prefill"].mode != "real":
        _fail_every_point(outcome, workload.points, cfg, gpus, f"the {engines['prefill'].mode} backend has no KV "
                          f"connector: disaggregation needs the real engine")
        for b in engines.values():
            write_text(b.log_path, f"# not started: {outcome.start_error}\n")
        return outcome
    try:
        # Two engines on one GPU start one after the other: vLLM's memory profiling of one start
        # would otherwise count the other's allocations.
        parallel = not assignment.shared_gpu
        log(f"starting the prefill and decode engines ({'in parallel' if parallel else 'one after the other'}), "
            f"connector {connector}")
        errors = start_engines(engines, parallel=parallel)
        if errors:
            name, err = next(iter(errors.items()))
            _fail_every_point(outcome, workload.points, cfg, gpus, f"{name} engine did not start: {first_line(err)}")
            for b in engines.values():
                if not b.log_path.exists() or not b.log_path.stat().st_size:
                    write_text(b.log_path, f"# not started: {outcome.start_error}\n")
            return outcome
        pair = _open_pair(engines, model, servings, cfg, workload, budget, storage, baselines, ledger_dir, kv_path,
                          handoff_ids, outcome, gpus)
        asyncio.run(pair.serve())
        outcome.transfer_setup["storage_total_bytes"] = pair.broker.storage_total_bytes()
        outcome.transfer_setup["consumer_kv_layout"] = pair.ledger.add(pair.tail.read_new()).consumer_layout
    finally:
        for b in engines.values():
            b.stop()
        outcome.engines.update({pool: b.info() for pool, b in engines.items()})
    return outcome


def _fail_every_point(outcome: ModeOutcome, points: list[Point], cfg: dict[str, Any], gpus: Any, reason: str) -> None:
    """The mode could not serve: every point is a failed row with ``reason``."""
    outcome.start_error = reason
    outcome.rows = [failed_row(p, "disaggregated", cfg, reason, gpus) for p in points]


@dataclass
class _Pair:
    """The started prefill and decode engines of one way of moving the KV, what serves them, and
    what every row of the mode shares (``common``: connector, block size, KV dtype, bytes per token)."""
    engines: dict[str, ServingBackend]
    prefill: EngineSession
    decode: EngineSession
    sched: DisaggregatedScheduler
    broker: KvBroker
    ledger: Ledger
    tail: LedgerTail
    model: dict[str, Any]
    cfg: dict[str, Any]
    workload: Workload
    budget: int
    baselines: dict[int, float | None]
    outcome: ModeOutcome
    gpus: Any
    gpu_name: str | None
    tolerance: float
    direction: Any
    common: dict[str, Any]

    def refused(self, p: Point) -> str | None:
        return refusal_reason(p, "disaggregated", max_tokens=self.cfg["max_tokens"],
                              max_model_len=int(self.model["max_model_len"]), budget=self.budget,
                              connector=self.common["connector"], block_size=self.common["block_size"])

    async def serve(self) -> None:
        """The warm-up (the requests the pair can serve), then every point; the sessions close after."""
        outcome = self.outcome
        try:
            valid_warm = [r for r in self.workload.warmup if not self.refused(Point(-1, r.prompt_tokens_target, 1))]
            if valid_warm:
                warm = await self.sched.serve(valid_warm, 1, warmup_point(valid_warm), label="warmup")
                join_ledger(warm.handoffs, self.ledger, self.tail)
                outcome.requests.extend(request_rows(warm.records, "disaggregated", None, "warmup", warm.handoffs))
            for p in self.workload.points:
                reason = outcome.engine_died or self.refused(p)
                if reason:
                    row = failed_row(p, "disaggregated", self.cfg, reason, self.gpus)
                    row.update(self.common)
                    outcome.rows.append(row)
                    continue
                await self.measure(p)
        finally:
            await self.sched.aclose()
            await self.prefill.aclose()
            await self.decode.aclose()

    async def measure(self, p: Point) -> None:
        """One point through the pair: its row (latency, KV transfer, checks) and request rows."""
        outcome, cfg = self.outcome, self.cfg
        d_before, p_before = self.decode.snapshot(), self.prefill.snapshot()
        served: ServeResult = await self.sched.serve(self.workload.requests[p.key], p.concurrency, p.as_dict(),
                                                     baseline_prefill_s=self.baselines.get(p.prompt_tokens))
        d_after, p_after = self.decode.snapshot(), self.prefill.snapshot()
        d_eng = engine_summary(d_before, d_after) if d_before and d_after else None
        join_ledger(served.handoffs, self.ledger, self.tail)
        row = empty_row(p, "disaggregated", cfg)
        row.update(self.common)
        latency_columns(row, served.records, served.duration_s, cfg, self.gpus)
        telemetry, counter = ({}, None) if not connectors.is_nixl(self.common["connector"]) else nixl_counter(
            self.direction, nixl_telemetry(d_before, d_after), nixl_telemetry(p_before, p_after))
        transfer_columns(row, served.handoffs, d_eng, self.tolerance, telemetry, counter)
        if d_eng:
            row["engine_ttft_ms_mean"] = ms(d_eng.get("engine_ttft_mean_s"))
        apply_status(row, check_point_row(row, self.gpu_name, self.model.get("hf_config"), served.records))
        outcome.engine_died = engine_died(self.engines)
        outcome.rows.append(died_in_flight(row, served.records, outcome.engine_died))
        outcome.requests.extend(request_rows(served.records, "disaggregated", p, "measured", served.handoffs))
        log(f"disaggregated {p.label}: {row['status']}{' (' + row['reason'] + ')' if row['reason'] else ''}"
            f", TTFT p50 {fmt(row['ttft_ms_p50'], 1)} ms, KV save / wait / load p50 "
            f"{fmt(row['kv_save_ms_p50'], 2)} / {fmt(row['kv_wait_ms_p50'], 2)} / "
            f"{fmt(row['kv_load_ms_p50'], 2)} ms, {fmt(row['external_kv_tokens'], 0)} of "
            f"{fmt(row['consumer_expected_kv_tokens'], 0)} tokens loaded")


def _open_pair(engines: dict[str, ServingBackend], model: dict[str, Any], servings: dict[str, dict[str, Any]],
               cfg: dict[str, Any], workload: Workload, budget: int, storage: Path | None,
               baselines: dict[int, float | None], ledger_dir: Path | None, kv_path: str | None,
               handoff_ids: Iterator[int] | None, outcome: ModeOutcome, gpus: Any) -> _Pair:
    """Sessions on the started engines and the transfer setup the decode engine reports: block
    size, KV dtype and bytes per token (each with its source, in ``outcome.transfer_setup``), and
    the broker that accounts every handoff."""
    connector = cfg["connector"]
    prefill_be, decode_be = engines["prefill"], engines["decode"]
    prefill = EngineSession(prefill_be, model, progress=False)
    decode = EngineSession(decode_be, model, progress=False)
    gpu_name = engine_gpu_name(decode)
    info = cache_config_info(decode.snapshot())
    block_size = int(cfg.get("block_size") or info.get("block_size") or 0) or None
    kv_dtype, kv_dtype_source = served_kv_dtype(info, prefill_be.log_text(), model.get("hf_config"))
    per_token = kv_bytes_per_token(model["hf_config"], kv_dtype)
    tolerance = float(cfg.get("bytes_tolerance", DEFAULT_TOLERANCE))
    broker = KvBroker(connector, per_token, block_size, storage if connector == "ExampleConnector" else None,
                      kv_path=kv_path, ids=handoff_ids)
    outcome.broker = broker
    outcome.transfer_setup.update({
        "block_size": block_size,
        "block_size_source": "config" if cfg.get("block_size") else "engine /metrics cache_config_info",
        "kv_dtype": kv_dtype, "kv_dtype_source": kv_dtype_source, "kv_bytes_per_token": per_token,
        "cache_config_info": info})
    sched = DisaggregatedScheduler(prefill, decode, broker, cfg, outcome.route_log,
                                   float(servings["decode"].get("request_timeout_s", 900)))
    common = {"connector": connector, "block_size": block_size, "kv_dtype": kv_dtype,
              "kv_bytes_per_token": per_token}
    return _Pair(engines, prefill, decode, sched, broker, Ledger(), LedgerTail(ledger_dir), model, cfg, workload,
                 budget, baselines, outcome, gpus, gpu_name, tolerance, connectors.transfer_direction(connector, cfg),
                 common)
