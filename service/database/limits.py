"""The request rate every replica shares, kept in PostgreSQL (sql/0015).

A host limits a key, not a worker: N replicas each keeping under 50 a minute send up to
50 x N. So before each create and each poll a replica takes a turn here
(``sora_worker.take_turn``: one row per limit, turns one request spacing apart, handed
out under the row's lock by the database's clock), and a host's 429 holds every replica
off (``sora_worker.hold_off``). Which limit a call falls under is
``service.core.rates``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from service.core.rates import HOLD, UNLIMITED, Call, RateRules
from service.database.errors import bounded, driver_errors
from service.database.port import RateState

TAKE = "select granted, wait from sora_worker.take_turn($1, $2, $3, $4)"
HELD = """
select greatest(extract(epoch from blocked_until - clock_timestamp()), 0)::float8
from sora_worker.rate_limits where key = $1
"""
"""For a call without a known limit: only whether a 429 holds every replica off (a plain
read, so that polls of many replicas never queue on one row's lock)."""
HOLD_OFF = "select sora_worker.hold_off($1, $2, $3)"
STATES = """
select key, per_minute, granted, deferred, throttled,
       greatest(extract(epoch from blocked_until - clock_timestamp()), 0)::float8 as blocked
from sora_worker.rate_limits order by key
"""


@dataclass(frozen=True)
class Turn:
    """A replica's answer to "may I call now?": ``granted`` after waiting ``wait``
    (reserved), or not granted and to ask again after ``wait``."""

    granted: bool
    wait: timedelta


class RateLimits:
    """Turns at the shared limits that ``rules`` names, on the worker's pool."""

    def __init__(self, pool: asyncpg.Pool, rules: RateRules, hold: timedelta = HOLD) -> None:
        self.pool = pool
        self.rules = rules
        self.hold = hold

    async def take(self, provider: str, model: str, call: Call) -> Turn:
        """A turn for ``call`` (at once when no limit is known, unless a 429 holds
        every replica off)."""
        rule = self.rules.rule(provider, model, call)
        if rule.per_minute >= UNLIMITED:
            with driver_errors(f"reading {rule.key}"):
                held = await self.pool.fetchval(HELD, rule.key)
            wait = timedelta(seconds=held or 0.0)
            return Turn(wait <= self.hold, wait)
        with driver_errors(f"taking a turn at {rule.key}"):
            record = await self.pool.fetchrow(
                TAKE,
                rule.key,
                rule.per_minute,
                rule.spacing.total_seconds(),
                self.hold.total_seconds(),
            )
        assert record is not None
        return Turn(record["granted"], timedelta(seconds=max(record["wait"], 0.0)))

    async def hold_off(self, provider: str, model: str, call: Call, pause: timedelta) -> None:
        """The host answered 429 and asked for ``pause``: every replica waits it out."""
        rule = self.rules.rule(provider, model, call)
        with driver_errors(f"holding off {rule.key}"):
            await self.pool.execute(HOLD_OFF, rule.key, rule.per_minute, pause.total_seconds())


async def states(pool: asyncpg.Pool, within: float) -> tuple[RateState, ...]:
    """Every shared limit, for a metrics scrape."""
    rows: list[asyncpg.Record] = await bounded(
        pool.fetch(STATES), within, "reading the shared rate limits"
    )
    return tuple(
        RateState(
            r["key"], r["per_minute"], r["granted"], r["deferred"], r["throttled"], r["blocked"]
        )
        for r in rows
    )
