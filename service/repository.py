"""The database port, and its PostgreSQL adapter: all SQL the worker runs lives here.

The daemon and the sweep talk to ``Repository`` (a Protocol) and see only domain types
(``Job``, ``Transition``) and this module's errors; no layer above names asyncpg or a
column. The machine's typed changes are mapped to columns here, with fixed statements.

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

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable, Iterator
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar
from uuid import UUID

import asyncpg

from service.likeness import Twin
from service.machine import (
    ACTIVE_STAGES,
    Change,
    ForgetIntent,
    Job,
    RecordArchive,
    RecordDownload,
    RecordIntent,
    RecordJob,
    RecordProgress,
    RowId,
    Stage,
    SubmitKey,
    Transition,
)
from service.metrics import TableSnapshot

T = TypeVar("T")

# ---------------------------------------------------------------- errors


class RepositoryError(Exception):
    """Base of the port's errors; ``str()`` says what failed without driver internals."""


class DatabaseUnavailable(RepositoryError):
    """The database could not be reached or could not run the statement: try again later."""


class SchemaMissing(RepositoryError):
    """The table or a column is missing: the migrations have not run."""


class Refused(RepositoryError):
    """The database refused the values (a CHECK or NOT NULL rule): retrying the same
    write cannot help; it is a bug in the caller or a row the schema does not allow."""


class LeaseLost(RepositoryError):
    """The row is no longer ours (another worker claimed it, it was re-queued, or its
    stage moved on): the write changed nothing."""


class Rule(StrEnum):
    """The uniqueness rules a checkpoint can run into."""

    ONE_ROW_PER_VIDEO = "videos_video_id_key"
    """A provider job belongs to one row."""


class Conflict(RepositoryError):
    """The write would break a uniqueness rule; nothing changed. ``rule`` names it."""

    def __init__(self, rule: Rule | None, message: str) -> None:
        super().__init__(message)
        self.rule = rule


# ---------------------------------------------------------------- the port


class Repository(Protocol):
    """What the worker needs from the table. Two adapters: PostgreSQL and in-memory."""

    worker_id: str

    async def claim(self, limit: int, exclude: Iterable[RowId] = ()) -> list[Job]:
        """Lease up to ``limit`` due rows, oldest debt first, skipping rows locked elsewhere
        and ``exclude`` (rows whose task still runs here); a lapsed lease is claimable."""

    async def checkpoint(self, job: Job, transition: Transition, *, keep_lease: bool) -> Job:
        """Write ``transition`` if ``job`` is still ours as read; return the row after it.

        Raises LeaseLost when it is not, Conflict when a uniqueness rule refuses it.
        """

    async def heartbeat(self, ids: Iterable[RowId]) -> frozenset[RowId]:
        """Extend the leases of rows still ours; return which are."""

    async def release(self, ids: Iterable[RowId]) -> None:
        """Give rows back untouched at once (shutdown), so nobody waits the lease out."""

    async def defer(self, job: Job, delay: timedelta) -> None:
        """Give a row back untouched, due again after ``delay``."""

    async def withdraw_intent(self, row_id: RowId, submit_key: SubmitKey) -> None:
        """Undo an intent whose create was certainly never sent (the answer to its
        checkpoint was lost, so whether it landed is unknown): drop the key if it landed,
        and give the row back, due now. Rows no longer ours are left alone."""

    async def next_due_in(self) -> timedelta | None:
        """How long until some active row can be claimed; None when none is active.

        A leased row is due when its lease ends (a claim and a heartbeat say so), so
        this is one index probe, whatever the number of active rows."""

    async def wake(self, provider: str, video_id: str) -> RowId | None:
        """A webhook said the provider's job moved: make the row holding it due now.

        Only rows waiting on that job (generating or archiving) are touched; nothing
        else changes (the poll asks the provider what happened). Returns the row, or
        None when no such row waits (an unknown or already finished job).
        """

    async def recorded_video_ids(self, candidates: Iterable[str]) -> frozenset[str]:
        """Which of these provider ids some row already holds, compared in stable form
        (``providers.ids.stable_id``): never adopt one job twice, however it is spelt."""

    async def twins_in_doubt(self, prompt: str, model: str, size: str, seconds: str) -> list[Twin]:
        """Every row whose request is this one and whose submission is in doubt (intent
        recorded, job not): whether it has photos, and the print of its reference."""

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
        """Ask for a video, as an app would."""

    async def load(self, row_id: RowId) -> Job | None:
        """The row as the machine sees it (unleased), or None."""


