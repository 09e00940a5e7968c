"""Following a row until it finishes, the way an app would: by reading the table.

Used by ``request --wait`` and the demo. One updating line on a terminal, plain lines
otherwise (logs and CI keep every state the row went through).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

FINISHED = ("completed", "failed")
"""The stages that end a row: a ``describing`` row already shows status ``completed``
(its video is stored), but its poster and thumbnail are still on their way."""
POLL_EVERY = 0.25


class ProgressLine:
    """Shows a row's stage and progress on stderr, once per change."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, int] | None = None

    def show(self, row: dict[str, Any]) -> None:
        state = (str(row["stage"]), int(row["progress"]))
        if state == self.last:
            return
        self.last = state
        bar = "#" * (state[1] // 5)
        text = f"{self.label}: {state[0]:<10} [{bar:<20}] {state[1]:3d}%"
        sys.stderr.write("\r" + text if self.tty else text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.last is not None:
            sys.stderr.write("\n")


async def follow(
    read: Callable[[UUID], Awaitable[dict[str, Any] | None]],
    row_id: UUID,
    label: str,
) -> dict[str, Any]:
    """Show the row's progress until it is completed (media included) or failed."""
    line = ProgressLine(label)
    try:
        while True:
            row = await read(row_id)
            if row is None:
                raise LookupError(f"row {row_id} was deleted")
            line.show(row)
            if row["stage"] in FINISHED:
                return row
            await asyncio.sleep(POLL_EVERY)
    finally:
        line.done()
