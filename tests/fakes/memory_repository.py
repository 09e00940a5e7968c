"""``Repository`` in memory: the PostgreSQL adapter's semantics without a server.

Tests of the daemon need a database they can break on purpose (an outage, a bug in one
call) and a clock they can move; a real server offers neither cheaply. This adapter
mirrors ``PostgresRepository``'s SQL statement by statement (the same guards, the same
columns per change, the unique index on video_id), and ``tests/test_repository_contract.py``
runs one suite against both so they cannot drift apart.

Every method reads ``clock`` once, as a statement reads ``now()`` once, and none awaits
anything: like a single statement, each call is atomic with respect to other tasks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime, timedelta

from service.core.costs import Admission
from service.core.events import (
    ForgetIntent,
    Media,
    RecordArchive,
    RecordDownload,
    RecordIntent,
    RecordJob,
    RecordMedia,
    RecordProgress,
)
from service.core.job import ACTIVE_STAGES, Job, RowId, Stage, SubmitKey
from service.core.likeness import Twin
from service.core.machine import Transition
from service.core.request import ErrorKind
from service.database.errors import Conflict, LeaseLost, Rule
from service.database.port import AbandonedJob
from service.providers.ids import stable_id

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told (plus ``tick`` per reading, if set).

    ``tick`` imitates a server whose ``now()`` differs between statements, so that
    "time moved on between two reads" holds without waiting for real time.
    """

    def __init__(self, start: datetime | None = None, tick: timedelta = timedelta(0)) -> None:
        self.now = start or datetime(2025, 1, 1, tzinfo=UTC)
        self.tick = tick

    def __call__(self) -> datetime:
        self.now += self.tick
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Row:
    """One ``videos`` row: the columns the worker reads or writes (sql/0001)."""

    id: RowId
    next_attempt_at: datetime
    created_at: datetime
    prompt: str | None = None
    image1_url: str | None = None
    image2_url: str | None = None
    model: str | None = None
    size: str | None = None
    seconds: str | None = None
    stage: Stage = Stage.PENDING
    status: str = "queued"
    attempts: int = 0
    provider: str | None = None
    video_id: str | None = None
    submit_key: SubmitKey | None = None
    submitted_at: datetime | None = None
    progress: int = 0
    locked_by: str | None = None
    locked_until: datetime | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    openai_url: str | None = None
    openai_expires_at: datetime | None = None
    video_url: str | None = None
    video_bytes: int | None = None
    reference_print: bytes | None = None
    photos_sent: str | None = None
    video_sha256: str | None = None
    thumbnail_url: str | None = None
    media: Media = field(default_factory=Media)
    completed_at: datetime | None = None

    def job(self, as_of: datetime) -> Job:
        return Job(
            id=self.id,
            stage=self.stage,
            as_of=as_of,
            attempts=self.attempts,
            prompt=self.prompt,
            image1_url=self.image1_url,
            image2_url=self.image2_url,
            model=self.model,
            size=self.size,
            seconds=self.seconds,
            provider=self.provider,
            video_id=self.video_id,
            submit_key=self.submit_key,
            submitted_at=self.submitted_at,
            progress=self.progress,
            expires_at=self.openai_expires_at,
            error_kind=self.error_kind,
        )


@dataclass
class Table:
    """The rows that several ``MemoryRepository`` instances (replicas) share."""

    clock: Clock = system_clock
    rows: dict[RowId, Row] = field(default_factory=dict)
    abandoned: list[AbandonedJob] = field(default_factory=list)
    """Jobs left running (sql/0010's table), as ``record_abandoned`` or a test put them."""
    settled: dict[int, str] = field(default_factory=dict)


