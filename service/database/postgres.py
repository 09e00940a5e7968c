"""The database port's PostgreSQL adapter: every statement the worker's loop runs.

The machine's typed changes are mapped to columns here, with fixed statements; the
``Repository`` Protocol it implements is in ``service.database.port``.

Every write that follows a claim is guarded by the stage it expects, the lease owner and
the idempotency key (``WHERE id = $1 AND stage = $2 AND locked_by = $3 AND submit_key IS
NOT DISTINCT FROM $4``): if another replica took the row over (our lease lapsed) or a
person re-queued it, zero rows change and ``LeaseLost`` says so, instead of two workers
silently overwriting each other.

Time: every statement that hands a row to the machine also returns the database's
``now()`` (``Job.as_of``), so deadlines are compared on one clock, the one that wrote
``submitted_at`` and the leases, whatever the worker's own clock says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg

from service.core.costs import Admission
from service.core.events import (
    Change,
    ForgetIntent,
    RecordArchive,
    RecordDownload,
    RecordIntent,
    RecordJob,
    RecordMedia,
    RecordProgress,
)
from service.core.job import Job, RowId, Stage, SubmitKey
from service.core.likeness import Twin
from service.core.machine import Transition
from service.core.text import one_line
from service.database import costs, durations
from service.database.errors import LeaseLost, driver_errors
from service.database.port import AbandonedJob
from service.database.rows import ACTIVE_SQL, JOB_COLUMNS, ROW_COLUMNS, WAKEABLE, job_from_record

# The claim's commit need not wait for the disk (set_config(..., true): this statement's
# transaction only). A claim only leases; nothing is sent on its word. The write that
# precedes any side effect (the intent, a checkpoint) commits durably, is guarded by the
# lease (locked_by), and its flush carries every earlier commit's WAL with it: after a
# crash either both are on disk, or the claim is gone and that write misses (LeaseLost).
# The flush it saves is what a new request waits for twice (claim, then intent).
_NO_FLUSH = "(select set_config('synchronous_commit', 'off', true)) as no_flush"

_FRESH = """
    select id from public.videos
    where stage = 'pending'                -- videos_fresh_idx: requests go first, so a new
      and next_attempt_at <= now()         -- row never queues behind thousands of polls
      and (locked_until is null or locked_until < now())
      and id <> all($4::uuid[])
    order by next_attempt_at
    limit $2
    for update skip locked"""


def _leased(claimed: str) -> str:
    """The rows ``claimed`` (a ``from`` item aliased ``claimed``) leased to this worker."""
    return f"""
update public.videos v
set locked_by = $1, locked_until = now() + $3::interval,
    next_attempt_at = now() + $3::interval  -- due again when the lease ends (NEXT_DUE)
from {claimed}, {_NO_FLUSH}
where v.id = claimed.id
returning {", ".join("v." + c for c in ROW_COLUMNS)}, now() as as_of
"""


CLAIM = f"""
with fresh as ({_FRESH}
), due as (
    select id from public.videos
    where stage in {ACTIVE_SQL}  -- videos_due_idx's predicate
      and stage <> 'pending'               -- taken above
      and next_attempt_at <= now()         -- due: retry time reached, or next poll
      and (locked_until is null or locked_until < now())  -- free, or its lease lapsed
      and id <> all($4::uuid[])            -- not one this worker is still running
    order by next_attempt_at               -- oldest debt first
    limit $2 - (select count(*) from fresh)
    for update skip locked                 -- replicas never block on or share a row
){_leased("(select id from fresh union all select id from due) as claimed")}"""

# New requests alone, for the dispatch lane: a row just announced is claimed without
# reading or leasing the rows due for polls beside it.
CLAIM_FRESH = f"""
with fresh as ({_FRESH}
){_leased("fresh as claimed")}"""

# The first entry of videos_due_idx: next_attempt_at is when any worker may next claim
# a row (a claim and a heartbeat set it to the lease's end), so no row needs reading
# beyond the first. (Before 0007 this took the max with locked_until over every active
# row: a scan that cost 23 ms at 100k active rows.)
NEXT_DUE = f"""
select next_attempt_at - now() from public.videos
where stage in {ACTIVE_SQL}  -- videos_due_idx
order by next_attempt_at
limit 1
"""

ABANDONED_COLUMNS = """a.id, a.row_id, a.provider, a.video_id, a.submit_key, a.stage, a.how,
    a.tries, sora_worker.estimated_usd(a.provider, a.model, a.seconds)::float8 as usd"""

# Abandoned jobs (sql/0010) due for a cancel, taken by one replica at a time: each is not
# due again for five minutes, so a cancel that failed is tried again then.
TAKE_ABANDONED = f"""
update sora_worker.abandoned_jobs a
set tries = a.tries + 1, next_try_at = now() + interval '5 minutes'
from (select id from sora_worker.abandoned_jobs
      where settled_at is null and next_try_at <= now()   -- abandoned_jobs_due_idx
      order by next_try_at limit $1
      for update skip locked) as due