# ---------------------------------------------------------------- PostgreSQL

ACTIVE = [stage.value for stage in ACTIVE_STAGES]
WAKEABLE = [Stage.GENERATING.value, Stage.ARCHIVING.value]
"""Stages that wait on a provider's job, which a webhook may announce."""
ACTIVE_SQL = "(" + ", ".join(f"'{stage}'" for stage in ACTIVE) + ")"
"""The active stages as a literal: the planner proves a partial index's predicate from
a literal list, never from a parameter (a generic plan would scan the table)."""

STATUS_OF: dict[Stage, str] = {
    Stage.PENDING: "queued",
    Stage.SUBMITTING: "processing",
    Stage.GENERATING: "processing",
    Stage.ARCHIVING: "processing",
    Stage.COMPLETED: "completed",
    Stage.FAILED: "failed",
}
"""The seed's coarse ``status`` that front ends read, kept in step with ``stage``."""

ROW_COLUMNS = (
    "id",
    "stage",
    "attempts",
    "prompt",
    "image1_url",
    "image2_url",
    "model",
    "size",
    "seconds",
    "provider",
    "video_id",
    "submit_key",
    "submitted_at",
    "progress",
    "openai_expires_at",
    "error_kind",
)
JOB_COLUMNS = ", ".join(ROW_COLUMNS) + ", now() as as_of"
"""What the machine reads of a row, and the database's clock as it was read."""

# One statement claims fresh rows and takes back rows whose owner died, so a crash
# needs no rescue job: a lapsed lease simply makes the row claimable again.
CLAIM = f"""
with fresh as (
    select id from public.videos
    where stage = 'pending'                -- videos_fresh_idx: requests go first, so a new
      and next_attempt_at <= now()         -- row never queues behind thousands of polls
      and (locked_until is null or locked_until < now())
      and id <> all($4::uuid[])
    order by next_attempt_at
    limit $2
    for update skip locked
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
)
update public.videos v
set locked_by = $1, locked_until = now() + $3::interval,
    next_attempt_at = now() + $3::interval  -- due again when the lease ends (NEXT_DUE)
from (select id from fresh union all select id from due) as claimed
where v.id = claimed.id
returning {", ".join("v." + c for c in ROW_COLUMNS)}, now() as as_of
"""

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

# The checkpoint: one fixed statement per kind of change. $1-$4 guard the row, $5-$12
# are what every transition writes, $13... the change's own columns.
_GUARD = "where id = $1 and stage = $2 and locked_by = $3 and submit_key is not distinct from $4"
_COMMON = """stage = $5, status = $6, attempts = $7,
    next_attempt_at = now() + case when $9 then $10::interval else $8::interval end,
    locked_by = case when $9 then locked_by end,
    locked_until = case when $9 then now() + $10::interval end,
    error = $11, error_kind = $12"""


def _checkpoint_sql(change_columns: str = "") -> str:
    extra = f",\n    {change_columns}" if change_columns else ""
    return f"update public.videos set {_COMMON}{extra}\n{_GUARD}\nreturning {JOB_COLUMNS}"


CHECKPOINT: dict[type[Change] | None, str] = {
    None: _checkpoint_sql(),
    RecordIntent: _checkpoint_sql(
        "submit_key = $13, provider = $14, model = $15, size = $16, seconds = $17, "
        "reference_print = $18, submitted_at = now()"
    ),
    ForgetIntent: _checkpoint_sql("submit_key = null"),
    RecordJob: _checkpoint_sql("video_id = $13, progress = $14"),
    RecordProgress: _checkpoint_sql("progress = $13"),
    RecordDownload: _checkpoint_sql("openai_url = $13, openai_expires_at = $14, progress = 100"),
    RecordArchive: _checkpoint_sql(
        "video_url = $13, video_bytes = $14, video_sha256 = $15, thumbnail_url = $16, "
        "duration_seconds = $17, width = $18, height = $19, poster_url = $20, "
        "rendition_url = $21, progress = 100, completed_at = now()"
    ),
}


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
            ]
        case RecordJob():
            return [change.video_id, change.progress]
        case RecordProgress():
            return [change.progress]
        case RecordDownload():
            return [change.content_url, change.expires_at]
        case RecordArchive():
            media = change.media
            return [
                change.video_url,
                change.video_bytes,
                change.video_sha256,
                change.thumbnail_url,
                media.duration_seconds,
                media.width,
                media.height,
                media.poster_url,
                media.rendition_url,
            ]
        case ForgetIntent() | None:
            return []


