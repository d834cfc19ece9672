"""What the plausibility checks of one row found (``Findings``): the reasons that make it
implausible, and what was and was not checked. The checks are ``analysis.integrity``."""

from __future__ import annotations

from dataclasses import dataclass, field

IMPLAUSIBLE = "implausible"


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
