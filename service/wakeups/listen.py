"""LISTEN on a dedicated connection: the fast path from INSERT to claim.

A LISTEN connection can die silently (a proxy drops it, the server restarts), and a
deaf worker still looks healthy. So the listener checks itself: every ``check_every``
seconds it NOTIFYs its own channel and expects the echo; no echo, or a closed
connection, means reconnect (with backoff). Each (re)connect wakes the claim loop,
because notifications sent while we were away are never replayed.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import structlog

from service.backoff import Backoff, Outage
from service.wakeups.wakeup import Wakeup

CHANNEL = "sora_worker"  # the channel the trigger in sql/0002 notifies
SELF_CHECK_PREFIX = "selfcheck:"

log = structlog.get_logger("service.wakeups.listen")


class Listener:
    """Keeps one LISTEN connection alive and turns notifications into wake-ups."""

    name = "listen"

    def __init__(
        self,
        dsn: str,
        *,
        check_every: float = 15.0,
        echo_timeout: float = 5.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.dsn = dsn
        self.wakeup = Wakeup()
        """The wake-up this listener sets (the worker's, once ``run`` is given it)."""
        self.check_every = check_every
        self.echo_timeout = echo_timeout
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self._pauses = Backoff(0.5, max_backoff)
        self._outage = Outage(log, down="listen.lost")
        self._echo: asyncio.Future[None] | None = None
        self._token = ""

    def is_up(self) -> bool:
        return self.connected.is_set()

    async def run(self, wakeup: Wakeup) -> None:
        """Listen until cancelled, reconnecting whenever the connection fails; the loss
        is said once (``listen.lost``), reminded every 30 s, and ``listen.ready`` says
        each connection that works."""
        self.wakeup = wakeup
        while True:
            try:
                await self._session()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
                self.connected.clear()
                self._outage.failed(str(err) or type(err).__name__, retry_in=self._pauses.upcoming)
                await asyncio.sleep(self._pauses.next())

    async def _session(self) -> None:
        # Bounded like the self-check: a path that swallows packets must not hold a
        # reconnect for asyncpg's default 60 s.
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn, timeout=self.echo_timeout + self.check_every
        )
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            self.connected.set()
            self._pauses.reset()
            self._outage.over()
            self.wakeup.set("listen.connected")
            log.info("listen.ready", channel=CHANNEL)
            while True:
                try:
                    await asyncio.wait_for(closed.wait(), self.check_every)
                except TimeoutError:
                    await self._self_check(conn)
                    continue
                raise ConnectionError("LISTEN connection closed")
        finally:
            self.connected.clear()
            if not conn.is_closed():
                conn.terminate()

    async def _self_check(self, conn: asyncpg.Connection) -> None:
        """NOTIFY ourselves and expect the echo, all within ``echo_timeout``: a connection
        that silently stops delivering blocks the NOTIFY itself, not just the echo."""
        self._token = SELF_CHECK_PREFIX + uuid.uuid4().hex
        self._echo = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.echo_timeout):
                await conn.execute("select pg_notify($1, $2)", CHANNEL, self._token)
                await self._echo
        except TimeoutError as err:
            raise TimeoutError("LISTEN self-check got no echo") from err

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        if payload.startswith(SELF_CHECK_PREFIX):
            if payload == self._token and self._echo is not None and not self._echo.done():
                self._echo.set_result(None)
            return
        self.wakeup.set("notify")
