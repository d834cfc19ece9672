"""Generic experiment runner: one engine start per experiment, metadata and GPU stats around it."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import pandas as pd

from ..backends.base import make_backend
from ..config import experiment_config, experiment_hash, hash_inputs, model_profile
from ..gpu_stats import NvmlSampler
from ..io import write_json
from ..metadata import build_run_metadata, make_run_id, utc_now
from ..models import resolve_model
from .session import EngineSession


@dataclass
class RunContext:
    """What every artifact of a run is stamped with."""

    experiment: str
    run_id: str
    config_hash: str
    backend_mode: str
    weights: str
    model_id: str
    outdir: Path
    notes: list[str] = field(default_factory=list)

    def stamp(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "run_id": self.run_id, "config_hash": self.config_hash,
                "backend_mode": self.backend_mode, "weights": self.weights, "model_id": self.model_id}

    def frame(self, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> pd.DataFrame:
        """``rows`` as a DataFrame (in ``columns`` order when given), every row stamped with the
        run's identity columns (``stamp()``) after the data columns."""
        frame = pd.DataFrame(rows, columns=list(columns) if columns is not None else None)
        for key, value in self.stamp().items():
            frame[key] = value
        return frame


Body = Callable[[EngineSession, dict, RunContext], Awaitable[dict | None]]


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM so every ``finally`` (engine stop) runs."""


def _raise_terminated(signum, frame):
    raise _Terminated(f"received signal {signum}")


def run_experiment(name: str, config: dict, outdir: str | Path, body: Body, *,
                   dataset_manifest_sha256: str | None = None, serving_overrides: dict | None = None) -> dict:
    """Start the engine once, run ``body`` against it, always stop it, then write
    ``run_metadata.json`` and ``gpu_stats.json`` into ``outdir``. Returns the metadata."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model = resolve_model(model_profile(config))
    serving = {**config["serving"], **(serving_overrides or {})}
    cfg = experiment_config(config, name)
    chash = experiment_hash(config, name, dataset_manifest_sha256)
    run_id = make_run_id(chash)
    backend = make_backend(model, serving, outdir / "engine.log")
    ctx = RunContext(experiment=name, run_id=run_id, config_hash=chash, backend_mode=backend.mode,
                     weights=model["weights"], model_id=model["source"], outdir=outdir)
    started = utc_now()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    sampler = NvmlSampler().start()
    result: dict | None = None
    try:
        backend.start()
        session = EngineSession(backend, model)

        async def main():
            try:
                return await body(session, cfg, ctx)
            finally:
                await session.aclose()

        result = asyncio.run(main())
    finally:
        backend.stop()
        gpu = sampler.stop()
        signal.signal(signal.SIGTERM, previous)
    write_json(outdir / "gpu_stats.json", {**ctx.stamp(), "nvml": gpu})
    meta = build_run_metadata(experiment=name, config_hash=chash, hash_inputs=hash_inputs(
        config, name, dataset_manifest_sha256), model={k: v for k, v in model.items() if k != "hf_config"},
        backend_mode=backend.mode, engine=backend.info(), notes=ctx.notes, started_at=started,
        finished_at=utc_now(), run_id=run_id)
    meta["model_config"] = model.get("hf_config")
    meta["result_summary"] = result
    write_json(outdir / "run_metadata.json", meta)
    return meta