where a.id = due.id
returning {ABANDONED_COLUMNS}
"""

# A job this worker's create made for a row that was re-queued or deleted meanwhile (its
# checkpoint missed). The re-queue wrote down the intent without a job id: name the job
# there; else write it down. Unless some row holds the job after all.
RECORD_ABANDONED = f"""
with free as (
    select 1 where not exists (
        select 1 from public.videos v where v.video_id is not null
          and public.video_stable_id(v.video_id) = public.video_stable_id($3))
), named as (
    update sora_worker.abandoned_jobs
    set video_id = $3, provider = $2, tries = 1, next_try_at = now() + interval '5 minutes',
        settled_at = null, outcome = null
    where row_id = $1 and submit_key = $9 and video_id is null and exists (select 1 from free)
    returning *
), added as (
    insert into sora_worker.abandoned_jobs
        (row_id, provider, video_id, submit_key, stage, model, size, seconds, submitted_at,
         how, tries, next_try_at)
    select $1, $2, $3, $9, 'submitting', $4, $5, $6, $7, $8, 1, now() + interval '5 minutes'
    from free where not exists (select 1 from named)
    returning *
)
select {ABANDONED_COLUMNS} from (select * from named union all select * from added) as a
"""


def abandoned_from_record(record: asyncpg.Record) -> AbandonedJob:
    key = record["submit_key"]
    return AbandonedJob(
        id=record["id"],
        row_id=RowId(record["row_id"]),
        provider=record["provider"],
        video_id=record["video_id"],
        submit_key=None if key is None else SubmitKey(key),
        stage=record["stage"],
        how=record["how"],
        tries=record["tries"],
        estimated_usd=record["usd"],
    )


# The checkpoint: one fixed statement per kind of change. $1-$4 guard the row, $5-$12
# are what every transition writes, $13... the change's own columns.
_GUARD = "where id = $1 and stage = $2 and locked_by = $3 and submit_key is not distinct from $4"
_COMMON = """stage = $5, status = $6, attempts = $7,
    next_attempt_at = now() + case when $9 then $10::interval else $8::interval end,
    locked_by = case when $9 then locked_by end,
    locked_until = case when $9 then now() + $10::interval end,
    error = $11, error_kind = $12"""


def _checkpoint_sql(change_columns: str = "", *, flush: bool = True) -> str:
    extra = f",\n    {change_columns}" if change_columns else ""
    source = "" if flush else f"\nfrom {_NO_FLUSH}"
    return f"update public.videos set {_COMMON}{extra}{source}\n{_GUARD}\nreturning {JOB_COLUMNS}"


# progress_at: when the progress was first seen at its value (the job's recent pace).
_PROGRESS = "progress = $13, progress_at = case when progress = $13 then progress_at else now() end"

CHECKPOINT: dict[type[Change] | None, str] = {
    None: _checkpoint_sql(),
    RecordIntent: _checkpoint_sql(
        "submit_key = $13, provider = $14, model = $15, size = $16, seconds = $17, "
        "reference_print = $18, photos_sent = $19, submitted_at = now(), generated_at = null"
    ),
    ForgetIntent: _checkpoint_sql("submit_key = null"),
    RecordJob: _checkpoint_sql("video_id = $13, progress = $14, progress_at = now()"),
    RecordProgress: _checkpoint_sql(_PROGRESS),
    # generated_at: the provider's word on when it finished, kept within what the row
    # knows (after the submission, not in the future), else the moment it was seen.
    RecordDownload: _checkpoint_sql(
        "openai_url = $13, openai_expires_at = $14, progress = 100, "
        "generated_at = least(greatest(coalesce($15, now()), submitted_at), now())"
    ),
    # The video alone, the moment it is stored: nothing later can lose track of it.
    RecordArchive: _checkpoint_sql(
        "video_url = $13, video_bytes = $14, video_sha256 = $15, progress = 100, "
        "completed_at = now()"
    ),
    # What could not be made (null) leaves what the row holds (a re-archive's media
    # land on the same keys, so an older poster stays valid).
    RecordMedia: _checkpoint_sql(
        "thumbnail_url = coalesce($13, thumbnail_url), "
        "duration_seconds = coalesce($14, duration_seconds), width = coalesce($15, width), "
        "height = coalesce($16, height), poster_url = coalesce($17, poster_url), "
        "rendition_url = coalesce($18, rendition_url)"
    ),
}


WAITING: dict[type[Change] | None, str] = {
    None: _checkpoint_sql(flush=False),
    RecordProgress: _checkpoint_sql(_PROGRESS, flush=False),
}
"""A polled row that goes on waiting ("still generating, next poll at"), written without
waiting for the disk. What it records followed a read (the poll), never a paid effect:
lost in a crash, the row is as it was before the poll, leased until its lease lapses,
then polled again. Thousands of rows polled make this most of the worker's commits,
and their flushes were what a new request's claim and intent queued behind."""


