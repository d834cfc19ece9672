"""One lifecycle for every experiment, whatever its number of engines.

``ExperimentRun`` is a context manager around an experiment's body: it turns SIGTERM and SIGHUP
into an exception (so every ``finally`` runs), samples NVML over the whole run, holds the
host-wide lock of every device its real engines use (``device_lock``: one engine-starting run per
device, across Snakemake invocations), stops every engine the body started, and on success writes
``run_metadata.json`` (with what else ran on the device) and ``gpu_stats.json``.
``run_declared`` is what ``context-research run`` calls.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

import pandas as pd

from .. import io
from ..backends.base import ServingBackend, backend_mode
from ..backends.factory import make_backend
from ..backends.session import EngineSession
from ..columns import Table, find_table, write_table
from ..config import hash_inputs, model_profile, run_config
from ..hashing import sha256_obj
from ..device_lock.guard import RunDeviceGuard
from .. import watchdog
from ..gpu_stats import NvmlSampler
from ..io import write_json
from ..metadata import build_run_metadata, make_run_id, utc_now
from ..models import resolve_model
from ..provenance import resolved_model
from . import partial
from .declaration import ONE_ENGINE, Experiment, Prepared


@dataclass
class RunContext:
    """What every artifact of a run is stamped with, and where its files go."""

    experiment: str
    run_id: str
    config_hash: str
    backend_mode: str
    weights: str
    model_id: str
    outdir: Path
    # output key -> file name: the declaration's ``all_files``; its declared tables
    files: Mapping[str, str]
    tables: Sequence[Table] = ()
    notes: list[str] = field(default_factory=list)
    # output keys written (or diverted) so far; files the results folder refused (partial.Diverted);
    # rows to keep if the run fails before writing them (keep_on_failure)
    written: set[str] = field(default_factory=set)
    diverted: list[Any] = field(default_factory=list)
    pending: dict[str, tuple[Any, Sequence[str] | None]] = field(default_factory=dict)

    def stamp(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "run_id": self.run_id, "config_hash": self.config_hash,
                "backend_mode": self.backend_mode, "weights": self.weights, "model_id": self.model_id}

    def path(self, key: str, *name_args: Any) -> Path:
        """The declared output ``key`` of this run (e.g. ``ctx.path("latency")``); ``name_args``
        fill a numbered optional output's name (``ctx.path("engine_restart", 2)``)."""
        try:
            return self.outdir / self.files[key].format(*name_args)
        except KeyError:
            raise KeyError(f"{self.experiment} declares no output {key!r}; it declares {', '.join(self.files)}") from None

    def table(self, filename: str) -> Table:
        """The declared table of the run's file ``filename``."""
        return find_table(self.tables, self.experiment, filename)

    def write_table(self, key: str, frame: pd.DataFrame) -> Path:
        """Write the declared CSV output ``key``, checked against its column declarations."""
        path = self.path(key)
        table = self.table(path.name)
        return self._write(key, path, lambda p: write_table(p, frame, table), f"{len(frame)} rows")

    def write_json(self, key: str, obj: Any) -> Path:
        """Write the declared JSON output ``key`` (a summary)."""
        return self._write(key, self.path(key), lambda p: io.write_json(p, obj), "")

    def write_jsonl(self, key: str, rows: list[dict]) -> Path:
        return self._write(key, self.path(key), lambda p: io.write_jsonl(p, rows), f"{len(rows)} records")

    def write_text(self, key: str, text: str) -> Path:
        return self._write(key, self.path(key), lambda p: io.write_text(p, text), "")

    def _write(self, key: str, path: Path, writer: Callable[[Path], Any], what: str) -> Path:
        """``writer(path)``; if the results folder refuses it (read-only, full), ``writer`` into the
        partial folder instead, and the run goes on (``ExperimentRun`` fails it at its end), so
        every later record is kept too."""
        try:
            out = writer(path)
        except OSError as err:
            kept = partial.divert(path, self.partial_dir(), self.outdir, writer, what, err)
            self.diverted.append(kept)
            out = kept.kept
        self.written.add(key)
        return out

    def keep_on_failure(self, key: str, rows: list[dict] | Callable[[], Any], columns: Sequence[str] | None = None) -> None:
        """Rows of the declared table ``key`` that the body is still collecting (a list it appends
        to, or a function returning rows or a frame): if the run fails before the body writes
        ``key``, they are written to the partial folder, so points finished before an interrupt
        or an engine death are kept."""
        self.pending[key] = (rows, columns)

    def checkpoint(self) -> None:
        """After each point: the ``keep_on_failure`` rows so far go to the partial folder, so a
        driver killed by SIGKILL keeps them too (``partial.checkpoint``); removed on success."""
        partial.checkpoint(self)

    def partial_dir(self) -> Path:
        """Where a failed run's files are kept: Snakemake deletes a failed job's outputs."""
        return self.outdir.with_name(f"{self.outdir.name}.partial") / self.run_id

    def frame(self, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> pd.DataFrame:
        """``rows`` as a DataFrame (in ``columns`` order when given), every row stamped with the
        run's identity columns (``stamp()``) after the data columns."""
        frame = pd.DataFrame(rows, columns=list(columns) if columns is not None else None)
        for key, value in self.stamp().items():
            frame[key] = value
        return frame


Body = Callable[[EngineSession, dict, RunContext], Awaitable[dict | None]]
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so every ``finally`` (engine stop) runs."""

    def __init__(self, signum: int):
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


# The signals that stop a run: SIGINT (Ctrl-C) raises KeyboardInterrupt, the others Terminated.
STOP_SIGNALS = (signal.SIGINT, *HANDLED_SIGNALS)


class StopSignals:
    """While a run is on, the first stop signal stops it so that every ``finally`` runs (engines
    stop, records are kept): outside an event loop it raises at once (``KeyboardInterrupt`` for
    SIGINT, else ``Terminated``); inside one it cancels the loop's tasks instead, so no socket
    write of the client is cut in half (asyncio would log that as a traceback), and the run turns
    the cancellation back into the signal's exception (``stopped``). Any later signal (a second
    Ctrl-C, the driver watchdog's SIGTERM after a closed terminal) and any during the run's own
    cleanup (``cleaning``) is noted, never raised, so nothing aborts that cleanup. A signal the
    process was started with ignored (``nohup``) stays ignored."""

    def __init__(self):
        self.first: int | None = None
        self.later: list[int] = []
        self.cleaning = False
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignals":
        for s in STOP_SIGNALS:
            if signal.getsignal(s) is not signal.SIG_IGN:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def exception(self) -> BaseException:
        return KeyboardInterrupt() if self.first == signal.SIGINT else Terminated(self.first)

    def stopped(self, exc: BaseException | None) -> BaseException | None:
        """The signal's exception when it stopped the run: ``exc`` is the cancellation it caused,
        or the run ended (or was being cleaned up) as it came."""
        if self.first is None or (exc is not None and not isinstance(exc, asyncio.CancelledError)):
            return None
        return self.exception()

    def _handle(self, signum, frame):
        if self.first is not None or self.cleaning:
            self.first = signum if self.first is None else self.first
            self.later.append(signum)
            _say_while_stopping(signum)
            return
        self.first = signum
        watchdog.stopping.set()   # the driver watchdog sends no SIGTERM of its own now
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise self.exception() from None
        loop.call_soon_threadsafe(_cancel_all, loop)

    def restore(self) -> None:
        """The previous handlers, unless a signal came: the process is ending then, and a late
        signal must not turn its last steps into a traceback."""
        if self.first is None:
            for s, previous in self._previous.items():
                signal.signal(s, previous)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


def _say_while_stopping(signum: int) -> None:
    try:
        sys.stderr.write(f"context-research: {signal.Signals(signum).name} while stopping: the engines are "
                         "being stopped and the records kept; that goes on\n")
    except Exception:
        pass


class ExperimentRun:
    """Everything around an experiment's body: engines, signals, NVML, metadata.

    A body may set ``engine_info`` (the metadata's ``engine`` block), ``model_config``,
    ``metadata_extra`` and ``gpu_stats_extra``; by default the engine block is the one engine's
    ``info()``, or ``{"engines": {log name: info}}`` for several.
    """

    def __init__(self, experiment: Experiment, config: dict, outdir: str | Path, *,
                 dataset_manifest_sha256: str | None = None):
        self.experiment = experiment
        self.config = config
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        # The run keys only: a body that reads an analysis key fails here rather than using the
        # schema default the engine rule's config view was filled with.
        self.cfg = run_config(config, experiment)
        self.serving: dict[str, Any] = config["serving"]
        self.model = resolve_model(model_profile(config))
        self._dataset_sha = dataset_manifest_sha256
        self.hash_inputs = hash_inputs(config, experiment, dataset_manifest_sha256)
        chash = sha256_obj(self.hash_inputs)
        self.ctx = RunContext(experiment=experiment.name, run_id=make_run_id(chash), config_hash=chash,
                              backend_mode=backend_mode(self.serving), weights=self.model["weights"],
                              model_id=self.model["source"], outdir=self.outdir, files=experiment.all_files,
                              tables=experiment.tables)
        self.backends: list[ServingBackend] = []
        self.engine_info: dict[str, Any] | None = None
        self.metadata_model: dict[str, Any] | None = None  # the model actually served, if not the profile's
        self.model_config: dict[str, Any] | None = None
        self.metadata_extra: dict[str, Any] = {}
        self.gpu_stats_extra: dict[str, Any] = {}
        self.result_summary: Any = None
        self.metadata: dict[str, Any] | None = None
        # The run's device locks and contention record (device_lock/); taken by backend().
        self.device_guard = RunDeviceGuard(self.serving, experiment=experiment.name, run_id=self.ctx.run_id)

    def backend(self, model: dict[str, Any], serving: dict[str, Any], log_key: str = "engine_log",
                *log_name_args: Any) -> ServingBackend:
        """A (not yet started) engine whose log is the declared output ``log_key``; stopped on exit."""
        b = make_backend(model, serving, self.ctx.path(log_key, *log_name_args))
        self._hold_device(b, serving)
        self.backends.append(b)
        partial.link_log(self.ctx, b.log_path)   # kept whatever happens to the results folder's copy
        return b

    def _hold_device(self, backend: ServingBackend, serving: dict[str, Any]) -> None:
        """Before a real engine can start: its devices' host-wide locks (waits or fails as
        ``serving.device_lock`` says; released on exit) and a look at what already runs there."""
        from ..backends.vllm_server import VllmServerBackend

        if isinstance(backend, VllmServerBackend):
            self.device_guard.engine(backend.device, serving)

    def serve_one(self, body: Body, **kwargs) -> Any:
        """Start one engine on the profile's model, run the async ``body`` against it."""
        backend = self.backend(self.model, self.serving)
        backend.start()
        session = EngineSession(backend, self.model)

        async def main():
            try:
                return await body(session, self.cfg, self.ctx, **kwargs)
            finally:
                self.metadata_extra["warmup"] = session.warmups  # how long each warm-up took to settle
                await session.aclose()

        return asyncio.run(main())

    def __enter__(self) -> "ExperimentRun":
        self._signals = StopSignals().install()
        self._sampler = NvmlSampler().start()
        self._started = utc_now()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._signals.cleaning = True   # from here a signal is noted, never raised
        try:
            failure = exc
            try:
                gpu = self._stop_all()
                failure = self._signals.stopped(exc) or exc
                if failure is None:
                    if self.ctx.diverted:  # the results folder refused files: kept, and the run fails
                        raise partial.diverted_error(self.ctx.diverted)
                    self.ctx.notes.extend(self.device_guard.notes())
                    self._write(gpu)
                    partial.discard(self.ctx)
            except BaseException as late:
                self._keep_partial(failure if failure is not None else late)
                raise
            if failure is not None:
                self._keep_partial(failure)
        finally:
            self._signals.restore()
        if failure is not exc:   # a signal stopped the run: its exception, not the cancellation
            raise failure from None
        return False

    def _stop_all(self) -> dict[str, Any]:
        """Stop every engine, then the NVML sampler; then the device locks go."""
        try:
            for b in self.backends:
                b.stop()
            return self._sampler.stop()
        finally:
            self.device_guard.close()  # every engine has stopped: the next run may take the device

    def partial_dir(self) -> Path:
        return self.ctx.partial_dir()

    def _keep_partial(self, exc: BaseException) -> None:
        """Keep what the failed run measured (rows so far, summaries, engine logs) where Snakemake
        leaves it, say where, and point the error's paths at those copies."""
        dest = self.partial_dir()
        lines = partial.keep_failed_run(self.ctx, self.experiment.all_files, exc)
        if not lines:
            return
        partial.repoint(exc, self.outdir, dest)
        print(f"context-research: the run failed; what it had measured is kept in {dest}:\n"
              + "".join(f"  {line}\n" for line in lines), file=sys.stderr, end="")

    def _default_engine_info(self) -> dict[str, Any]:
        if len(self.backends) == 1:
            return self.backends[0].info()
        return {"engines": {b.log_path.stem: b.info() for b in self.backends}}

    def _write(self, gpu: dict[str, Any]) -> None:
        ctx, name = self.ctx, self.experiment.name
        ctx.write_json("gpu_stats", {**ctx.stamp(), "nvml": gpu, **self.gpu_stats_extra})
        if ctx.diverted:
            raise partial.diverted_error(ctx.diverted)
        model = self.metadata_model or self.model
        meta = build_run_metadata(
            experiment=name, config_hash=ctx.config_hash,
            hash_inputs=self.hash_inputs,
            model={k: v for k, v in model.items() if k != "hf_config"}, backend_mode=ctx.backend_mode,
            engine=self.engine_info if self.engine_info is not None else self._default_engine_info(),
            notes=ctx.notes, started_at=self._started, finished_at=utc_now(), run_id=ctx.run_id)
        meta["model_resolved"] = resolved_model(model)  # a hub id's commit, or the served folder's digests
        meta.update(self.device_guard.metadata())  # device_lock, contention
        meta["model_config"] = self.model_config if self.model_config is not None else model.get("hf_config")
        meta.update(self.metadata_extra)
        meta["result_summary"] = self.result_summary
        _commit_last_output(ctx.path("metadata"), meta)
        self.metadata = meta


def _commit_last_output(path: Path, obj: Any) -> None:
    """Write the run's last output, ``run_metadata.json``, so that a job Snakemake has already
    marked failed (its shell died, its outputs were removed) is never taken as done.

    ``io.atomic_path`` takes the file back when the driver's parent is gone by the end of the
    write (``watchdog.Orphaned``); a SIGTERM/SIGHUP meanwhile (the watchdog's, or anyone's) takes
    it back too instead of killing the process with the file in place. A parent that dies after
    that check dies after the write, so Snakemake's own cleanup removes the file.
    """
    previous = {s: signal.signal(s, _raise_terminated) for s in HANDLED_SIGNALS}
    try:
        write_json(path, obj)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_declared(experiment: Experiment, config: dict, outdir: str | Path) -> dict:
    """Run one declared experiment; returns its run metadata."""
    prepared = experiment.prepare(config) if experiment.prepare else Prepared()
    with ExperimentRun(experiment, config, outdir,
                       dataset_manifest_sha256=prepared.dataset_manifest_sha256) as run:
        if experiment.engines == ONE_ENGINE:
            run.result_summary = run.serve_one(experiment.body, **prepared.body_kwargs)
        else:
            run.result_summary = experiment.body(run, **prepared.body_kwargs)
    return run.metadata
