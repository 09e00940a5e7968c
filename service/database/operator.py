"""The operator's verbs: retry, cancel, rearchive, prune, and storage used per bucket.

Each change is one guarded SQL statement, safe while any number of workers run: it
touches only rows in the stage it expects that no live lease holds (``locked_until``
null or lapsed), so it never fights a worker mid-step; a worker whose lease lapsed and
who writes afterwards misses, because its checkpoint is guarded by the stage it read
(``LeaseLost``). Zero rows changed is an answer, explained by ``why_not``.

What each verb means:

- ``retry``: a failed row goes back to ``queued`` as a fresh request (attempts, error,
  key, provider job and stored URLs cleared: the same fresh start the
  ``videos_prepare_request`` trigger gives a person who sets ``status = 'queued'``).
  With ``abandon``, a row whose job the provider may still hold (generating, archiving,
  or submitting with a key) goes back too: its job is then paid for and abandoned, so
  sql/0010 writes it down and a worker cancels it where the provider can, with a
  warning naming it and its estimated cost. Without ``abandon`` such a row is refused.
- ``cancel``: a pending or generating row (or one waiting to submit afresh, with no
  key recorded) is failed with "cancelled by operator"; the
  caller then deletes the provider's job where the provider can (OpenAI's API has no
  cancel for videos; ``DELETE /v1/videos/{id}`` removes the job). A row being
  submitted (its outcome may be unknown) or archived (the video is paid for and nearly
  saved) is refused: the refusal says why.
- ``rearchive``: a finished row whose provider copy has not expired goes back to
  ``archiving``; the workers copy it again over the same key (the store replaces the
  object, at any size) and re-read its media, as for any archive. A row still
  ``describing`` is refused until it completes (its video is stored; its media are
  being made).
- ``prune``: completed rows older than N days are marked ``pruned_at`` and their stored
  files (video, poster, rendition, thumbnail) deleted. Marked first, so a front end
  stops offering them before they vanish; a crash in between leaves files, never a
  row that claims files it has lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from service.core.job import Stage
from service.database.errors import Refused, driver_errors
from service.database.rows import ACTIVE

FREE = "(locked_until is null or locked_until < now())"
"""No live lease: no worker is in the middle of a step on the row."""

CANCELLED = "cancelled by operator"


def set_stage(stage: Stage) -> str:
    """``stage = ..., status = ...``: a stage with the status it shows (``Stage.status``,
    the one source of that pairing), for the verbs that move a row by hand."""
    return f"stage = '{stage.value}', status = '{stage.status}'"


HOLDS_JOB = (
    "(stage in ('generating', 'archiving') or (stage = 'submitting' and submit_key is not null))"
)
"""The provider may hold the row's job: re-queuing it abandons a paid job."""

RETRY = f"""
update public.videos
set status = '{Stage.PENDING.status}'
where (stage = 'failed' or ($3 and {HOLDS_JOB})) and {FREE}
  and ($1::uuid is null or id = $1)
  and ($2::timestamptz is null or updated_at >= $2)
returning id
"""
"""The triggers (sql/0002, 0009) turn status 'queued' into a fresh start, media columns
included. The row keeps its provider and model: what it was asked of stays consistent."""

CANCEL = f"""
update public.videos
set {set_stage(Stage.FAILED)}, error = '{CANCELLED}',
    next_attempt_at = now(), locked_by = null, locked_until = null
where id = $1 and {FREE}
  and (stage in ('pending', 'generating') or (stage = 'submitting' and submit_key is null))
returning id, video_id, provider
"""

REARCHIVE = f"""
with rearchived as (
    update public.videos
    set {set_stage(Stage.ARCHIVING)}, attempts = 0, error = null,
        next_attempt_at = now(), locked_by = null, locked_until = null, pruned_at = null
    where id = $1 and stage in ('completed', 'failed') and {FREE}
      and video_id is not null and openai_url is not null and openai_expires_at > now()
    returning id
)
select id from rearchived, pg_notify('sora_worker', rearchived.id::text)
"""
"""One statement, and the workers are woken (as for ``adopt``): the row is due now, not
at the next sweep."""

