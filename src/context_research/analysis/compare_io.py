"""The inputs of a comparison, read from saved result folders: the runs of each side (``find_run``),
the refusals (``check_comparable``), what differs in their provenance (``provenance_diff``), and each
experiment's per-request records and point statuses, read through its ``compare_layout.Layout``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from ..errors import ContextResearchError
from ..evidence import packed_under
from ..io import read_json
from ..provenance import flatten
from .findings import IMPLAUSIBLE
from .integrity import ENGINE_STANDS_COLUMN, engine_timings_stand

# -- finding the runs ------------------------------------------------------------------------------

@dataclass
class Run:
    """One side of a comparison: its experiment folders by name, and where they came from."""
    label: str
    root: Path
    experiments: dict[str, Path]
    metadata: dict[str, dict] = field(default_factory=dict)


def _experiment_name(folder: Path) -> str:
    meta = folder / "run_metadata.json"
    if meta.is_file():
        name = read_json(meta).get("experiment")
        if name:
            return str(name)
    return folder.name


def find_run(where: str | Path, label: str) -> Run:
    """The experiments of a result folder: a results root holding ``eN/`` folders (``results``,
    ``results/variants/<v>``, ``docs/evidence/<x>/results``) or one experiment folder
    (``results/e1``, recognised by its ``run_metadata.json``)."""
    root = Path(where)
    if not root.is_dir():
        raise ContextResearchError(f"{label}: {root} is not a folder")
    if (root / "run_metadata.json").is_file():
        experiments = {_experiment_name(root): root}
    else:
        experiments = {p.name: p for p in sorted(root.iterdir())
                       if p.is_dir() and p.name[:1] == "e" and p.name[1:].isdigit()
                       and (p / "run_metadata.json").is_file()}
    if not experiments:
        raise ContextResearchError(f"{label}: {root} holds no experiment results (no eN/run_metadata.json, "
                                   f"nor a run_metadata.json of its own)")
    packed = packed_under(root)
    if packed and packed[1]:
        raise ContextResearchError(f"{label}: {len(packed[1])} file(s) under {root} ({packed[1][0]}, ...) are packed in "
                                   f"{packed[0] / 'raw.tar.xz'}: python -m context_research.evidence unpack {packed[0]}")
    return Run(label, root, experiments, {name: read_json(p / "run_metadata.json") for name, p in experiments.items()})


def e0_folder(run: Run, records: str) -> Path | None:
    """E0's folder for the run: its own e0, else the e0 beside a single experiment folder; None
    where that folder lacks E0's ``records`` file."""
    single = (run.root / "run_metadata.json").is_file()
    folder = run.experiments.get("e0") or (run.root.parent / "e0" if single else None)
    return folder if folder is not None and (folder / records).is_file() else None


# -- refusals --------------------------------------------------------------------------------------

def _hardware(meta: dict) -> str | None:
    gpu = (meta.get("hash_inputs") or {}).get("gpu")
    label = meta.get("hardware_label")
    return f"{label} (gpu: {gpu})" if gpu and label else label or gpu


def _model(meta: dict) -> dict[str, Any]:
    inputs = meta.get("hash_inputs") or {}
    out = {"model_id": meta.get("model_id"), "weights": meta.get("weights")}
    if "model_files" in inputs:
        out["model_files"] = inputs["model_files"]
    return out


def _backend_modes(meta: dict, records: pd.DataFrame | None) -> set[str]:
    modes = {str(meta["backend_mode"])} if meta.get("backend_mode") else set()
    if records is not None and "backend_mode" in records.columns:
        modes |= {str(m) for m in records["backend_mode"].dropna().unique()}
    return modes


def check_comparable(a: Run, b: Run, layouts: Mapping[str, Any],
                     allow_different_hardware: bool = False) -> list[str]:
    """Raise ContextResearchError naming what differs when the runs may not be compared: simulated
    against real rows (always), a different GPU / hardware or model (unless
    ``allow_different_hardware``), in every experiment of ``layouts`` (name -> its
    ``compare_layout.Layout``). Returns the differences allowed, for the report."""
    refusals, allowed = [], []
    for name, layout in layouts.items():
        ma, mb = a.metadata[name], b.metadata[name]
        modes_a = _backend_modes(ma, read_records(a.experiments[name], layout))
        modes_b = _backend_modes(mb, read_records(b.experiments[name], layout))
        if modes_a != modes_b or len(modes_a) > 1:
            refusals.append(f"{name}: backend_mode {'+'.join(sorted(modes_a)) or '?'} in A vs "
                            f"{'+'.join(sorted(modes_b)) or '?'} in B (simulated rows are never compared with real ones)")
        hw_a, hw_b = _hardware(ma), _hardware(mb)
        if hw_a != hw_b:
            (allowed if allow_different_hardware else refusals).append(
                f"{name}: hardware {hw_a!r} in A vs {hw_b!r} in B")
        model_a, model_b = _model(ma), _model(mb)
        for key in sorted(set(model_a) | set(model_b)):
            if model_a.get(key) != model_b.get(key):
                (allowed if allow_different_hardware else refusals).append(
                    f"{name}: {key} {model_a.get(key)!r} in A vs {model_b.get(key)!r} in B")
    if refusals:
        hint = "" if all("backend_mode" in r for r in refusals) else \
            " (pass --allow-different-hardware to compare different hardware or models anyway)"
        raise ContextResearchError(f"refusing to compare {a.root} with {b.root}: " + "; ".join(refusals) + hint)
    return allowed


