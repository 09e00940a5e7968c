"""What the dashboard reads (``sora-worker dashboard``): the queue at a glance, the newest
rows, one row with its history. Reads only, no locks taken; each is bounded in time, so
a frozen database makes the page say "unavailable" instead of hanging it.

The dashboard is the operator's (the table's owner, like every ``sora-worker`` command):
it reads ``public.videos`` itself, prompts and errors included, never the gallery view.
Costs, measured at 10,000 rows: the overview is one pass over the table (a few
milliseconds; ``bench/dashboard.py``), the newest rows come through
``videos_created_at_idx``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from service.core.job import Stage
from service.database import costs
from service.database.errors import RepositoryError, bounded
from service.database.rows import ACTIVE_SQL

HOURS = 24
"""Completions per hour are shown for this many hours, the current one last."""

VIEW_COLUMNS = """id, prompt, status, stage, progress, provider, model, size, seconds,
    attempts, created_at, submitted_at, completed_at, updated_at, next_attempt_at,
    video_id, submit_key is not null as keyed, openai_expires_at, locked_by,
    coalesce(locked_until > now(), false) as leased, locked_until,
    error, error_kind, video_url, poster_url, thumbnail_url, rendition_url,
    image1_url, image2_url, duration_seconds, width, height, video_bytes, video_sha256,
    pruned_at"""
"""The columns a row's card and its page show. Not ``openai_url`` (the provider's own
link to the file) nor anything of the cost controls' keys: nothing a page needs."""

OVERVIEW = f"""
select now() as now,
    (select coalesce(jsonb_object_agg(stage, n), '{{}}')
       from (select stage, count(*) as n from public.videos group by stage) s) as stages,
    (select min(created_at) from public.videos where stage in {ACTIVE_SQL}) as oldest,
    (select count(*) from public.videos
      where stage = 'submitting' and submit_key is not null) as in_doubt,
    (select coalesce(jsonb_object_agg(kind, n), '{{}}')
       from (select coalesce(error_kind, '') as kind, count(*) as n from public.videos
              where stage = 'failed' group by 1) k) as failed,
    (select coalesce(jsonb_object_agg(to_char(hour, 'YYYY-MM-DD"T"HH24'), n), '{{}}')
       from (select date_trunc('hour', completed_at) as hour, count(*) as n
               from public.videos
              where stage = 'completed'
                and completed_at >= date_trunc('hour', now()) - interval '{HOURS - 1} hours'
              group by 1) h) as per_hour
"""
"""One statement, so the numbers on the page are of one moment. ``error_kind`` ''
is a failed row without one (cancelled by the operator, or failed before sql/0006)."""

RECENT = f"select {VIEW_COLUMNS} from public.videos order by created_at desc limit $1"

ONE = f"select {VIEW_COLUMNS} from public.videos where id = $1"

ABANDONED = """
select video_id, provider, stage, how, abandoned_at, settled_at, outcome
from sora_worker.abandoned_jobs where row_id = $1 order by abandoned_at
"""


@dataclass(frozen=True)
class RowView:
    """A row as the dashboard shows it."""

    id: UUID
    prompt: str | None
    status: str
    stage: str
    progress: int
    provider: str | None
    model: str | None
    size: str | None
    seconds: str | None
    attempts: int
    created_at: datetime
    submitted_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    next_attempt_at: datetime
    video_id: str | None
    keyed: bool
    """An intent is recorded (``submit_key``): while submitting, the outcome is unknown."""
    openai_expires_at: datetime | None
    locked_by: str | None
    leased: bool
    """A worker is in the middle of a step on the row right now."""
    locked_until: datetime | None
    error: str | None
    error_kind: str | None
    video_url: str | None
    poster_url: str | None
    thumbnail_url: str | None
    rendition_url: str | None
    image1_url: str | None
    image2_url: str | None
    duration_seconds: float | None
    width: int | None
    height: int | None
    video_bytes: int | None
    video_sha256: str | None
    pruned_at: datetime | None

    @classmethod
    def of(cls, record: asyncpg.Record) -> RowView:
        return cls(**dict(record))

    @property
    def version(self) -> str:
        """Changes whenever the row does (every write touches ``updated_at``)."""
        return f"{self.updated_at.timestamp():.6f}"

    @property
    def finished_at(self) -> datetime | None:
        """When it completed (archived) or failed."""
        if self.stage == Stage.COMPLETED.value:
            return self.completed_at
        return self.updated_at if self.stage == Stage.FAILED.value else None


@dataclass(frozen=True)
class AbandonedJob:
    """A provider job the row left running when it was re-queued (sql/0010)."""

    video_id: str | None
    provider: str | None
    stage: str
    how: str
    abandoned_at: datetime
    settled_at: datetime | None
    outcome: str | None


@dataclass(frozen=True)
class Overview:
    """The queue at a glance, as of ``now`` (the database's clock)."""

    now: datetime
    by_stage: dict[str, int]
    oldest_unfinished: datetime | None
    in_doubt: int
    failed_by_kind: dict[str, int]
    """Failed rows per ``error_kind``; '' for those without one."""
    per_hour: list[tuple[datetime, int]]
    """Completions in each of the last ``HOURS`` hours, oldest first."""
    spent_today_usd: float | None = None
    budget_usd: float | None = None

    @property
    def total(self) -> int:
        return sum(self.by_stage.values())


class DashboardReads:
    """The dashboard's statements on its pool; each gives up after ``within`` seconds
    (``DatabaseUnavailable``)."""

    def __init__(self, pool: asyncpg.Pool, within: float = 5.0) -> None:
        self.pool = pool
        self.within = within

    async def queue(self, limit: int) -> tuple[Overview, list[RowView]]:
        """The overview and the newest ``limit`` rows, read in one snapshot of the table
        (a row inserted meanwhile is in both or in neither)."""
        return await bounded(self._queue(limit), self.within, "reading the queue")

    async def _queue(self, limit: int) -> tuple[Overview, list[RowView]]:
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            record = await conn.fetchrow(OVERVIEW)
            rows = await conn.fetch(RECENT, limit)
        assert record is not None
        try:
            money = await costs.spend(self.pool, self.within)
        except RepositoryError:
            spent = budget = None  # the queue still shows; the money goes missing
        else:
            spent, budget = money.spent_usd, money.budget_usd
        return overview_of(record, spent, budget), [RowView.of(r) for r in rows]

    async def row(self, row_id: UUID) -> tuple[RowView, list[AbandonedJob]] | None:
        """One row and the jobs it left running, or None if there is no such row."""
        record = await bounded(self.pool.fetchrow(ONE, row_id), self.within, "reading a row")
        if record is None:
            return None
        jobs = await bounded(self.pool.fetch(ABANDONED, row_id), self.within, "reading jobs")
        return RowView.of(record), [AbandonedJob(**dict(j)) for j in jobs]


def overview_of(record: asyncpg.Record, spent: float | None, budget: float | None) -> Overview:
    now: datetime = record["now"]
    counts = json.loads(record["per_hour"])
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    hours = [first + timedelta(hours=n) for n in range(HOURS)]
    stages = json.loads(record["stages"])
    return Overview(
        now=now,
        by_stage={stage.value: int(stages.get(stage.value, 0)) for stage in Stage},
        oldest_unfinished=record["oldest"],
        in_doubt=record["in_doubt"],
        failed_by_kind={k: int(v) for k, v in sorted(json.loads(record["failed"]).items())},
        per_hour=[(h, int(counts.get(h.strftime("%Y-%m-%dT%H"), 0))) for h in hours],
        spent_today_usd=spent,
        budget_usd=budget,
    )
