"""Each model's recent durations, as the steps hand them to the machine: read from the
table (``service.database.durations``) when first asked, then again once ``REFRESH``
seconds have passed, by the one step that finds them stale (one read at a time; the
others meanwhile take what was read before).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Protocol

import structlog

from service.core.durations import Durations
from service.database.errors import RepositoryError

log = structlog.get_logger("service.worker.durations")

PER_MODEL = 200
"""Durations kept per model: the most recent, so a host that speeds up or slows down
is followed within a couple of hundred jobs."""
REFRESH = 120.0
"""Seconds between two reads of the durations."""


class History(Protocol):
    """The table's record of finished jobs (part of the Repository port)."""

    async def recent_durations(
        self, per_model: int, longest: timedelta
    ) -> Mapping[tuple[str, str], Sequence[float]]: ...


class DurationBook:
    """What each (provider, model) took lately; without a ``History``, nothing."""

    def __init__(
        self,
        history: History | None,
        longest: timedelta,
        *,
        refresh: float = REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.history = history
        self.longest = longest
        self.refresh = refresh
        self._clock = clock
        self._known: dict[tuple[str, str], Durations] = {}
        self._read_at: float | None = None
        self._reading = False

    async def likely(self, provider: str, model: str | None) -> Durations | None:
        """The durations learnt for ``provider``'s ``model``, if any."""
        if self.history is None or model is None:
            return None
        stale = self._read_at is None or self._clock() - self._read_at >= self.refresh
        if stale and not self._reading:
            self._reading = True
            try:
                await self._read(self.history)
            finally:
                self._read_at = self._clock()  # a failed read is tried after REFRESH
                self._reading = False
        return self._known.get((provider, model))

    async def _read(self, history: History) -> None:
        try:
            found = await history.recent_durations(PER_MODEL, self.longest)
        except RepositoryError as err:
            log.warning("worker.durations_unread", error=str(err))
        else:
            self._known = {pair: Durations.of(seconds) for pair, seconds in found.items()}
