"""SQL on asyncpg: claim, checkpoint, heartbeat, release. The table is the truth.

Every write that follows a claim is guarded by the stage it expects and by the lease
owner (``WHERE id = $1 AND stage = $2 AND locked_by = $3``): if another replica took
the row over (our lease lapsed), zero rows change and ``LeaseLost`` says so, instead
of two workers silently overwriting each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from service.machine import ACTIVE_STAGES, Job, Stage, Transition

ACTIVE = [stage.value for stage in ACTIVE_STAGES]

JOB_COLUMNS = """id, stage, attempts, prompt, image1_url, image2_url, model, size, seconds,
    provider, video_id, submit_key, submitted_at, progress, openai_expires_at"""

# One statement claims fresh rows and takes back rows whose owner died, so a crash
# needs no rescue job: a lapsed lease simply makes the row claimable again.
CLAIM = f"""
with due as (
    select id from public.videos
    where stage = any($4::text[])          -- matches videos_due_idx's predicate
      and next_attempt_at <= now()         -- due: new, retry time reached, or next poll
      and (locked_until is null or locked_until < now())  -- free, or its lease lapsed
      and id <> all($5::uuid[])            -- not one this worker is still running
    order by next_attempt_at               -- oldest debt first
    limit $2
    for update skip locked                 -- replicas never block on or share a row
)
update public.videos v
set locked_by = $1, locked_until = now() + $3::interval
from due
where v.id = due.id
returning {", ".join("v." + c.strip() for c in JOB_COLUMNS.split(","))}
"""

NEXT_DUE = """
select min(greatest(next_attempt_at, coalesce(locked_until, next_attempt_at))) - now()
from public.videos
where stage = any($1::text[])
"""


class LeaseLost(Exception):
    """The row is no longer ours (another worker claimed it, or its stage moved on)."""


def job_from_record(record: asyncpg.Record) -> Job:
    return Job(
        id=record["id"],
        stage=Stage(record["stage"]),
        attempts=record["attempts"],
        prompt=record["prompt"],
        image1_url=record["image1_url"],
        image2_url=record["image2_url"],
        model=record["model"],
        size=record["size"],
        seconds=record["seconds"],
        provider=record["provider"],
        video_id=record["video_id"],
        submit_key=record["submit_key"],
        submitted_at=record["submitted_at"],
        progress=record["progress"],
        expires_at=record["openai_expires_at"],
    )


class Repository:
    """All SQL the worker runs. One instance per pool."""

    def __init__(self, pool: asyncpg.Pool, worker_id: str, lease: timedelta) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.lease = lease

    async def claim(self, limit: int, exclude: Iterable[UUID] = ()) -> list[Job]:
        """Lease up to ``limit`` due rows; ``exclude``: rows whose task is still running here
        (re-queued under it), which must not get a second task."""
        records = await self.pool.fetch(
            CLAIM, self.worker_id, limit, self.lease, ACTIVE, list(exclude)
        )
        return [job_from_record(r) for r in records]

    async def checkpoint(self, job: Job, transition: Transition, *, keep_lease: bool) -> Job:
        """Write a transition; keep the lease only if this worker goes straight on."""
        assignments = [
            "stage = $4",
            "status = $5",
            "attempts = $6",
            "next_attempt_at = now() + $7::interval",
            "locked_by = case when $8 then locked_by end",
            "locked_until = case when $8 then now() + $9::interval end",
        ]
        values: list[Any] = [
            job.id,
            job.stage.value,
            self.worker_id,
            transition.stage.value,
            transition.status,
            transition.attempts,
            transition.delay,
            keep_lease,
            self.lease,
        ]
        for column, value in transition.changes.items():
            if column == "mark_submitted":
                assignments.append("submitted_at = now()")
            elif column == "mark_completed":
                assignments.append("completed_at = now()")
            else:
                values.append(value)
                assignments.append(f"{column} = ${len(values)}")
        record = await self.pool.fetchrow(
            f"""update public.videos set {", ".join(assignments)}
                where id = $1 and stage = $2 and locked_by = $3
                  and submit_key is not distinct from ${len(values) + 1}
                returning {JOB_COLUMNS}""",
            *values,
            job.submit_key,  # a re-queue mints a new key: a stale task's write must miss
        )
        if record is None:
            raise LeaseLost(f"row {job.id} is no longer ours in stage {job.stage}")
        return job_from_record(record)

    async def heartbeat(self, ids: Iterable[UUID]) -> int:
        """Extend the lease of rows still in flight; returns how many are still ours."""
        result = await self.pool.execute(
            """update public.videos set locked_until = now() + $3::interval
               where id = any($1::uuid[]) and locked_by = $2""",
            list(ids),
            self.worker_id,
            self.lease,
        )
        return int(result.split()[-1])

    async def release(self, ids: Iterable[UUID]) -> None:
        """Give rows back at once (shutdown), so another worker need not wait the lease out."""
        await self.pool.execute(
            """update public.videos set locked_by = null, locked_until = null
               where id = any($1::uuid[]) and locked_by = $2""",
            list(ids),
            self.worker_id,
        )

    async def next_due_in(self) -> timedelta | None:
        """How long until some active row can be claimed (None: no active rows)."""
        value: timedelta | None = await self.pool.fetchval(NEXT_DUE, ACTIVE)
        return value

    async def recorded_video_ids(self, candidates: Iterable[str]) -> frozenset[str]:
        """Which of these provider ids some row already holds (never adopt one twice)."""
        rows = await self.pool.fetch(
            "select video_id from public.videos where video_id = any($1::text[])", list(candidates)
        )
        return frozenset(r["video_id"] for r in rows)

    async def identical_in_doubt(
        self, row_id: UUID, prompt: str, model: str, size: str, seconds: str
    ) -> UUID | None:
        """Another row whose identical request is being submitted (or is in doubt)."""
        found: UUID | None = await self.pool.fetchval(
            """select id from public.videos
               where stage = 'submitting' and submit_key is not null and id <> $1
                 and md5(prompt) = md5($2) and model = $3 and size = $4 and seconds = $5
               limit 1""",
            row_id,
            prompt,
            model,
            size,
            seconds,
        )
        return found

    async def defer(self, job: Job, delay: timedelta) -> None:
        """Give a row back untouched, to be looked at again after ``delay``."""
        await self.pool.execute(
            """update public.videos
               set locked_by = null, locked_until = null, next_attempt_at = now() + $3::interval
               where id = $1 and locked_by = $2""",
            job.id,
            self.worker_id,
            delay,
        )

    async def insert_request(
        self,
        prompt: str,
        image1_url: str | None = None,
        image2_url: str | None = None,
        *,
        model: str | None = None,
        size: str | None = None,
        seconds: str | None = None,
    ) -> UUID:
        row_id: UUID = await self.pool.fetchval(
            """insert into public.videos (prompt, image1_url, image2_url, model, size, seconds)
               values ($1, $2, $3, $4, $5, $6) returning id""",
            prompt,
            image1_url,
            image2_url,
            model,
            size,
            seconds,
        )
        return row_id

    async def recent(self, limit: int, status: str | None = None) -> list[dict[str, Any]]:
        """The newest rows, optionally of one status (for ``sora-worker list``)."""
        rows = await self.pool.fetch(
            """select id, status, stage, progress, attempts, created_at, video_url, error
               from public.videos where $2::text is null or status = $2
               order by created_at desc limit $1""",
            limit,
            status,
        )
        return [dict(r) for r in rows]

    async def stats(self) -> dict[str, Any]:
        """Rows per stage and how long the oldest unfinished one has waited."""
        counts = await self.pool.fetch("select stage, count(*) as n from public.videos group by 1")
        oldest = await self.pool.fetchval(
            "select extract(epoch from now() - min(created_at)) from public.videos "
            "where stage = any($1::text[])",
            ACTIVE,
        )
        return {
            "stages": {r["stage"]: r["n"] for r in counts},
            "oldest_unfinished_seconds": None if oldest is None else round(float(oldest), 1),
        }

    async def fetch_row(self, row_id: UUID) -> dict[str, Any] | None:
        record = await self.pool.fetchrow("select * from public.videos where id = $1", row_id)
        return None if record is None else dict(record)


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row with UUIDs and times as strings, for printing."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, UUID):
            out[key] = str(value)
        elif isinstance(value, datetime):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out
