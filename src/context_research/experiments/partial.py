"""What a failed run keeps: every measured record, where Snakemake does not delete it.

Snakemake deletes a failed job's outputs, so a run that fails (an error, a dead engine, a signal,
a results folder that turned read-only or full) keeps its records in
``results/<eN>.partial/<run_id>/``:

* a declared file that cannot be written in the results folder is written there instead
  (``RunContext.write_table`` and friends; the run goes on and fails at its end, so every later
  record is kept too);
* the files the run did write (tables, summaries, engine logs) are copied there;
* rows a body registered with ``RunContext.keep_on_failure`` and had not written yet (the points
  finished before an interrupt or an engine death) are written there; a body also writes them
  there after each point (``RunContext.checkpoint``), and each engine log is hard-linked there
  before its engine starts (``link_log``), so a driver killed by SIGKILL, which runs no cleanup,
  keeps them too (with ``INCOMPLETE.txt``; a run that succeeds removes its partial folder).

The error then lists each kept file, and the paths it names point at those copies.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..errors import ContextResearchError
from ..io import kept_files, write_text


def why(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


@dataclass(frozen=True)
class Diverted:
    """A declared file written to the partial folder because the results folder refused it."""

    intended: Path
    kept: Path
    what: str  # "303 rows", "" for a summary
    error: str


def divert(intended: Path, partial_dir: Path, outdir: Path, writer: Callable[[Path], Any], what: str,
           err: OSError) -> Diverted:
    """Write ``intended`` (which failed with ``err``) into ``partial_dir`` with ``writer``."""
    kept = partial_dir / intended.relative_to(outdir)
    try:
        with kept_files():
            writer(kept)
    except OSError as again:
        raise ContextResearchError(
            f"could not write {intended} ({why(err)}), nor keep it in {kept} ({why(again)}): "
            f"{what or 'its content'} is lost") from err
    return Diverted(intended, kept, what, why(err))


class RecordsDivertedError(ContextResearchError):
    """The results folder refused some of a run's files; they were kept in its partial folder."""


def diverted_error(diverted: list[Diverted]) -> RecordsDivertedError:
    """The error a run ends with after some of its files went to the partial folder."""
    first = diverted[0]
    kept = ", ".join(f"{d.kept}" + (f" ({d.what})" if d.what else "") for d in diverted)
    return RecordsDivertedError(f"could not write {first.intended} ({first.error}); the run's records were kept "
                                f"instead in {kept}")


def _rows_frame(ctx, rows: Any, columns) -> pd.DataFrame:
    rows = rows() if callable(rows) else rows
    return rows if isinstance(rows, pd.DataFrame) else ctx.frame(list(rows), columns)


INCOMPLETE = "INCOMPLETE.txt"
FAILED = "FAILED.txt"


def write_pending(ctx, dest: Path) -> list[str]:
    """Write the rows registered with ``keep_on_failure`` whose table the run has not written into
    ``dest``; returns the problems (a table that could not be framed or written)."""
    from ..columns import write_table

    problems = []
    for key, (rows, columns) in ctx.pending.items():
        if key in ctx.written:
            continue
        target = dest / ctx.path(key).relative_to(ctx.outdir)
        try:
            frame = _rows_frame(ctx, rows, columns)
            if frame.empty:
                continue
            with kept_files():
                write_table(target, frame, ctx.table(target.name))
        except Exception as err:  # the rows could not be framed or written: say so, keep the rest
            problems.append(f"could not write the rows of {target.name}: {why(err)}")
    return problems


def _mark_incomplete(dest: Path, problems: list[str] = ()) -> None:
    try:
        with kept_files():
            write_text(dest / INCOMPLETE, "Written while the run was going: the engine logs (links to the files the "
                       "engines write) and, after each finished point, the rows so far. If this file is still here, "
                       "the run never finished: its driver was killed before it could end (SIGKILL, a lost node).\n"
                       + "".join(f"{p}\n" for p in problems))
    except OSError:
        pass   # the run goes on; its end keeps the records again