def provenance_diff(a: Run, b: Run, experiments: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per experiment, ``{"source": what was compared, "lines": one line per input that differs}``:
    the ``hash_inputs`` of run_metadata.json (as ``context-research provenance A B``), or, for runs
    written before hash inputs were recorded, their config, versions and hardware."""
    out: dict[str, dict[str, Any]] = {}
    missing = object()
    for name in experiments:
        ma, mb = a.metadata[name], b.metadata[name]
        if "hash_inputs" in ma and "hash_inputs" in mb:
            left, right = flatten(ma["hash_inputs"]), flatten(mb["hash_inputs"])
            source = "hash_inputs (run_metadata.json)"
        else:
            def fallback(meta):
                return flatten({k: meta.get(k) for k in ("config", "versions", "hardware_label", "model_id", "weights",
                                                          "engine_distribution")})
            left, right = fallback(ma), fallback(mb)
            source = "no hash_inputs recorded: run_metadata config, versions and hardware compared"
        lines = []
        for key in sorted(set(left) | set(right)):
            x, y = left.get(key, missing), right.get(key, missing)
            if x != y:
                lines.append(f"{key}: {'(absent)' if x is missing else _show(x)} -> "
                             f"{'(absent)' if y is missing else _show(y)}")
        out[name] = {"source": source, "lines": lines}
    return out


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# -- records and points ----------------------------------------------------------------------------

def read_records(folder: Path, layout: Any) -> pd.DataFrame | None:
    """The experiment's records file (``layout.records``) in ``folder``, or None where it is missing."""
    if not (folder / layout.records).is_file():
        return None
    return pd.read_csv(folder / layout.records, low_memory=False)


def _key_value(value: Any) -> str:
    """A point coordinate as text: 4096.0 and "4096" print alike, so CSVs written by pandas
    (which writes an int column with gaps as floats) still join."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def point_label(columns: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{c}={_key_value(v)}" for c, v in zip(columns, values)) if columns else "all"


class PointState(NamedTuple):
    """A point's row in its run's point table: its status, reason (the start of it), and whether
    every finding is the client's (``integrity.engine_timings_stand``: the engine's timings stand)."""
    status: str
    reason: str
    engine_stands: bool = False


def point_status(folder: Path, layout: Any) -> dict[str, PointState] | None:
    """Point label -> its ``PointState`` from the point table, or None where the run has none."""
    if layout.points_table is None or not (folder / layout.points_table).is_file():
        return None
    table = pd.read_csv(folder / layout.points_table, low_memory=False)
    if "status" not in table.columns or not set(layout.points_table_columns) <= set(table.columns):
        return None
    out = {}
    for _, row in table.iterrows():
        label = point_label(layout.point_columns, [row[c] for c in layout.points_table_columns])
        reason = row.get("reason")
        reason = "" if reason is None or (isinstance(reason, float) and math.isnan(reason)) else " ".join(
            str(reason).split())
        flag = row.get(ENGINE_STANDS_COLUMN)
        if flag is None or (isinstance(flag, float) and math.isnan(flag)):
            # a table from before the column: the reasons say it ("; "-joined, each naming its check;
            # a reason with "; " inside reads as not the client's: the safe side)
            only = engine_timings_stand(reason.split("; ")) if reason else False
        else:
            only = str(flag).lower() in ("true", "1", "1.0")
        # a reason can hold a whole server reply: the note keeps its start
        out[label] = PointState(str(row["status"]), reason if len(reason) <= 200 else reason[:197] + "...",
                                str(row["status"]) == IMPLAUSIBLE and only)
    return out


def is_ok(series: pd.Series) -> pd.Series:
    """The ``ok`` column as booleans, however pandas read it back."""
    return series.astype(str).str.lower().isin(("true", "1", "1.0"))


def points_of(folder: Path, layout: Any) -> dict[str, dict[str, np.ndarray]]:
    """Point label -> metric name -> the successful requests' values (scaled), in file order."""
    frame = read_records(folder, layout)
    if frame is None:
        return {}
    for column, older in layout.fallbacks:
        if column in layout.point_columns and column not in frame.columns and older in frame.columns:
            frame = frame.assign(**{column: frame[older]})
    if layout.keep is not None:
        frame = frame[layout.keep(frame)]
    if "ok" in frame.columns:
        frame = frame[is_ok(frame["ok"])]
    out: dict[str, dict[str, np.ndarray]] = {}
    # An empty coordinate (E2's trace point has no single prompt length) stays part of the label.
    labels = pd.Series([point_label(layout.point_columns, [row.get(c) for c in layout.point_columns])
                        for row in frame.to_dict("records")], index=frame.index, dtype=object)
    for label in dict.fromkeys(labels):  # first-seen order: the order the run measured them
        rows = frame[labels == label]
        out[label] = {m.name: pd.to_numeric(rows[m.column], errors="coerce").dropna().to_numpy(float) * m.scale
                      for m in layout.metrics if m.column in rows.columns}
    return out
