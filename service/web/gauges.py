"""The table's gauges for ``/metrics``, read so that a scrape costs the same at a million
rows as at a thousand, and a storm of scrapes costs one read.

The rows still owed work are read through the claim index (their number, not the
table's size, sets the cost) and kept for ``ACTIVE_FRESH`` seconds, shared by every
scrape meanwhile. Completed and failed rows need a pass over the whole table, so they
are counted in the background every ``FINISHED_FRESH`` seconds and a scrape shows the
last count (``sora_rows{stage="completed"}`` may lag by that much; the counters
``sora_rows_finished_total`` do not).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from service.database.errors import RepositoryError
from service.database.health import Health
from service.database.port import TableSnapshot

log = structlog.get_logger("service.web.gauges")

ACTIVE_FRESH = 5.0
FINISHED_FRESH = 300.0
READ_TIMEOUT = 5.0
"""Seconds one read may take (a scraper's own timeout is often 10 s)."""


class TableGauges:
    """The last snapshot of ``public.videos`` and when to read it again."""

    def __init__(self, health: Health, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.health = health
        self._clock = clock
        self._lock = asyncio.Lock()
        self._active: TableSnapshot | None = None
        self._active_at = -ACTIVE_FRESH
        self._finished: dict[str, int] | None = None
        self._finished_at = -FINISHED_FRESH
        self._counting: asyncio.Task[None] | None = None

    async def snapshot(self) -> TableSnapshot | None:
        """The table as last read (None: it cannot be read now)."""
        async with self._lock:  # scrapes at the same moment share one read
            if self._clock() - self._active_at >= ACTIVE_FRESH:
                try:
                    self._active = await self.health.active_rows(READ_TIMEOUT)
                except RepositoryError as err:
                    log.warning("metrics.table_unreadable", error=str(err))
                    self._active = None
                self._active_at = self._clock()
            if self._finished is None and self._active is not None:
                await self._count_finished()  # the first scrape waits for it, once
            elif self._clock() - self._finished_at >= FINISHED_FRESH:
                self._count_in_background()
        if self._active is None:
            return None
        counts = {**(self._finished or {}), **self._active.rows_by_stage}
        return replace(self._active, rows_by_stage=counts)

    def _count_in_background(self) -> None:
        if self._counting is None or self._counting.done():
            self._counting = asyncio.create_task(self._count_finished())

    async def _count_finished(self) -> None:
        try:
            self._finished = await self.health.finished_rows(READ_TIMEOUT)
        except RepositoryError as err:
            log.warning("metrics.finished_unreadable", error=str(err))
        self._finished_at = self._clock()

    async def aclose(self) -> None:
        if self._counting is not None:
            self._counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._counting