def job_from_record(record: asyncpg.Record) -> Job:
    submit_key = record["submit_key"]
    return Job(
        id=RowId(record["id"]),
        stage=Stage(record["stage"]),
        as_of=record["as_of"],
        attempts=record["attempts"],
        prompt=record["prompt"],
        image1_url=record["image1_url"],
        image2_url=record["image2_url"],
        model=record["model"],
        size=record["size"],
        seconds=record["seconds"],
        provider=record["provider"],
        video_id=record["video_id"],
        submit_key=None if submit_key is None else SubmitKey(submit_key),
        submitted_at=record["submitted_at"],
        progress=record["progress"],
        expires_at=record["openai_expires_at"],
        error_kind=record["error_kind"],
    )


@contextlib.contextmanager
def driver_errors(doing: str) -> Iterator[None]:
    """Turn every driver and socket failure into the port's own errors."""
    try:
        yield
    except asyncpg.UniqueViolationError as err:
        rule = next((r for r in Rule if r.value == err.constraint_name), None)
        raise Conflict(rule, f"{doing}: {err.constraint_name or 'a uniqueness rule'}") from err
    except asyncpg.IntegrityConstraintViolationError as err:
        raise Refused(f"{doing}: refused by {err.constraint_name or 'a rule'}: {err}") from err
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as err:
        raise SchemaMissing(f"{doing}: {err}; run `sora-worker migrate`") from err
    except (
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    ) as err:
        raise DatabaseUnavailable(f"{doing}: {err or type(err).__name__}") from err


