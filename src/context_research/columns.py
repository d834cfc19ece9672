"""Result-table column declarations: each column's name, unit, where it was measured, meaning
and the short label a report shows.

Like a metric declaration in AIPerf, a ``Column`` says once what a CSV column is; a ``Table``
lists a result file's columns. ``write_table`` refuses a frame with a column its table does not
declare, the reports head their tables with the declared labels and units (``Table.shown``), and
``docs/columns.md`` (the README's column glossary) is rendered from the same declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import pandas as pd

from .errors import ContextResearchError
from .io import write_csv

# Where a value comes from, and what each source means (the glossary prints this table).
SOURCE_MEANINGS = {
    "client": "measured or counted by our own client: perf_counter timings of the HTTP requests, what it sent",
    "engine": "the engine's own view: /metrics counters, gauges and histograms, the usage block and "
              "finish_reason of its replies, its log, its cache_config_info labels",
    "derived": "computed from measured values (the meaning says of which)",
    "analytical": "computed from config.json shapes, dtypes and token counts, or a datasheet; never measured",
    "files": "sizes and headers of files the engine wrote (E3's KV connector folder), read by our code",
    "nvml": "NVML samples of the GPUs (all devices NVML sees)",
    "process": "psutil samples of the engine's process tree",
    "config": "an input setting (config key, workload target, engine argument)",
    "label": "identity, status, a reason or a note",
}
SOURCES = tuple(SOURCE_MEANINGS)

# Units a column may declare ("" = none: a label, an id, free text, or a mixed unit the meaning explains).
UNITS = ("", "ms", "s", "tokens", "count", "blocks", "bytes", "bytes/token", "bytes/s", "MB/s", "GB/s", "GiB",
         "req/s", "tok/s", "ratio", "%", "bool", "bits/token", "J", "J/token", "W")
# Units a header leaves out: a count, a fraction or a flag reads plainly from its label.
UNITS_NOT_SHOWN = ("", "count", "ratio", "bool")


@dataclass(frozen=True)
class Column:
    name: str
    unit: str  # one of UNITS: "ms", "s", "tokens", "bytes", "GiB", "req/s", "tok/s", "ratio", "count", "" ...
    source: str  # one of SOURCES
    meaning: str  # one line: what the code computes, not what the name suggests
    label: str = ""  # short display label of report tables ("TTFT p50"); ``header`` adds the unit

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"column {self.name!r}: source must be one of {SOURCES}, not {self.source!r}")
        if self.unit not in UNITS:
            raise ValueError(f"column {self.name!r}: unit must be one of {UNITS}, not {self.unit!r}")
        if not self.meaning.strip() or "\n" in self.meaning:
            raise ValueError(f"column {self.name!r}: meaning must be one non-empty line")
        if "\n" in self.label or self.label != self.label.strip():
            raise ValueError(f"column {self.name!r}: label must be one line without outer spaces")

    @property
    def header(self) -> str:
        """What a report table shows atop the column: the label and, in parentheses, the unit
        (not for a count, a fraction or a flag, nor when the label ends in it)."""
        if not self.label:
            raise UnlabelledColumnError(f"column {self.name!r} has no label: declare one to show it in a report table")
        if self.unit in UNITS_NOT_SHOWN or self.label.endswith(self.unit):
            return self.label
        return f"{self.label} ({self.unit})"

    def with_meaning(self, meaning: str) -> "Column":
        return replace(self, meaning=meaning)


@dataclass(frozen=True)
class Table:
    """One result file's columns, in the order they are written."""

    file: str  # e.g. "e1/latency.csv"
    columns: tuple[Column, ...]
    description: str = ""  # what one row is
    # Columns earlier evidence carries that are no longer written: name -> why, and what replaced it.
    retired: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{self.file}: columns declared twice: {', '.join(dupes)}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.file} declares no column {name!r}")

    def headers(self, names: Iterable[str]) -> dict[str, str]:
        """Column name -> report header (label and unit) for ``names``, each declared and labelled."""
        out = {name: self.column(name).header for name in names}
        clash = sorted({h for h in out.values() if list(out.values()).count(h) > 1})
        if clash:
            raise ValueError(f"{self.file}: columns share the header(s) {clash}; give them distinct labels")
        return out

    def shown(self, frame: pd.DataFrame, names: Iterable[str] | None = None) -> pd.DataFrame:
        """A report table: the columns of ``frame`` among ``names`` (default: every declared one),
        in that order, headed by their declared labels and units."""
        present = [n for n in (self.names if names is None else names) if n in frame.columns]
        return frame[present].rename(columns=self.headers(present))

    def undeclared(self, columns: Iterable[str], allow_retired: bool = False) -> list[str]:
        """Columns this table does not declare (``allow_retired``: retired ones count as declared,
        for reading earlier evidence; a new table never writes them)."""
        known = set(self.names) | ({name for name, _ in self.retired} if allow_retired else set())
        return [c for c in columns if c not in known]


class UndeclaredColumnError(ContextResearchError):
    pass


class UnknownTableError(ContextResearchError):
    pass


class UnlabelledColumnError(ContextResearchError):
    pass


def find_table(tables: Iterable[Table], experiment: str, filename: str) -> Table:
    """The table among ``tables`` declared for ``results/<experiment>/<filename>``."""
    key = f"{experiment}/{filename}"
    tables = list(tables)
    for t in tables:
        if t.file == key:
            return t
    raise UnknownTableError(f"no column declaration for {key!r}; declared tables: "
                            f"{', '.join(t.file for t in tables) or 'none'} (declare it in the experiment's tables)")


def write_table(path: str | Path, frame: pd.DataFrame, table: Table) -> Path:
    """Write ``frame`` as CSV, its columns in their declared order, after checking that ``table``
    declares every one of them."""
    extra = table.undeclared(frame.columns)
    if extra:
        raise UndeclaredColumnError(
            f"{path}: column(s) {', '.join(extra)} are not declared in the {table.file} table "
            "(its experiment's table declarations); declare them with their unit and source")
    return write_csv(path, frame[[c for c in table.names if c in frame.columns]])