PRUNABLE = """
select id, video_url, poster_url, rendition_url, thumbnail_url, video_bytes, completed_at
from public.videos
where stage = 'completed' and pruned_at is null and completed_at < now() - $1::interval
order by completed_at
"""

PRUNE = f"""
update public.videos set pruned_at = now()
where stage = 'completed' and pruned_at is null and completed_at < now() - $1::interval
  and {FREE}
returning id, video_url, poster_url, rendition_url, thumbnail_url, video_bytes, completed_at
"""

STORAGE_USED = """
select bucket_id, count(*) as objects,
       coalesce(sum((metadata->>'size')::bigint), 0) as bytes
from storage.objects where bucket_id = any($1::text[]) group by bucket_id
"""


ADOPT = f"""
with adopted as (
    update public.videos
    set {set_stage(Stage.GENERATING)}, video_id = $2,
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


@dataclass(frozen=True)
class Cancelled:
    id: UUID
    video_id: str | None
    """The provider's job, to delete there; None if none was submitted yet."""
    provider: str | None = None
    """The provider the job was submitted to (the row keeps it)."""


@dataclass(frozen=True)
class Refusal:
    """Why a verb changed nothing on a row."""

    reason: str
    busy: bool
    """A worker holds the row's lease right now: the same verb may work in a moment."""


@dataclass(frozen=True)
class Prunable:
    id: UUID
    urls: tuple[str, ...]
    """Every stored file of the row: video, poster, rendition, thumbnail (those set)."""
    video_bytes: int
    completed_at: datetime

    @classmethod
    def of(cls, record: asyncpg.Record) -> Prunable:
        urls = (
            record["video_url"],
            record["poster_url"],
            record["rendition_url"],
            record["thumbnail_url"],
        )
        return cls(
            record["id"],
            tuple(u for u in urls if u),
            record["video_bytes"] or 0,
            record["completed_at"],
        )


class Operator:
    """The verbs' SQL on a pool; the CLI wraps them, tests run them beside workers."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def retry(
        self, row_id: UUID | None, *, failed_since: datetime | None, abandon: bool = False
    ) -> list[UUID]:
        """Re-queue one failed row, or every failed row (changed since ``failed_since``);
        with ``abandon``, also a row whose job the provider may still hold."""
        with driver_errors("re-queueing failed rows"):
            rows = await self.pool.fetch(RETRY, row_id, failed_since, abandon)
        return [r["id"] for r in rows]

    async def cancel(self, row_id: UUID) -> Cancelled | None:
        """Fail a pending or generating row that no worker is in the middle of."""
        with driver_errors(f"cancelling row {row_id}"):
            record = await self.pool.fetchrow(CANCEL, row_id)
        return (
            None
            if record is None
            else Cancelled(record["id"], record["video_id"], record["provider"])
        )

    async def rearchive(self, row_id: UUID) -> bool:
        """Send a finished row back to archiving while the provider's copy lasts."""
        with driver_errors(f"re-archiving row {row_id}"):
            return await self.pool.fetchval(REARCHIVE, row_id) is not None

    async def prunable(self, older_than: timedelta) -> list[Prunable]:
        """What ``prune`` would take (the dry run)."""
        with driver_errors("finding rows to prune"):
            rows = await self.pool.fetch(PRUNABLE, older_than)
        return [Prunable.of(r) for r in rows]

    async def mark_pruned(self, older_than: timedelta) -> list[Prunable]:
        """Mark the rows pruned; returns them, so their files can be deleted."""
        with driver_errors("marking rows pruned"):
            rows = await self.pool.fetch(PRUNE, older_than)
        return [Prunable.of(r) for r in rows]

    async def why_not(self, row_id: UUID, verb: str) -> Refusal:
        """Why ``verb`` changed nothing on this row, in words an operator can act on."""
        busy, reason = await self._why_not(row_id, verb)
        return Refusal(reason, busy)

    async def _why_not(self, row_id: UUID, verb: str) -> tuple[bool, str]:
        with driver_errors(f"reading row {row_id}"):
            row = await self.pool.fetchrow(
                f"""select stage, {FREE} as free, openai_url, openai_expires_at,
                           video_id, provider, {HOLDS_JOB} as holds_job, now() as now
                    from public.videos where id = $1""",
                row_id,
            )
        if row is None:
            return False, f"no row {row_id}"
        stage = row["stage"]
        if not row["free"]:
            return True, f"a worker is on row {row_id} right now ({stage}); try again shortly"
        explain = _WHY_NOT.get(verb)
        reason = explain(row_id, row) if explain is not None else None
        return False, reason or f"row {row_id} is {stage}"

    async def storage_used(self, buckets: Sequence[str]) -> dict[str, dict[str, int]] | None:
        """Objects and bytes per bucket from Supabase's ``storage.objects``; None where
        the database has no storage schema (plain PostgreSQL)."""
        with driver_errors("summing storage"):
            if await self.pool.fetchval("select to_regclass('storage.objects')") is None:
                return None
            rows = await self.pool.fetch(STORAGE_USED, list(buckets))
        used = {b: {"objects": 0, "bytes": 0} for b in buckets}
        for r in rows:
            used[r["bucket_id"]] = {"objects": r["objects"], "bytes": r["bytes"]}
        return used

    # ------------------------------------------------------------ reads and adopt

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
        if row["stage"] in ("generating", "archiving", "describing", "completed"):
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

    async def fetch_row(self, row_id: UUID) -> dict[str, Any] | None:
        """Every column of a row, as front ends see it (for ``show`` and the demo)."""
        with driver_errors(f"reading row {row_id}"):
            record = await self.pool.fetchrow("select * from public.videos where id = $1", row_id)
        return None if record is None else dict(record)


