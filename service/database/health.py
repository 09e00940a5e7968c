"""The reads behind ``/readyz`` and ``/metrics``: bounded in time, no locks taken.

A frozen database must not hang a probe or a scrape, so each read gives up after its
``within`` seconds (``bounded``) and says so as ``DatabaseUnavailable``.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import asyncpg

from service.core.job import Stage
from service.database import costs, limits
from service.database.errors import RepositoryError, bounded
from service.database.port import TableSnapshot
from service.database.rows import ACTIVE_SQL


class Health:
    """Readiness and the table's gauges, on the worker's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self, within: float) -> None:
        """Raise DatabaseUnavailable unless the database answers within ``within`` s
        (readiness: a frozen connection must not hang the probe)."""
        await bounded(self.pool.fetchval("select 1"), within, "asking the database")

    async def active_rows(self, within: float) -> TableSnapshot:
        """Rows per unfinished stage, the oldest one's age and the rows in doubt: read
        through ``videos_due_idx``, so the cost follows the rows still owed work, not
        the table's size. DatabaseUnavailable after ``within`` s (a frozen database
        must not hang a scrape)."""
        rows: list[asyncpg.Record] = await bounded(
            self.pool.fetch(
                f"""select stage, count(*) as n,
                          extract(epoch from now() - min(created_at))::float8 as oldest,
                          count(*) filter (where submit_key is not null) as keyed
                   from public.videos where stage in {ACTIVE_SQL}  -- videos_due_idx
                   group by stage"""
            ),
            within,
            "reading the unfinished rows for metrics",
        )
        ages = [r["oldest"] for r in rows if r["oldest"] is not None]
        snapshot = TableSnapshot(
            rows_by_stage={r["stage"]: r["n"] for r in rows},
            oldest_unfinished_seconds=max(ages) if ages else None,
            in_doubt=sum(r["keyed"] for r in rows if r["stage"] == Stage.SUBMITTING.value),
        )
        with contextlib.suppress(RepositoryError):  # else the rates alone go missing
            snapshot = replace(snapshot, rates=await limits.states(self.pool, within))
        try:
            money = await costs.spend(self.pool, within)
        except RepositoryError:
            return snapshot  # the table's gauges still count; the money ones go missing
        return replace(
            snapshot,
            spent_today_usd=money.spent_usd,
            daily_budget_usd=money.budget_usd,
            abandoned_unsettled=money.abandoned_unsettled,
            refusals=money.refusals,
        )

    async def finished_rows(self, within: float) -> dict[str, int]:
        """Completed and failed rows: a pass over the table (184 ms at a million rows),
        so read seldom and in the background (``service.web.gauges``)."""
        rows: list[asyncpg.Record] = await bounded(
            self.pool.fetch(
                "select stage, count(*) as n from public.videos "
                "where stage in ('completed', 'failed') group by stage"
            ),
            within,
            "counting finished rows for metrics",
        )
        return {r["stage"]: r["n"] for r in rows}