def link_log(ctx, log: Path) -> None:
    """Keep an engine's log in the partial folder from before the engine starts: a hard link to
    the file it will write (``start`` truncates that file, never replaces it). After SIGTERM
    Snakemake deletes the job's outputs without waiting for the driver's cleanup, and a SIGKILLed
    driver runs none: the link keeps the log either way. A run that succeeds removes the folder."""
    dest = ctx.partial_dir() / log.relative_to(ctx.outdir)
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        os.link(log, dest)
    except OSError:
        return   # another filesystem, a read-only folder: the end of a failed run copies it
    _mark_incomplete(ctx.partial_dir())


def checkpoint(ctx) -> None:
    """After a point: the rows so far into the partial folder, so even a driver killed by SIGKILL
    (which runs no cleanup) loses no finished point; ``INCOMPLETE.txt`` says so. A run that
    succeeds removes them (``discard``); one that fails replaces them."""
    if ctx.pending:
        _mark_incomplete(ctx.partial_dir(), write_pending(ctx, ctx.partial_dir()))


def discard(ctx) -> None:
    """The run succeeded: its files are in the results folder, the partial folder goes."""
    dest = ctx.partial_dir()
    if dest.is_dir() and not (dest / FAILED).exists():
        shutil.rmtree(dest, ignore_errors=True)
        try:
            dest.parent.rmdir()   # the experiment's .partial folder, when no other run is kept there
        except OSError:
            pass


def keep_failed_run(ctx, files: dict[str, str], exc: BaseException) -> list[str]:
    """Copy what the failed run wrote to its partial folder, write the rows it registered and had
    not written, and say why it failed (FAILED.txt). Returns one line per kept file."""
    dest = ctx.partial_dir()
    problems: list[str] = []
    diverted = {d.kept for d in ctx.diverted}
    # The declared files only: a run folder may also hold large things (E6's derived model).
    written = [p for name in files.values() for p in sorted(ctx.outdir.glob(name.replace("{}", "*"))) if p.is_file()]
    for p in written:
        target = dest / p.relative_to(ctx.outdir)
        if target in diverted or (target.exists() and os.path.samefile(p, target)):  # kept already
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        except OSError as err:
            problems.append(f"could not copy {p}: {why(err)}")
    problems += write_pending(ctx, dest)
    (dest / INCOMPLETE).unlink(missing_ok=True)
    lines = kept_lines(ctx, dest)
    if lines:
        try:
            with kept_files():
                write_text(dest / FAILED, f"{type(exc).__name__}: {exc}\n" + "".join(f"{p}\n" for p in problems))
        except OSError as err:
            problems.append(f"could not write {dest / FAILED}: {why(err)}")
    return lines + problems


def kept_lines(ctx, dest: Path) -> list[str]:
    """One line per file in the partial folder: its path and, for a diverted table, its rows."""
    if not dest.is_dir():
        return []
    what = {d.kept: d.what for d in ctx.diverted}
    return [f"{p}" + (f" ({what[p]})" if what.get(p) else "")
            for p in sorted(dest.rglob("*")) if p.is_file() and p.name not in (FAILED, INCOMPLETE)]


def repoint(exc: BaseException, outdir: Path, dest: Path) -> None:
    """Make the paths ``exc``'s message names point at the kept copies: Snakemake deletes the
    originals (the engine log an engine-start error quotes) a moment later."""
    if (not isinstance(exc, ContextResearchError) or isinstance(exc, RecordsDivertedError) or not exc.args
            or not isinstance(exc.args[0], str)):
        return
    message = exc.args[0]
    for kept in sorted(dest.rglob("*"), key=lambda p: -len(str(p))):
        if kept.is_file():
            original = outdir / kept.relative_to(dest)
            for form in {str(original), str(original.resolve())}:
                message = message.replace(form, str(kept))
    exc.args = (message, *exc.args[1:])
