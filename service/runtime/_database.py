"""The database a worker runs on: its URL (or an embedded server), the pool, and waiting
for a database that is not up yet."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from service.backoff import Backoff, Outage
from service.config import Settings
from service.extras import local_extra

log = structlog.get_logger("service.runtime")


async def database_url(settings: Settings) -> str:
    if settings.database.url is not None:
        return settings.database.url.get_secret_value()
    data_dir = settings.stand_ins.data_dir
    with local_extra(
        "DATABASE_URL is unset, so sora-worker would start an embedded PostgreSQL",
        "set DATABASE_URL",
    ):
        from service.local.embedded import start_embedded_postgres

        dsn = start_embedded_postgres(data_dir)
    log.info("database.embedded", data_dir=str(data_dir.resolve() / "pg"))
    return dsn


def create_pool(settings: Settings, dsn: str, max_size: int) -> asyncpg.Pool:
    """A pool as the settings ask (no prepared statements behind a transaction pooler)."""
    return asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        statement_cache_size=100 if settings.database.prepared_statements else 0,
        reset=keep_session,
    )


async def keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to undo, so no round trip.

    asyncpg's default runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release: one more round trip (four statements) for every statement the
    worker runs through the pool, doubling the database's work per checkpoint. The
    worker's pooled sessions never change session state: no SET, no cursors left open,
    no session advisory locks (migrations take transaction-scoped ones), and LISTEN has
    its own connection. asyncpg still rolls back a transaction left open (a cancelled
    task) before this is called, and terminates the connection if that fails.
    """


NOT_UP_YET = (
    OSError,
    TimeoutError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
"""What a database that is starting, restarting or full answers; anything else (a wrong
password, an unknown database) is a setting to fix, and is said at once."""


async def patiently(connect: Callable[[], Awaitable[asyncpg.Pool]]) -> asyncpg.Pool:
    """Connect, waiting (with capped backoff, said once and then every 30 s) while the
    database is not up yet."""
    pauses = Backoff(0.25, 2.0)
    waiting = Outage(log, down="database.waiting", back="database.ready")
    while True:
        try:
            pool = await connect()
        except NOT_UP_YET as err:
            waiting.failed(
                str(err) or type(err).__name__,
                message="the database is not reachable yet; retrying until it is",
            )
            await asyncio.sleep(pauses.next())
            continue
        waiting.over()
        return pool
