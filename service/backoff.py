"""Waiting out something that is down: capped exponential pauses, and one way to say so.

Every loop that retries until a dependency comes back uses these two pieces: the claim
loop during a database outage, ``run`` started before its database, LISTEN and Realtime
reconnecting, an intent withdrawn after a lost checkpoint. So every outage reads the
same in the log: said once when it starts (and again if its cause changes, where the
caller asks for that), reminded every ``remind_every`` seconds while it lasts, and said
when it is over, with how long it lasted (``down_for_s``).

Why not tenacity: these loops never give up (the worker must outlast any outage) and
each one is woken early by its own events (a LISTEN reconnect ends the claim loop's
pause); what they share is the pause and the saying, which is all this module holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

Level = Literal["info", "warning", "error"]


class Log(Protocol):
    """The part of a structlog logger an Outage uses."""

    def info(self, event: str, **fields: Any) -> Any: ...

    def warning(self, event: str, **fields: Any) -> Any: ...

    def error(self, event: str, **fields: Any) -> Any: ...


class Backoff:
    """Pauses of ``first``, doubled after each failure, never longer than ``cap``."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._pause = min(first, cap)

    @property
    def upcoming(self) -> float:
        """The pause the next failure takes (what a log line says as ``retry_in``)."""
        return self._pause

    def next(self) -> float:
        """The pause to take now; the one after it is twice as long, up to ``cap``."""
        pause = self._pause
        self._pause = min(pause * 2, self.cap)
        return pause

    def reset(self) -> None:
        """It worked: the next failure starts from the shortest pause again."""
        self._pause = min(self.first, self.cap)


class Outage:
    """Says an outage once, reminds while it lasts, says when it is over.

    ``down`` is logged at ``level`` when the outage starts, ``still`` (a warning, with
    ``down_for_s``) every ``remind_every`` seconds while it lasts, ``back`` (info, with
    ``down_for_s``) when ``over()`` ends it; ``back=None`` says nothing then (a caller
    whose own success line says it). With ``new_cause_said``, a failure whose ``cause``
    differs from the one last said is said again at once (a wrong key after a dead
    server is news); otherwise the cause of later failures goes into the reminders.
    The cause is logged under ``cause_field``.
    """

    def __init__(
        self,
        log: Log,
        *,
        down: str,
        still: str | None = None,
        back: str | None = None,
        level: Level = "warning",
        remind_every: float = 30.0,
        new_cause_said: bool = False,
        cause_field: str = "error",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self.down_event = down
        self.still_event = still or down
        self.back_event = back
        self.level: Level = level
        self.remind_every = remind_every
        self.new_cause_said = new_cause_said
        self.cause_field = cause_field
        self._clock = clock
        self.since: float | None = None
        self._reminded = 0.0
        self._cause: str | None = None

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, cause: str, **fields: Any) -> None:
        """Another failure: said if the outage starts (or its cause changed, when asked
        for), reminded if the last line is ``remind_every`` old, else kept quiet."""
        now = self._clock()
        if self.since is None or (self.new_cause_said and cause != self._cause):
            if self.since is None:
                self.since = now
            self._reminded = now
            self._cause = cause
            getattr(self._log, self.level)(self.down_event, **self._fields(cause, fields))
        elif now - self._reminded >= self.remind_every:
            self._reminded = now
            self._log.warning(
                self.still_event,
                **self._fields(cause, fields),
                down_for_s=round(now - self.since, 1),
            )

    def over(self, **fields: Any) -> float | None:
        """It works again: say so (``back``) if there was an outage; return how long it
        lasted (None when there was none)."""
        if self.since is None:
            return None
        lasted = self._clock() - self.since
        self.since = None
        self._cause = None
        if self.back_event is not None:
            self._log.info(self.back_event, **fields, down_for_s=round(lasted, 1))
        return lasted

    def _fields(self, cause: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {self.cause_field: cause, **fields}