class PostgresRepository:
    """``Repository`` on an asyncpg pool. One instance per pool."""

    def __init__(self, pool: asyncpg.Pool, worker_id: str, lease: timedelta) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.lease = lease

    async def claim(self, limit: int, exclude: Iterable[RowId] = ()) -> list[Job]:
        with driver_errors("claiming rows"):
            records = await self.pool.fetch(CLAIM, self.worker_id, limit, self.lease, list(exclude))
        return [job_from_record(r) for r in records]

    async def checkpoint(self, job: Job, transition: Transition, *, keep_lease: bool) -> Job:
        change = transition.change
        with driver_errors(f"checkpointing row {job.id}"):
            record = await self.pool.fetchrow(
                CHECKPOINT[type(change) if change is not None else None],
                job.id,
                job.stage.value,
                self.worker_id,
                job.submit_key,  # a re-queue mints a new key: a stale task's write must miss
                transition.stage.value,
                STATUS_OF[transition.stage],
                transition.attempts,
                transition.delay,
                keep_lease,
                self.lease,
                transition.error,
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

    # ------------------------------------------------------------ operators' reads

    async def recent(self, limit: int, status: str | None = None) -> list[dict[str, Any]]:
        """The newest rows, optionally of one status (for ``sora-worker list``)."""
        with driver_errors("listing rows"):
            rows = await self.pool.fetch(
                """select id, status, stage, progress, attempts, created_at, video_url, error,
                          error_kind
                   from public.videos where $2::text is null or status = $2
                   order by created_at desc limit $1""",
                limit,
                status,
            )
        return [dict(r) for r in rows]

    async def adopt(self, row_id: UUID, video_id: str, provider: str) -> None:
        """Attach a provider job a person found to a row (``sora-worker adopt``).

        One guarded statement, safe while workers run: only a row that holds no job yet
        (queued, in doubt, or failed) and that no live lease holds is changed; it becomes
        ``generating`` with the job, as if its create had answered, and the worker is
        woken to poll it. Raises Refused (saying why) when the row cannot take it, and
        Conflict when another row already holds that job (however its id is spelt).
        """
        with driver_errors(f"adopting {video_id} into row {row_id}"):
            adopted = await self.pool.fetchval(ADOPT, row_id, video_id, provider)
            if adopted is not None:
                return
            row = await self.pool.fetchrow(
                """select stage, video_id, locked_until > now() as leased
                   from public.videos where id = $1""",
                row_id,
            )
        if row is None:
            raise Refused(f"no row {row_id}")
        if row["stage"] in ("generating", "archiving", "completed"):
            raise Refused(
                f"row {row_id} is {row['stage']} with job {row['video_id']}; only a row "
                "that holds no job (queued, in doubt or failed) can adopt one"
            )
        raise Refused(
            f"a worker is working on row {row_id} right now; try again once it has "
            "finished its step (sora-worker show shows its stage)"
        )

    async def holder_of(self, video_id: str) -> UUID | None:
        """The row that holds this provider job, compared in stable form."""
        with driver_errors(f"looking up {video_id}"):
            found: UUID | None = await self.pool.fetchval(
                """select id from public.videos where video_id is not null
                   and public.video_stable_id(video_id) = public.video_stable_id($1)""",
                video_id,
            )
        return found

    async def stats(self) -> dict[str, Any]:
        """Rows per stage and how long the oldest unfinished one has waited."""
        with driver_errors("counting rows"):
            counts = await self.pool.fetch(
                "select stage, count(*) as n from public.videos group by 1"
            )
            oldest = await self.pool.fetchval(
                "select extract(epoch from now() - min(created_at)) from public.videos "
                "where stage = any($1::text[])",
                ACTIVE,
            )
        return {
            "stages": {r["stage"]: r["n"] for r in counts},
            "oldest_unfinished_seconds": None if oldest is None else round(float(oldest), 1),
        }

    async def ping(self, within: float) -> None:
        """Raise DatabaseUnavailable unless the database answers within ``within`` s
        (readiness: a frozen connection must not hang the probe)."""
        await _bounded(self.pool.fetchval("select 1"), within, "asking the database")

    async def table_snapshot(self, within: float) -> TableSnapshot:
        """Rows per stage, the oldest unfinished row's age and the rows in doubt, in one
        query (for a metrics scrape; one pass over the table, no locks taken), or
        DatabaseUnavailable after ``within`` s (a frozen database must not hang a scrape)."""
        rows: list[asyncpg.Record] = await _bounded(
            self.pool.fetch(
                """select stage, count(*) as n,
                          extract(epoch from now() - min(created_at))::float8 as oldest,
                          count(*) filter (where submit_key is not null) as keyed
                   from public.videos group by stage"""
            ),
            within,
            "reading the table for metrics",
        )
        active = [r for r in rows if r["stage"] in ACTIVE]
        ages = [r["oldest"] for r in active if r["oldest"] is not None]
        return TableSnapshot(
            rows_by_stage={r["stage"]: r["n"] for r in rows},
            oldest_unfinished_seconds=max(ages) if ages else None,
            in_doubt=sum(r["keyed"] for r in rows if r["stage"] == Stage.SUBMITTING.value),
        )

    async def fetch_row(self, row_id: UUID) -> dict[str, Any] | None:
        """Every column of a row, as front ends see it (for ``show`` and the demo)."""
        with driver_errors(f"reading row {row_id}"):
            record = await self.pool.fetchrow("select * from public.videos where id = $1", row_id)
        return None if record is None else dict(record)


ADOPT = """
with adopted as (
    update public.videos
    set stage = 'generating', status = 'processing', video_id = $2,
        provider = coalesce(provider, $3),
        submit_key = null,            -- the intent is settled: this is its job
        submitted_at = now(),         -- the generation deadline counts from here
        attempts = 0, progress = 0, error = null, error_kind = null,
        next_attempt_at = now(), locked_by = null, locked_until = null,
        openai_url = null, openai_expires_at = null, video_url = null, video_bytes = null,
        video_sha256 = null, thumbnail_url = null, completed_at = null,
        reference_print = null, duration_seconds = null, width = null, height = null,
        poster_url = null, rendition_url = null, pruned_at = null
    where id = $1
      and stage in ('pending', 'submitting', 'failed')        -- holds no job yet
      and (locked_until is null or locked_until < now())      -- no worker is on it
    returning id
)
select id from adopted, pg_notify('sora_worker', adopted.id::text)
"""
"""``sora-worker adopt``: one statement, so a worker claiming the row meanwhile either
sees it before (and its guarded write then misses) or after (and polls the job)."""


_ABANDONED: set[asyncio.Future[Any]] = set()


async def _bounded(query: Awaitable[T], within: float, doing: str) -> T:
    """``query``'s result, or DatabaseUnavailable after ``within`` seconds.

    Not ``asyncio.timeout``: cancelling a query whose connection swallows packets waits
    for the pool to take the connection back, which can take as long as the freeze.
    Here the query is cancelled and left to finish its cleanup on its own.
    """
    task = asyncio.ensure_future(query)
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        task.cancel()
        _ABANDONED.add(task)
        task.add_done_callback(_forget)
        raise DatabaseUnavailable(f"{doing}: no answer within {within:g} s")
    with driver_errors(doing):
        return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a cancelled query's error is expected, not news


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row with UUIDs and times as strings, for printing; the reference print (768
    bytes of pixels only reconciliation reads) is left out."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "reference_print":
            continue
        if isinstance(value, UUID):
            out[key] = str(value)
        elif isinstance(value, datetime):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out
