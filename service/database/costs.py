"""The cost controls' statements: what the worker tells the database at start, what it
asks right before a submission, and what a metrics scrape reads (sql/0011).

The rules themselves are SQL functions (``sora_worker.refusal``, ``estimated_usd``,
``spent_today``) and triggers (the insert's checks, the charge of each submission), so
the insert an app makes and the worker's last look say the same thing from the same
tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service.core.costs import Admission, CostLimits
from service.database.errors import bounded, driver_errors

WRITE_LOCK = 0x53_4F_52_4C  # 'SORL': replicas starting together write one after another

WRITE_SETTINGS = """
update sora_worker.settings set
    default_provider = $1, default_model = $2, default_size = $3, default_seconds = $4,
    user_daily_videos = $5, user_daily_seconds = $6, daily_budget_usd = $7,
    unknown_usd_per_second = $8, public_prompts = $9, written_by = $10, written_at = now()
"""

WRITE_ALLOWED = """
insert into sora_worker.allowed_models (provider, model, sizes, seconds, usd_per_second)
values ($1, $2, $3, $4, $5)
"""

ADMIT = """
select sora_worker.refusal($1, $2, $3, $4) as refusal,
       sora_worker.spent_today()::float8 as spent,
       sora_worker.estimated_usd($1, $2, $4)::float8 as cost,
       (select daily_budget_usd from sora_worker.settings)::float8 as budget,
       sora_worker.spent_today() + sora_worker.estimated_usd($1, $2, $4)
           > (select daily_budget_usd from sora_worker.settings) as over_budget
"""
"""The worker's last look before an intent: the same allowlist as the insert's, and the
day's spend so far."""

SPEND = """
select sora_worker.spent_today()::float8 as spent,
       (select daily_budget_usd from sora_worker.settings)::float8 as budget,
       (select count(*) from sora_worker.abandoned_jobs where settled_at is null) as abandoned,
       (select array_agg(substr(sequencename, 9) order by sequencename) from pg_catalog.pg_sequences
        where schemaname = 'sora_worker' and sequencename like 'refused\\_%') as reasons,
       (select array_agg(coalesce(last_value, 0) order by sequencename) from pg_catalog.pg_sequences
        where schemaname = 'sora_worker' and sequencename like 'refused\\_%') as refused
"""
"""Refused inserts are counted by sequences (sql/0010, 0011) named ``refused_<reason>``:
a refused insert rolls back everything else it wrote, but never a nextval."""


@dataclass(frozen=True)
class Spend:
    """The day's money for a metrics scrape."""

    spent_usd: float
    budget_usd: float
    abandoned_unsettled: int
    refusals: Mapping[str, int] = field(default_factory=dict)


def exact(amount: float) -> Decimal:
    """Dollars as written (1.2 stays 1.2 in a numeric column, not 1.19999...)."""
    return Decimal(str(amount))


async def write_limits(
    conn: asyncpg.Connection | PoolConnectionProxy, limits: CostLimits, written_by: str
) -> None:
    """Replace what the database knows of the limits with ``limits`` (at every start)."""
    with driver_errors("writing the cost limits"):
        async with conn.transaction():
            await conn.execute("select pg_advisory_xact_lock($1)", WRITE_LOCK)
            await conn.execute(
                WRITE_SETTINGS,
                limits.default_provider,
                limits.default_model,
                limits.default_size,
                limits.default_seconds,
                limits.user_daily_videos,
                limits.user_daily_seconds,
                exact(limits.daily_budget_usd),
                exact(limits.unknown_usd_per_second),
                limits.public_prompts,
                written_by,
            )
            await conn.execute("delete from sora_worker.allowed_models")
            await conn.executemany(
                WRITE_ALLOWED,
                [
                    (
                        m.provider,
                        m.model,
                        None if m.sizes is None else sorted(m.sizes),
                        None if m.seconds is None else sorted(m.seconds, key=int),
                        None if m.usd_per_second is None else exact(m.usd_per_second),
                    )
                    for m in limits.allowed
                ],
            )


async def admit(
    pool: asyncpg.Pool, provider: str, model: str, size: str, seconds: str
) -> Admission:
    with driver_errors("asking whether the request may be made"):
        record = await pool.fetchrow(ADMIT, provider, model, size, seconds)
    assert record is not None
    return Admission(
        record["refusal"], record["spent"], record["cost"], record["budget"], record["over_budget"]
    )


async def spend(pool: asyncpg.Pool, within: float) -> Spend:
    """Today's estimated spend, the budget, jobs still to cancel and refusals so far."""
    record = await bounded(pool.fetchrow(SPEND), within, "reading today's spend")
    assert record is not None
    reasons, refused = record["reasons"] or [], record["refused"] or []
    return Spend(
        record["spent"],
        record["budget"],
        record["abandoned"],
        dict(zip(reasons, refused, strict=True)),
    )
