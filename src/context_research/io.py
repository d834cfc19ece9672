"""Atomic artifact writes: every file appears whole or not at all (temp path, then rename)."""

from __future__ import annotations

import contextlib
import contextvars
import csv
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

from . import watchdog


def _new_temp_file(target: Path) -> Path:
    """An empty, new file beside ``target`` with ordinary permissions (0o666 less the umask, as
    ``open(path, "w")`` gives), unlike ``tempfile.mkstemp``'s 0o600."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {target}")


# True inside ``kept_files()``: what is written there is no rule output (a failed run's ``.partial``
# copy), so it is kept even when the rule has already failed.
_KEEPING = contextvars.ContextVar("context_research_keeping", default=False)


@contextlib.contextmanager
def kept_files() -> Iterator[None]:
    """Writes in this block are a failed run's kept records, not rule outputs: they stay even
    when the driver is orphaned (``watchdog.orphaned()``), since nobody else will keep them."""
    token = _KEEPING.set(True)
    try:
        yield
    finally:
        _KEEPING.reset(token)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.
    The file gets the permissions of a file opened normally (0o644 under umask 022).

    A command whose rule's shell is gone (``watchdog.orphaned()``: Snakemake has marked the job
    failed and removed its outputs) takes the renamed file back and raises ``watchdog.Orphaned``;
    checked after the rename, so a shell that dies during the write is seen too."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
        if watchdog.orphaned() and not _KEEPING.get():
            target.unlink(missing_ok=True)
            raise watchdog.Orphaned(target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically.

    A text cell holding a bare carriage return (a model's generated text can) is not quoted by
    the csv module's minimal quoting, and pandas' reader then splits the row there (or fails:
    "Buffer overflow caught"). Such a frame is written with every non-number quoted, which
    reads back the same; any other frame keeps minimal quoting."""
    quoting = csv.QUOTE_NONNUMERIC if _has_carriage_return(frame) else csv.QUOTE_MINIMAL
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, quoting=quoting)
    return Path(path)


def _has_carriage_return(frame) -> bool:
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object and values.map(lambda v: isinstance(v, str) and "\r" in v).any():
            return True
    return False


def write_figure(path: str | os.PathLike, fig) -> Path:
    """Save a matplotlib figure atomically; the format follows the target's suffix."""
    target = Path(path)
    fmt = target.suffix.lstrip(".") or "svg"
    # No creation date in the file, so the same numbers give the same bytes.
    metadata = {"Date": None} if fmt in ("svg", "pdf") else None
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata=metadata)
    return target


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
