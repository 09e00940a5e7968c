"""The database port: what the worker needs from the table, in domain types only.

The daemon, the steps and the webhook receiver talk to ``Repository`` and see only
``Job``, ``Transition`` and the errors of ``service.database.errors``; no layer above
names asyncpg or a column. ``PostgresRepository`` (``service.database.postgres``) is the
adapter; tests have an in-memory one, and both pass the same contract suite.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from service.core.costs import Admission
from service.core.job import Job, RowId, SubmitKey
from service.core.likeness import Twin
from service.core.machine import Transition


class Repository(Protocol):
    """What the worker needs from the table. Two adapters: PostgreSQL and in-memory."""

    worker_id: str

    async def claim(
        self, limit: int, exclude: Iterable[RowId] = (), *, fresh_only: bool = False
    ) -> list[Job]:
        """Lease up to ``limit`` due rows, new requests first then oldest debt, skipping
        rows locked elsewhere and ``exclude`` (rows whose task still runs here); a lapsed
        lease is claimable. ``fresh_only``: new requests alone (the dispatch lane)."""

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

    async def admit(self, provider: str, model: str, size: str, seconds: str) -> Admission:
        """Right before an intent: may this request be made (the allowlist the insert
        met), and what today's spend is (the budget)."""

    async def take_abandoned(self, limit: int) -> list[AbandonedJob]:
        """Jobs a re-queue or a delete left running, due for a cancel; each taken is
        not due again for a while (another replica skips it meanwhile)."""

    async def settle_abandoned(self, job: AbandonedJob, outcome: str) -> None:
        """Record what became of an abandoned job; it is not taken again."""

    async def record_abandoned(
        self, job: Job, provider: str, video_id: str, how: str
    ) -> AbandonedJob | None:
        """Write down a job this worker made for ``job`` that no row holds (its row was
        re-queued or deleted while the create ran), for the cancel that follows.
        None when some row holds the job after all (another worker recorded it)."""


@dataclass(frozen=True)
class TableSnapshot:
    """What one query read from ``public.videos`` for a metrics scrape."""

    rows_by_stage: Mapping[str, int] = field(default_factory=dict)
    oldest_unfinished_seconds: float | None = None
    in_doubt: int = 0
    spent_today_usd: float | None = None
    """Today's estimated spend (UTC day, sql/0011); None when it could not be read."""
    daily_budget_usd: float | None = None
    abandoned_unsettled: int = 0
    """Jobs a re-queue or a delete left running that no worker has settled yet."""
    refusals: Mapping[str, int] = field(default_factory=dict)
    """Inserts the database refused so far, by reason (job_or_stage, model, quota, budget)."""
    rates: tuple[RateState, ...] = ()
    """Each request-rate limit every replica shares (sql/0015)."""


@dataclass(frozen=True)
class RateState:
    """One shared request-rate limit as a scrape reads it."""

    key: str
    per_minute: int
    granted: int
    """Turns handed out since it was made."""
    deferred: int
    """Times a replica was told to wait out of the worker (no turn near enough)."""
    throttled: int
    """429s from the host written here (each held every replica off)."""
    blocked_seconds: float
    """How long every replica is still held off by the host's last 429 (0: not)."""


@dataclass(frozen=True)
class AbandonedJob:
    """A provider job that no row will poll or archive any more: it runs on, paid for."""

    id: int
    row_id: RowId
    provider: str | None
    video_id: str | None
    """None when the row was submitting: a create may have made a job nobody can name."""
    submit_key: SubmitKey | None
    stage: str
    """The stage the row was in."""
    how: str
    """What left it: 're-queued', 'deleted', or the worker's own 'lost the row'."""
    tries: int
    """Cancels tried so far, this one included."""
    estimated_usd: float