class MemoryRepository:
    """``Repository`` over a dict, with a settable clock and injectable failures.

    ``clock`` plays the server's ``now()``; replicas made with ``replica()`` share the
    rows and the clock (``table``), as replicas share one database. ``fail_with``: while
    set, every call (or only those named in ``fail_methods``) raises it and changes
    nothing: an outage, or a bug, on demand; ``failures`` counts them.

    Not mirrored: the CHECK constraints (a bad insert is stored as given), row locks
    (there are no transactions for a claim to skip over) and the cost controls, which
    live in SQL (sql/0011): here every request is admitted. The abandoned jobs' calls
    take no injected failure (they run beside the loop, on their own schedule).
    """

    def __init__(
        self,
        worker_id: str = "memory",
        lease: timedelta = timedelta(seconds=30),
        *,
        clock: Clock = system_clock,
        table: Table | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.lease = lease
        self.table = table if table is not None else Table(clock)
        self.fail_with: Exception | None = None
        self.fail_methods: frozenset[str] = frozenset()
        self.failures = 0
        """How many calls ``fail_with`` has failed so far."""

    def replica(self, worker_id: str, lease: timedelta | None = None) -> MemoryRepository:
        """Another worker on the same rows and clock (its own faults)."""
        return MemoryRepository(worker_id, self.lease if lease is None else lease, table=self.table)

    @property
    def rows(self) -> dict[RowId, Row]:
        return self.table.rows

    def _now(self, method: str) -> datetime:
        """Raise the injected failure, if any, else read the clock once (``now()``)."""
        if self.fail_with is not None and (not self.fail_methods or method in self.fail_methods):
            self.failures += 1
            raise self.fail_with
        return self.table.clock()

    # ------------------------------------------------------------ the port

    async def claim(
        self, limit: int, exclude: Iterable[RowId] = (), *, fresh_only: bool = False
    ) -> list[Job]:
        now = self._now("claim")
        skip = set(exclude)
        due = sorted(
            (
                row
                for row in self.rows.values()
                if row.stage in ACTIVE_STAGES
                and row.next_attempt_at <= now
                and (row.locked_until is None or row.locked_until < now)
                and row.id not in skip
                and (row.stage is Stage.PENDING or not fresh_only)
            ),
            key=lambda row: (row.stage is not Stage.PENDING, row.next_attempt_at),  # fresh first
        )[: max(limit, 0)]
        for row in due:
            row.locked_by = self.worker_id
            row.locked_until = row.next_attempt_at = now + self.lease
        return [row.job(now) for row in due]

    async def checkpoint(self, job: Job, transition: Transition, *, keep_lease: bool) -> Job:
        now = self._now("checkpoint")
        row = self.rows.get(job.id)
        if (
            row is None
            or row.stage is not job.stage
            or row.locked_by != self.worker_id
            or row.submit_key != job.submit_key
        ):
            raise LeaseLost(f"row {job.id} is no longer ours in stage {job.stage}")
        after = replace(
            row,
            stage=transition.stage,
            status=transition.stage.status,
            attempts=transition.attempts,
            next_attempt_at=now + (self.lease if keep_lease else transition.delay),
            locked_by=row.locked_by if keep_lease else None,
            locked_until=now + self.lease if keep_lease else None,
            error=transition.error,
            error_kind=transition.error_kind,
        )
        match transition.change:
            case RecordIntent() as change:
                after.submit_key = change.submit_key
                after.provider = change.provider
                after.model = change.model
                after.size = change.size
                after.seconds = change.seconds
                after.reference_print = change.reference_print
                after.photos_sent = change.photos_sent
                after.submitted_at = now
            case ForgetIntent():
                after.submit_key = None
            case RecordJob() as change:
                after.video_id = change.video_id
                after.progress = change.progress
            case RecordProgress() as change:
                after.progress = change.progress
            case RecordDownload() as change:
                after.openai_url = change.content_url
                after.openai_expires_at = change.expires_at
                after.progress = 100
            case RecordArchive() as change:
                after.video_url = change.video_url
                after.video_bytes = change.video_bytes
                after.video_sha256 = change.video_sha256
                after.progress = 100
                after.completed_at = now
            case RecordMedia() as change:
                # Like coalesce(new, old) per column: what was not made keeps the old.
                after.thumbnail_url = change.thumbnail_url or row.thumbnail_url
                after.media = Media(
                    *(
                        new if new is not None else old
                        for new, old in zip(astuple(change.media), astuple(row.media), strict=True)
                    )
                )
            case None:
                pass
        self._check_unique(after)
        self.rows[row.id] = after
        return after.job(now)

    def _check_unique(self, after: Row) -> None:
        """The unique index on video_id in stable form (sql/0001, 0006): refuse the
        write, change nothing."""
        others = (row for row in self.rows.values() if row.id != after.id)
        job = None if after.video_id is None else stable_id(after.video_id)
        if job is not None and any(
            r.video_id is not None and stable_id(r.video_id) == job for r in others
        ):
            rule = Rule.ONE_ROW_PER_VIDEO
            raise Conflict(rule, f"checkpointing row {after.id}: {rule.value}")

    async def heartbeat(self, ids: Iterable[RowId]) -> frozenset[RowId]:
        now = self._now("heartbeat")
        ours = [
            row for i in set(ids) if (row := self.rows.get(i)) and row.locked_by == self.worker_id
        ]
        for row in ours:
            row.locked_until = row.next_attempt_at = now + self.lease
        return frozenset(row.id for row in ours)

    async def release(self, ids: Iterable[RowId]) -> None:
        now = self._now("release")
        for i in set(ids):
            row = self.rows.get(i)
            if row is not None and row.locked_by == self.worker_id:
                row.locked_by = row.locked_until = None
                row.next_attempt_at = now

    async def defer(self, job: Job, delay: timedelta) -> None:
        now = self._now("defer")
        row = self.rows.get(job.id)
        if row is not None and row.locked_by == self.worker_id:
            row.locked_by = row.locked_until = None
            row.next_attempt_at = now + delay

    async def withdraw_intent(self, row_id: RowId, submit_key: SubmitKey) -> None:
        now = self._now("withdraw_intent")
        row = self.rows.get(row_id)
        if row is None or row.locked_by != self.worker_id:
            return
        if row.submit_key not in (submit_key, None):
            return
        row.submit_key = None
        row.locked_by = row.locked_until = None
        row.next_attempt_at = now

    async def next_due_in(self) -> timedelta | None:
        now = self._now("next_due_in")
        due = [row.next_attempt_at for row in self.rows.values() if row.stage in ACTIVE_STAGES]
        return min(due) - now if due else None

    async def wake(self, provider: str, video_id: str) -> RowId | None:
        now = self._now("wake")
        for row in self.rows.values():
            if (
                row.video_id is not None
                and stable_id(row.video_id) == stable_id(video_id)
                and row.provider in (provider, None)
                and row.stage in (Stage.GENERATING, Stage.ARCHIVING)
            ):
                # Due now, or when a lease on it ends (never inside a lease).
                row.next_attempt_at = min(row.next_attempt_at, max(now, row.locked_until or now))
                return row.id
        return None

    async def recorded_video_ids(self, candidates: Iterable[str]) -> frozenset[str]:
        self._now("recorded_video_ids")
        held = {stable_id(row.video_id) for row in self.rows.values() if row.video_id is not None}
        return frozenset(c for c in candidates if stable_id(c) in held)

    async def twins_in_doubt(self, prompt: str, model: str, size: str, seconds: str) -> list[Twin]:
        self._now("twins_in_doubt")
        return [
            Twin(row.id, bool(row.image1_url or row.image2_url), row.reference_print)
            for row in self.rows.values()
            if row.stage is Stage.SUBMITTING
            and row.submit_key is not None
            and (row.prompt, row.model, row.size, row.seconds) == (prompt, model, size, seconds)
        ]

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
        now = self._now("insert_request")
        row_id = RowId(uuid.uuid4())
        self.rows[row_id] = Row(
            id=row_id,
            next_attempt_at=now,
            created_at=now,
            prompt=prompt,
            image1_url=image1_url,
            image2_url=image2_url,
            model=model,
            size=size,
            seconds=seconds,
        )
        return row_id

    async def load(self, row_id: RowId) -> Job | None:
        now = self._now("load")
        row = self.rows.get(row_id)
        return None if row is None else row.job(now)

    async def admit(self, provider: str, model: str, size: str, seconds: str) -> Admission:
        self._now("admit")
        return Admission(None, 0.0, 0.0, float("inf"), over_budget=False)

    async def take_abandoned(self, limit: int) -> list[AbandonedJob]:
        due = [j for j in self.table.abandoned if j.id not in self.table.settled][:limit]
        self.table.abandoned = [j for j in self.table.abandoned if j not in due]
        return [replace(j, tries=j.tries + 1) for j in due]

    async def settle_abandoned(self, job: AbandonedJob, outcome: str) -> None:
        self.table.settled[job.id] = outcome

    async def record_abandoned(
        self, job: Job, provider: str, video_id: str, how: str
    ) -> AbandonedJob | None:
        if stable_id(video_id) in {stable_id(r.video_id) for r in self.rows.values() if r.video_id}:
            return None
        recorded = AbandonedJob(
            len(self.table.settled) + len(self.table.abandoned) + 1,
            job.id,
            provider,
            video_id,
            job.submit_key,
            "submitting",
            how,
            1,
            0.0,
        )
        return recorded
