"""Which push sources wake the claim loop (the sweep always runs): ``SORA_WAKEUPS``.

Why a choice at all: LISTEN needs a session that lives (a direct connection or a
session pooler); behind a transaction pooler (Supavisor :6543, PgBouncer) a LISTEN is
accepted and then never hears anything. Supabase Realtime works from anywhere but
needs a Supabase project. ``auto`` takes both when both work, else what works; the
probe is the listener's own self-check done once (NOTIFY ourselves, expect the echo).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Literal

import asyncpg
import structlog

from service.wakeups.listen import CHANNEL, SELF_CHECK_PREFIX

log = structlog.get_logger("service.wakeups")

Mode = Literal["auto", "listen", "realtime", "both", "none"]


@dataclass(frozen=True)
class Sources:
    listen: bool
    realtime: bool


def choose(mode: Mode, *, supabase: bool, listen_allowed: bool, listen_works: bool) -> Sources:
    """The sources to run. ``listen_allowed`` is false under ``run --no-listen``, which
    always wins: the operator knows the connection is a transaction pooler."""
    match mode:
        case "none":
            return Sources(listen=False, realtime=False)
        case "listen":
            return Sources(listen=listen_allowed, realtime=False)
        case "realtime":
            return Sources(listen=False, realtime=supabase)
        case "both":
            return Sources(listen=listen_allowed, realtime=supabase)
        case "auto":
            return Sources(listen=listen_allowed and listen_works, realtime=supabase)


async def listen_works(dsn: str, *, within: float = 3.0) -> bool:
    """Whether a LISTEN on this connection string hears its own NOTIFY within ``within`` s."""
    token = SELF_CHECK_PREFIX + uuid.uuid4().hex
    heard = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload == token:
            heard.set()

    try:
        async with asyncio.timeout(within):
            conn: asyncpg.Connection = await asyncpg.connect(dsn, statement_cache_size=0)
            try:
                await conn.add_listener(CHANNEL, on_notify)
                await conn.execute("select pg_notify($1, $2)", CHANNEL, token)
                await heard.wait()
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        log.warning(
            "listen.unavailable",
            error=str(err) or type(err).__name__,
            message="LISTEN heard nothing on this connection (a transaction pooler?); "
            "push wake-ups come from Realtime if SUPABASE_URL is set, else the sweep",
        )
        return False
    return True
