"""The live page's feed: one reader per dashboard, any number of watchers.

``Feed`` reads the queue (the overview and the newest rows) and renders them once for
everyone. It reads when LISTEN hears of a new or re-queued row (``sora_worker``, the
worker's own channel, through ``service.wakeups.listen.Listener``: its self-check and
reconnect loop included), and every ``refresh`` seconds for the stage changes and
progress no notification announces; and only while someone watches.

Each watcher gets a stream of server-sent events (``events``): one ``snapshot`` per
read, holding only what changed since the last one this watcher was sent (the overview
when it changed, each row's HTML when its version changed; ``null`` keeps the page's).

Through a database restart: a read that fails publishes ``database: unavailable``
(the page says so and keeps what it shows), the pool replaces its dead connections on
the next read, the listener reconnects by itself, and the first good read sends the
page everything that changed meanwhile. The page never reloads. A stream ends after
``STREAM_SECONDS`` (the bounded server's connection lifetime); EventSource reconnects
at once (``retry``) and the new stream starts with a full snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from service.backoff import Outage
from service.dashboard.pages import Pages
from service.database.dashboard import DashboardReads
from service.database.errors import RepositoryError
from service.wakeups.listen import Listener
from service.wakeups.wakeup import Wakeup

log = structlog.get_logger("service.dashboard.live")

STREAM_SECONDS = 120.0
"""How long one event stream lives before the browser opens the next."""
KEEPALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""
RECONNECT_MS = 1000


@dataclass(frozen=True)
class Snapshot:
    """One read, rendered: ``None`` content when the database did not answer."""

    seq: int
    overview: str | None = None
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    """(id, version, html), newest first."""

    @property
    def ok(self) -> bool:
        return self.overview is not None


class Feed:
    """Reads for the watchers; ``run`` it as a task for the dashboard's lifetime."""

    def __init__(
        self,
        reads: DashboardReads,
        pages: Pages,
        *,
        dsn: str | None,
        refresh: float,
        limit: int,
    ) -> None:
        self.reads = reads
        self.pages = pages
        self.refresh = refresh
        self.limit = limit
        self.listener = Listener(dsn) if dsn is not None else None
        self.wakeup = Wakeup()
        self.latest = Snapshot(seq=0)
        self._changed = asyncio.Event()
        self._watchers = 0
        self._watched = asyncio.Event()
        self._closing = False
        self._outage = Outage(
            log, down="dashboard.database_unavailable", back="dashboard.database_back"
        )

    async def run(self) -> None:
        listening = None
        if self.listener is not None:
            listening = asyncio.create_task(self.listener.run(self.wakeup), name="dashboard-listen")
        try:
            while True:
                await self._watched.wait()
                await self.read()
                await self.wakeup.wait(self.refresh)
        finally:
            if listening is not None:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening

    async def read(self) -> Snapshot:
        """Read and render the queue now, and hand it to every watcher."""
        seq = self.latest.seq + 1
        try:
            overview, rows = await self.reads.queue(self.limit)
        except RepositoryError as err:
            self._outage.failed(str(err), message="the dashboard cannot read the queue")
            snapshot = Snapshot(seq)
        else:
            self._outage.over()
            cards = [(str(r.id), r.version, self.pages.card(r)) for r in rows]
            snapshot = Snapshot(seq, self.pages.overview(overview), cards)
        self.latest = snapshot
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return snapshot

    def close(self) -> None:
        """End every stream now (the dashboard is stopping); browsers reconnect later."""
        self._closing = True
        self._changed.set()

    async def next_after(self, seq: int, within: float) -> Snapshot | None:
        """The first snapshot newer than ``seq``, or None after ``within`` seconds."""
        if self.latest.seq > seq:
            return self.latest
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), within)
            return self.latest
        return None

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Count a watcher while it streams; the first one wakes the reader at once."""
        self._watchers += 1
        self._watched.set()
        self.wakeup.set("watcher")
        try:
            yield
        finally:
            self._watchers -= 1
            if self._watchers == 0:
                self._watched.clear()

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``GET /events``: this watcher's stream of snapshots."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        ends = loop.time() + STREAM_SECONDS
        sent_overview: str | None = None
        sent_rows: dict[str, str] = {}
        seen = self.latest.seq  # the next read is fresh: watching() asks for it
        with self.watching(), contextlib.suppress(ConnectionResetError):
            await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
            while (left := ends - loop.time()) > 0 and not self._closing:
                snapshot = await self.next_after(seen, min(left, KEEPALIVE_SECONDS))
                if self._closing:
                    break
                if snapshot is None:
                    await response.write(b": keepalive\n\n")
                    continue
                seen = snapshot.seq
                payload = _changes(snapshot, sent_overview, sent_rows)
                if snapshot.ok:
                    sent_overview = snapshot.overview
                    sent_rows = {row_id: version for row_id, version, _ in snapshot.rows}
                await response.write(f"event: snapshot\ndata: {payload}\n\n".encode())
        return response


def _changes(snapshot: Snapshot, overview: str | None, rows: dict[str, str]) -> str:
    """The snapshot as JSON, without what this watcher already has."""
    if not snapshot.ok:
        return json.dumps({"database": "unavailable"})
    return json.dumps(
        {
            "database": "ok",
            "overview": None if snapshot.overview == overview else snapshot.overview,
            "rows": [
                {
                    "id": row_id,
                    "version": version,
                    "html": None if rows.get(row_id) == version else html,
                }
                for row_id, version, html in snapshot.rows
            ],
        }
    )
