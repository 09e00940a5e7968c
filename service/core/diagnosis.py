"""One line of ``sora-worker doctor``: a check, how it went, and the fix.

Its own module because the doctor's checks come from several places (the database,
storage, and each provider adapter's ``diagnose``), and all speak this one type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.core.text import printable

Level = Literal["OK", "WARN", "FAIL"]
SEVERITY: dict[Level, int] = {"OK": 0, "WARN": 1, "FAIL": 2}
"""Also the doctor's exit code: the worst level found."""


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    detail: str
    fix: str = ""
    """What to change, for WARN and FAIL; empty when there is nothing to do."""

    def line(self) -> str:
        """One line for a terminal (a server's words in ``detail`` are made printable)."""
        fix = f" -- fix: {self.fix}" if self.fix else ""
        return printable(f"{self.level:<4}  {self.check:<18} {self.detail}{fix}")

    def as_json(self) -> dict[str, str]:
        return {"check": self.check, "level": self.level, "detail": self.detail, "fix": self.fix}
