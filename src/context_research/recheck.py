"""Re-judge saved results with today's checks: ``context-research recheck RESULTS_ROOT``.

The checks of ``analysis.integrity`` and E0's verdict are functions of saved records, so results
measured before they existed (an older evidence packet, say) can be judged by them without
measuring again; each experiment's declaration names its checks (``row_checks``, ``rejudge``).
Only judgements change (``status``, ``reason``, ``integrity_note``; E0's ``passed`` and
``failed_because``); every measured number stays as it was. ``RECHECKED.md``
beside the results gets a section per re-judgement: which rows changed and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from .analysis.integrity import DELIVERY_ONLY_COLUMN, ENGINE_STANDS_COLUMN, NOTE_COLUMN, apply_status
from .io import read_json, write_csv, write_text
from .metadata import git_commit, utc_now


def _gpu_and_config(results_dir: Path) -> tuple[str | None, dict | None]:
    meta_path = results_dir / "run_metadata.json"
    if not meta_path.exists():
        return None, None
    meta = read_json(meta_path)
    device = (meta.get("engine") or {}).get("device")
    gpus = ((meta.get("hardware") or {}).get("gpu") or {}).get("gpus") or []
    gpu = gpus[0]["name"] if device == "cuda" and gpus else None
    return gpu, meta.get("model_config")


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


def recheck_table(path: Path, check: Callable[..., Any], gpu: str | None, hf_config: dict | None) -> list[str]:
    """Apply ``check`` to every row of ``path`` (in place); returns one line per changed row."""
    # Numbers for the checks; the text of every cell, untouched, for writing back.
    values = pd.read_csv(path, float_precision="round_trip")
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    changes = []
    for i, raw in enumerate(values.to_dict("records")):
        row = {k: _plain(v) for k, v in raw.items()}
        before = row.get("status")
        apply_status(row, check(row, gpu, hf_config))
        # The flags follow the findings that made the row implausible: new ones when this recheck
        # made it so; a row implausible before keeps its flags (the run's record-level findings,
        # which a table row alone cannot redo, are among its reasons).
        flags = (DELIVERY_ONLY_COLUMN, ENGINE_STANDS_COLUMN)
        for key in ("status", "reason", NOTE_COLUMN, *(f for f in flags if f in text.columns)):
            if key in flags and row.get("status") == before and before != "ok":
                continue
            text.loc[i, key] = "" if row.get(key) is None else str(row[key])
        if row.get("status") != before:
            changes.append(f"{path.parent.name}/{path.name} row {i}: {before} -> {row['status']}: {row['reason']}")
    write_csv(path, text)
    return changes


def recheck(results_root: str | Path, experiments: Mapping[str, Any]) -> list[str]:
    """Re-judge every experiment folder under ``results_root`` with the checks its declaration
    names (``experiments``: name -> ``Experiment``, the catalog's); write RECHECKED.md there."""
    root = Path(results_root)
    changes: list[str] = []
    for name, exp in experiments.items():
        folder = root / name
        if exp.rejudge is not None and folder.is_dir():
            changes += exp.rejudge(folder)
        for key, check in exp.row_checks:
            path = exp.path(folder, key)
            if path.exists():
                gpu, hf_config = _gpu_and_config(folder)
                changes += recheck_table(path, check, gpu, hf_config)
    commit = git_commit().get("commit")
    lines = [f"## Re-judged at commit {commit} ({utc_now()})", "",
             "`context-research recheck` applied the integrity checks (`analysis/integrity.py`) and E0's verdict "
             "to these saved results. No number was measured again or changed; only `status`, `reason`, "
             "`integrity_note` and E0's `passed` / `failed_because` may differ.", ""]
    lines += [f"- {c}" for c in changes] or ["- no judgement changed"]
    # Appended, so that every re-judgement of the folder stays on record.
    log = root / "RECHECKED.md"
    previous = log.read_text(encoding="utf-8") + "\n" if log.exists() else ""
    write_text(log, previous + "\n".join(lines) + "\n")
    return changes
