"""What the plausibility checks of one row found (``Findings``): the reasons that make it
implausible, and what was and was not checked; ``apply_status`` puts them on the row. The checks
are ``analysis.integrity``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

IMPLAUSIBLE = "implausible"
# Every reason of the client-delivery checks starts with this.
CLIENT_DELIVERY = "client delivery"
# A client TPOT below the engine's ITL: the client saw tokens faster than the engine made them
# (they had waited and came bunched); the engine's clock is the reference, the client's is wrong.
CLIENT_TPOT_BELOW = "client TPOT"

NOTE_COLUMN = "integrity_note"
# Set with the note: the row is implausible for client delivery only (``delivery_only``).
DELIVERY_ONLY_COLUMN = "client_delivery_only"
# Set with the note: every finding is the client's (``engine_timings_stand``).
ENGINE_STANDS_COLUMN = "engine_timings_stand"


@dataclass
class Findings:
    """What the checks of one row found: ``reasons`` make it implausible; ``checked`` and
    ``not_checked`` (each "what: why") say what was and was not compared."""

    reasons: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    # Client slower than the engine beyond the tolerance: real latency outside the engine (API
    # server, HTTP, a starved client), said on the row, but no reason to distrust the number.
    outside_engine: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return IMPLAUSIBLE if self.reasons else "ok"

    def merge(self, other: "Findings") -> "Findings":
        for mine, theirs in ((self.reasons, other.reasons), (self.checked, other.checked),
                             (self.not_checked, other.not_checked), (self.outside_engine, other.outside_engine)):
            mine.extend(x for x in theirs if x not in mine)
        return self

    def note(self) -> str:
        """One line for the row: what was checked, what was not and why, what failed."""
        parts = []
        if self.reasons:
            parts.append("implausible: " + "; ".join(self.reasons))
        parts.append("checked: " + (", ".join(self.checked) if self.checked else "nothing"))
        if self.not_checked:
            parts.append("not checked: " + "; ".join(self.not_checked))
        if self.outside_engine:
            parts.append("time outside the engine: " + "; ".join(self.outside_engine))
        return " | ".join(parts)


def apply_status(row: dict[str, Any], findings: Findings, note_column: str | None = NOTE_COLUMN) -> dict[str, Any]:
    """Put ``findings`` on ``row`` (in place; returned too).

    An ``ok`` row with a finding becomes ``implausible`` and its ``reason`` gets the findings
    appended ("; "-joined). A ``failed`` (or any other non-ok) row keeps its status and reason.
    ``note_column`` (default ``integrity_note``; None for no note) gets ``findings.note()``: what
    was checked, what was not and why, and the findings, on every row, failed ones included;
    ``client_delivery_only`` (``delivery_only``) and ``engine_timings_stand``
    (``engine_timings_stand``) are set with it.
    """
    status = row.get("status", "ok")
    if findings.reasons and status == "ok":
        row["status"] = IMPLAUSIBLE
        previous = row.get("reason")
        keep = [previous.strip()] if isinstance(previous, str) and previous.strip() else []  # not None / NaN
        row["reason"] = "; ".join(keep + findings.reasons)
    if note_column:
        row[note_column] = findings.note()
        implausible = row.get("status") == IMPLAUSIBLE
        row[DELIVERY_ONLY_COLUMN] = implausible and delivery_only(findings.reasons)
        row[ENGINE_STANDS_COLUMN] = implausible and engine_timings_stand(findings.reasons)
    return row


def delivery_only(reasons: Sequence[str]) -> bool:
    """True when there are reasons and every one is client delivery (the client got its tokens
    later than the engine made them): the client's latencies overstate the engine's, so a
    capacity probe that passes on them stands (``DELIVERY_ONLY_COLUMN``)."""
    return bool(reasons) and all(r.startswith(CLIENT_DELIVERY) for r in reasons)


def engine_timings_stand(reasons: Sequence[str]) -> bool:
    """True when there are reasons and every one is the client's: client delivery, or a client
    TPOT below the engine's ITL (bunched tokens). vLLM's own per-request timings are the
    reference these checks hold the client to, so they stand and may be compared; the client's
    may not (``ENGINE_STANDS_COLUMN``). A bunched stream also understates the client's TPOT, so
    it is not ``delivery_only``."""
    return bool(reasons) and all(r.startswith((CLIENT_DELIVERY, CLIENT_TPOT_BELOW)) for r in reasons)