def _statement(job: Job, transition: Transition, keep_lease: bool) -> str:
    change = transition.change
    kind = type(change) if change is not None else None
    waiting = job.stage is Stage.GENERATING and transition.stage is Stage.GENERATING
    if waiting and not keep_lease and kind in WAITING:
        return WAITING[kind]
    return CHECKPOINT[kind]


def _change_values(change: Change | None) -> list[Any]:
    """The parameters ``CHECKPOINT[type(change)]`` takes after the common ones."""
    match change:
        case RecordIntent():
            return [
                change.submit_key,
                change.provider,
                change.model,
                change.size,
                change.seconds,
                change.reference_print,
                change.photos_sent,
            ]
        case RecordJob():
            return [change.video_id, change.progress]
        case RecordProgress():
            return [change.progress]
        case RecordDownload():
            return [change.content_url, change.expires_at, change.finished_at]
        case RecordArchive():
            return [change.video_url, change.video_bytes, change.video_sha256]
        case RecordMedia():
            media = change.media
            return [
                change.thumbnail_url,
                media.duration_seconds,
                media.width,
                media.height,
                media.poster_url,
                media.rendition_url,
            ]
        case ForgetIntent() | None:
            return []


class PostgresRepository:
    """``Repository`` on an asyncpg pool. One instance per pool."""

    def __init__(self, pool: asyncpg.Pool, worker_id: str, lease: timedelta) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.lease = lease

    async def claim(
        self, limit: int, exclude: Iterable[RowId] = (), *, fresh_only: bool = False
    ) -> list[Job]:
        statement = CLAIM_FRESH if fresh_only else CLAIM
        with driver_errors("claiming rows"):
            records = await self.pool.fetch(
                statement, self.worker_id, limit, self.lease, list(exclude)
            )
        return [job_from_record(r) for r in records]

    async def checkpoint(self, job: Job, transition: Transition, *, keep_lease: bool) -> Job:
        change = transition.change
        with driver_errors(f"checkpointing row {job.id}"):
            record = await self.pool.fetchrow(
                _statement(job, transition, keep_lease),
                job.id,
                job.stage.value,
                self.worker_id,
                job.submit_key,  # a re-queue mints a new key: a stale task's write must miss
                transition.stage.value,
                transition.stage.status,
                transition.attempts,
                transition.delay,
                keep_lease,
                self.lease,
                None if transition.error is None else one_line(transition.error),
                transition.error_kind,
                *_change_values(change),
            )
        if record is None:
            raise LeaseLost(f"row {job.id} is no longer ours in stage {job.stage}")
        return job_from_record(record)

    async def heartbeat(self, ids: Iterable[RowId]) -> frozenset[RowId]:
        with driver_errors("extending leases"):
            rows = await self.pool.fetch(
                """update public.videos
                   set locked_until = now() + $3::interval,
                       next_attempt_at = now() + $3::interval
                   where id = any($1::uuid[]) and locked_by = $2
                   returning id""",
                list(ids),
                self.worker_id,
                self.lease,
            )
        return frozenset(RowId(r["id"]) for r in rows)

    async def release(self, ids: Iterable[RowId]) -> None:
        with driver_errors("releasing rows"):
            await self.pool.execute(
                """update public.videos
                   set locked_by = null, locked_until = null, next_attempt_at = now()
                   where id = any($1::uuid[]) and locked_by = $2""",
                list(ids),
                self.worker_id,
            )

    async def defer(self, job: Job, delay: timedelta) -> None:
        with driver_errors(f"deferring row {job.id}"):
            await self.pool.execute(
                """update public.videos
                   set locked_by = null, locked_until = null,
                       next_attempt_at = now() + $3::interval
                   where id = $1 and locked_by = $2""",
                job.id,
                self.worker_id,
                delay,
            )

    async def withdraw_intent(self, row_id: RowId, submit_key: SubmitKey) -> None:
        with driver_errors(f"withdrawing the intent of row {row_id}"):
            await self.pool.execute(
                """update public.videos
                   set submit_key = null, locked_by = null, locked_until = null,
                       next_attempt_at = now()
                   where id = $1 and locked_by = $3
                     and (submit_key = $2 or submit_key is null)""",
                row_id,
                submit_key,
                self.worker_id,
            )

    async def next_due_in(self) -> timedelta | None:
        with driver_errors("looking for the next due row"):
            value: timedelta | None = await self.pool.fetchval(NEXT_DUE)
        return value

    async def wake(self, provider: str, video_id: str) -> RowId | None:
        with driver_errors(f"waking the row of {provider} job {video_id}"):
            found: UUID | None = await self.pool.fetchval(
                """update public.videos
                   -- due now, or when a lease on it ends (next_attempt_at never falls
                   -- inside a lease: NEXT_DUE reads it alone)
                   set next_attempt_at = least(next_attempt_at, greatest(now(), locked_until))
                   where video_id is not null
                     and public.video_stable_id(video_id) = public.video_stable_id($1)
                     -- videos_video_id_key (stable form): one row, however it is spelt
                     and (provider = $2 or provider is null)  -- seed rows: no provider
                     and stage = any($3::text[])
                   returning id""",
                video_id,
                provider,
                WAKEABLE,
            )
        return None if found is None else RowId(found)

    async def recorded_video_ids(self, candidates: Iterable[str]) -> frozenset[str]:
        # Compared in stable form: a gateway may list a job under another id string
        # than the one create returned (service/providers/ids.py).
        with driver_errors("looking up provider ids"):
            rows = await self.pool.fetch(
                """select c.id from unnest($1::text[]) as c(id)
                   where exists (
                       select 1 from public.videos v
                       where v.video_id is not null
                         and public.video_stable_id(v.video_id) = public.video_stable_id(c.id))""",
                list(candidates),
            )
        return frozenset(r["id"] for r in rows)

    async def twins_in_doubt(self, prompt: str, model: str, size: str, seconds: str) -> list[Twin]:
        with driver_errors("looking for identical requests in doubt"):
            rows = await self.pool.fetch(
                """select id, reference_print,
                          coalesce(image1_url, '') <> '' or coalesce(image2_url, '') <> ''
                              as photos
                   from public.videos
                   where stage = 'submitting' and submit_key is not null  -- videos_in_doubt_idx
                     and md5(prompt) = md5($1) and prompt = $1
                     and model = $2 and size = $3 and seconds = $4""",
                prompt,
                model,
                size,
                seconds,
            )
        return [Twin(RowId(r["id"]), r["photos"], r["reference_print"]) for r in rows]

    async def insert_request(
        self,
        prompt: str,
        image1_url: str | None = None,
        image2_url: str | None = None,
        *,
        model: str | None = None,
        size: str | None = None,
        seconds: str | None = None,
    ) -> RowId:
        with driver_errors("inserting a request"):
            row_id: UUID = await self.pool.fetchval(
                """insert into public.videos
                       (prompt, image1_url, image2_url, model, size, seconds)
                   values ($1, $2, $3, $4, $5, $6) returning id""",
                prompt,
                image1_url,
                image2_url,
                model,
                size,
                seconds,
            )
        return RowId(row_id)

    async def load(self, row_id: RowId) -> Job | None:
        with driver_errors(f"reading row {row_id}"):
            record = await self.pool.fetchrow(
                f"select {JOB_COLUMNS} from public.videos where id = $1", row_id
            )
        return None if record is None else job_from_record(record)

    async def recent_durations(
        self, per_model: int, longest: timedelta
    ) -> Mapping[tuple[str, str], Sequence[float]]:
        return await durations.recent(self.pool, per_model, longest)

    async def admit(self, provider: str, model: str, size: str, seconds: str) -> Admission:
        return await costs.admit(self.pool, provider, model, size, seconds)

    async def take_abandoned(self, limit: int) -> list[AbandonedJob]:
        with driver_errors("taking abandoned jobs"):
            rows = await self.pool.fetch(TAKE_ABANDONED, limit)
        return [abandoned_from_record(r) for r in rows]

    async def settle_abandoned(self, job: AbandonedJob, outcome: str) -> None:
        with driver_errors(f"settling abandoned job {job.video_id}"):
            await self.pool.execute(
                "update sora_worker.abandoned_jobs set settled_at = now(), outcome = $2 "
                "where id = $1",
                job.id,
                outcome,
            )

    async def record_abandoned(
        self, job: Job, provider: str, video_id: str, how: str
    ) -> AbandonedJob | None:
        with driver_errors(f"recording abandoned job {video_id}"):
            record = await self.pool.fetchrow(
                RECORD_ABANDONED,
                job.id,
                provider,
                video_id,
                job.model,
                job.size,
                job.seconds,
                job.submitted_at,
                how,
                job.submit_key,
            )
        return None if record is None else abandoned_from_record(record)

    # ------------------------------------------------------------ operators' reads
