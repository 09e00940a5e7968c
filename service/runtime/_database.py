"""The database a worker runs on: its URL (or an embedded server), the pool, and waiting
for a database that is not up yet.

A database that cannot be reached, or that refuses the login, is one line naming where
``DATABASE_URL`` points (never its password) and what to check: ``DatabaseUnreachable``
and ``DatabaseRefused``, which the command line prints as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import structlog

from service.backoff import Backoff, Outage
from service.config import Settings, dsn, refuse
from service.database.migrations import Conn, migrate, waiting_for_owner
from service.extras import local_extra

log = structlog.get_logger("service.runtime")


class DatabaseUnreachable(ConnectionError):
    """Nothing answers where DATABASE_URL points (no such host, nothing listening, a
    timeout); the message names the host and the setting."""


class DatabaseRefused(ValueError):
    """The database answers but refuses the login or has no such database: a setting to
    fix, named in the message."""


async def database_url(settings: Settings) -> str:
    if settings.database.url is not None:
        return settings.database.url.get_secret_value()
    refuse(settings, "database")
    data_dir = settings.stand_ins.data_dir
    with local_extra(
        "DATABASE_URL is unset, so sora-worker would start an embedded PostgreSQL",
        "set DATABASE_URL",
    ):
        from service.local.embedded import start_embedded_postgres

        url = start_embedded_postgres(data_dir)
    log.warning(
        "database.embedded",
        message="DATABASE_URL is unset: the rows live in an EMBEDDED PostgreSQL on this "
        "machine (a trial); set DATABASE_URL for a real one",
        data_dir=str(data_dir.resolve() / "pg"),
    )
    return url


def create_pool(settings: Settings, url: str, max_size: int) -> asyncpg.Pool:
    """A pool as the settings ask (no prepared statements behind a transaction pooler)."""
    return asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        statement_cache_size=100 if settings.database.prepared_statements else 0,
        reset=keep_session,
    )


@contextlib.asynccontextmanager
async def open_pool(settings: Settings, max_size: int = 1) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the settings' database for a short command; a database that cannot be
    reached or refuses the login is DatabaseUnreachable or DatabaseRefused."""
    url = await database_url(settings)
    with connecting(url):
        pool = await create_pool(settings, url, max_size)
    try:
        yield pool
    finally:
        await pool.close()


NOT_UP_YET = (
    OSError,
    TimeoutError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
"""What a database that is starting, restarting or full answers (and a host that does
not resolve, which may be a service not started yet); a wrong password or an unknown
database is a setting to fix instead."""


@contextlib.contextmanager
def connecting(url: str) -> Iterator[None]:
    """Say a failed connection in one line: where DATABASE_URL points and what to check."""
    try:
        yield
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as err:
        raise DatabaseRefused(
            f"the database at {dsn.where(url)} refused: {err.args[0] if err.args else err}; "
            "check the user, password and database name in DATABASE_URL"
        ) from None
    except NOT_UP_YET as err:
        raise DatabaseUnreachable(
            f"cannot reach the database at {dsn.where(url)}: {unreachable(err)}"
        ) from None


def unreachable(err: BaseException) -> str:
    """Why a connection failed, and which part of DATABASE_URL to check."""
    if isinstance(err, socket.gaierror):
        return f"{err.strerror or err}: no such host; check the host in DATABASE_URL"
    if isinstance(err, ConnectionRefusedError):
        return "nothing listens there; check the host and port in DATABASE_URL"
    if isinstance(err, TimeoutError):
        return "no answer in time; check the host and port in DATABASE_URL and the firewall"
    said = str(err) or type(err).__name__
    return f"{said}; check DATABASE_URL"


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


async def patiently(connect: Callable[[], Awaitable[asyncpg.Pool]], url: str) -> asyncpg.Pool:
    """Connect to ``url``, waiting (with capped backoff, said once and then every 30 s,
    naming where) while the database is not up yet."""
    pauses = Backoff(0.25, 2.0)
    waiting = Outage(log, down="database.waiting", back="database.ready")
    while True:
        try:
            with connecting(url):
                pool = await connect()
        except DatabaseUnreachable as err:
            waiting.failed(str(err), message="retrying until the database answers")
            await asyncio.sleep(pauses.next())
            continue
        waiting.over()
        return pool


async def migrate_and_say(conn: Conn) -> list[str]:
    """Apply pending migrations and log what was done, and what waits for the owner of a
    table (hosted Supabase's storage.objects: the dashboard's part, which doctor says)."""
    applied = await migrate(conn)
    log.info("database.migrated", applied=applied or "nothing to do")
    for waiting in await waiting_for_owner(conn):
        log.warning(
            "database.needs_owner",
            migration=waiting.name,
            refused=waiting.refusal,
            message="applied without the statements only the table's owner may run: the "
            "buckets exist, but the public's write policies on storage.objects were not "
            "dropped nor guarded; `sora-worker doctor` says what to run in the dashboard",
        )
    return applied