def _why_not_retry(row_id: UUID, row: asyncpg.Record) -> str:
    stage = row["stage"]
    if row["holds_job"]:
        job = row["video_id"] or "a job being created"
        return (
            f"row {row_id} is {stage}, not failed: the provider "
            f"({row['provider'] or 'the default'}) may hold its job ({job}), paid "
            "for. Re-queuing it abandons that job and pays for a new one: `sora-worker "
            "retry ID --abandon` does so (a worker then cancels the old job where the "
            "provider can, and logs its estimated cost)"
        )
    return f"row {row_id} is {stage}, not failed: only failed rows are retried"


def _why_not_cancel(row_id: UUID, row: asyncpg.Record) -> str:
    match row["stage"]:
        case "submitting":
            return (
                f"row {row_id} is being submitted and the provider may hold its job; "
                "cancel it once it is generating"
            )
        case "archiving":
            return f"row {row_id} is generated and being archived; nothing to cancel"
        case "describing":
            return f"row {row_id}'s video is stored (its media are being made)"
        case stage:
            return f"row {row_id} is {stage}: nothing to cancel"


def _why_not_rearchive(row_id: UUID, row: asyncpg.Record) -> str:
    stage = row["stage"]
    if stage == "describing":
        return (
            f"row {row_id}'s video is stored and its media are being made; "
            "rearchive it once it is completed"
        )
    if stage in ACTIVE:
        return f"row {row_id} is still {stage}: the worker archives it when done"
    if row["video_id"] is None or row["openai_url"] is None:
        return f"row {row_id} has no provider copy to archive from"
    expiry = row["openai_expires_at"]
    when = "at an unknown time" if expiry is None else f"at {expiry.isoformat()}"
    return f"the provider's copy of row {row_id} expired {when}"


_WHY_NOT = {"retry": _why_not_retry, "cancel": _why_not_cancel, "rearchive": _why_not_rearchive}
"""Why each verb left a free row alone, by verb."""


def as_dict(item: Prunable) -> dict[str, Any]:
    return {
        "id": str(item.id),
        "files": list(item.urls),
        "video_bytes": item.video_bytes,
        "completed_at": item.completed_at.isoformat(),
    }
