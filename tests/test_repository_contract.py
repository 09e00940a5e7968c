"""One suite, two adapters: ``MemoryRepository`` must behave as ``PostgresRepository``.

The SQL adapter is the reference; every test here runs against both, through the port
only (``Repository``), so a daemon test that uses the in-memory adapter tests the same
semantics a production worker gets. Time is controlled per adapter: the memory clock is
moved, the real server's is waited on (``eventually``), never slept on.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

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
from service.core.job import Job, RowId, Stage, SubmitKey
from service.core.machine import Transition
from service.database.errors import Conflict, LeaseLost, Rule
from service.database.port import Repository
from service.database.postgres import PostgresRepository
from service.providers.ids import litellm_id
from tests.conftest import eventually, scratch_database
from tests.fakes.memory_repository import ManualClock, MemoryRepository

LEASE = timedelta(seconds=30)
SHORT = timedelta(seconds=2)
"""A lease or delay short enough to wait out on a real server, and long enough that the
next few statements (each a commit on a busy shared disk) run before it ends."""


class Backend:
    """Makes repositories (one per worker) on one table, and lets database time pass."""

    name = ""

    def repo(self, worker_id: str = "worker-a", lease: timedelta = LEASE) -> Repository:
        raise NotImplementedError

    async def after(
        self, delta: timedelta, probe: Callable[[], Awaitable[Any]], check: Callable[[Any], bool]
    ) -> Any:
        """Once ``delta`` of database time has passed, ``probe()`` satisfies ``check``."""
        raise NotImplementedError

    async def stored(self, row: RowId) -> tuple[Any, ...]:
        """(status, video_url, video_sha256, completed_at is set, thumbnail_url,
        poster_url, duration_seconds): what an app reads of the stored video."""
        raise NotImplementedError


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def repo(self, worker_id: str = "worker-a", lease: timedelta = LEASE) -> Repository:
        return PostgresRepository(self.pool, worker_id, lease)

    async def after(
        self, delta: timedelta, probe: Callable[[], Awaitable[Any]], check: Callable[[Any], bool]
    ) -> Any:
        return await eventually(probe, check, within=delta.total_seconds() + 5)

    async def stored(self, row: RowId) -> tuple[Any, ...]:
        found = await self.pool.fetchrow(
            """select status, video_url, video_sha256, completed_at is not null,
                      thumbnail_url, poster_url, duration_seconds
               from public.videos where id = $1""",
            row,
        )
        assert found is not None
        return tuple(found)


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        # Ticks like a server's now(), which differs between statements.
        self.clock = ManualClock(tick=timedelta(microseconds=1))
        self.first: MemoryRepository | None = None

    def repo(self, worker_id: str = "worker-a", lease: timedelta = LEASE) -> Repository:
        if self.first is None:
            self.first = MemoryRepository(worker_id, lease, clock=self.clock)
            return self.first
        return self.first.replica(worker_id, lease)

    async def after(
        self, delta: timedelta, probe: Callable[[], Awaitable[Any]], check: Callable[[Any], bool]
    ) -> Any:
        self.clock.advance(delta + timedelta(milliseconds=1))
        value = await probe()
        assert check(value), value
        return value

    async def stored(self, row: RowId) -> tuple[Any, ...]:
        assert self.first is not None
        r = self.first.rows[row]
        return (
            r.status,
            r.video_url,
            r.video_sha256,
            r.completed_at is not None,
            r.thumbnail_url,
            r.media.poster_url,
            r.media.duration_seconds,
        )


@pytest.fixture(params=["postgres", "memory"])
async def backend(
    request: pytest.FixtureRequest, server_dsn: str, template_db: str
) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    async with scratch_database(server_dsn, template_db) as db_url:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
        try:
            yield PostgresBackend(pool)
        finally:
            await pool.close()


def step(stage: Stage, change: Any = None, *, attempts: int = 0, **kw: Any) -> Transition:
    return Transition(stage, attempts, kw.pop("delay", timedelta(0)), "test", change=change, **kw)


def intent(
    model: str = "sora-2", size: str = "720x1280", seconds: str = "8", print_: bytes | None = None
) -> RecordIntent:
    return RecordIntent(SubmitKey(uuid.uuid4()), "simulator", model, size, seconds, print_)


async def claim_one(repo: Repository, row_id: RowId) -> Job:
    jobs = await repo.claim(10)
    mine = [j for j in jobs if j.id == row_id]
    assert len(mine) == 1, jobs
    return mine[0]


async def claim_all(repo: Repository, *rows: RowId) -> list[Job]:
    by_id = {j.id: j for j in await repo.claim(10)}
    assert set(by_id) == set(rows), by_id
    return [by_id[r] for r in rows]


async def loaded(repo: Repository, row_id: RowId) -> Job:
    job = await repo.load(row_id)
    assert job is not None
    return job


def ids(jobs: list[Job]) -> list[RowId]:
    return [j.id for j in jobs]


# ---------------------------------------------------------------- claim


async def test_claim_takes_due_rows_oldest_first_honouring_limit_and_exclude(
    backend: Backend,
) -> None:
    repo = backend.repo()
    a, b, c, d = [await repo.insert_request(f"a cat, take {n}") for n in range(4)]

    assert ids(await repo.claim(1)) == [a]
    await repo.defer(await loaded(repo, a), timedelta(hours=1))  # a: not due any more

    claimed = await repo.claim(10, exclude=[c])
    assert ids(claimed) == [b, d]
    assert all(j.stage is Stage.PENDING and j.as_of is not None for j in claimed)
    assert ids(await repo.claim(10)) == [c]  # b and d are leased (to us), a is not due
    assert await repo.claim(10) == []
    assert await repo.claim(0) == []


async def test_a_leased_row_is_claimable_by_another_worker_only_once_the_lease_lapses(
    backend: Backend,
) -> None:
    worker_a = backend.repo("worker-a", lease=SHORT)
    worker_b = backend.repo("worker-b")
    row = await worker_a.insert_request("a dog surfing")
    [job_a] = await worker_a.claim(5)
    assert await worker_b.claim(5) == []

    [job_b] = await backend.after(SHORT, lambda: worker_b.claim(5), lambda jobs: len(jobs) == 1)
    assert job_b.id == row

    with pytest.raises(LeaseLost):
        await worker_a.checkpoint(job_a, step(Stage.SUBMITTING, intent()), keep_lease=True)
    assert await worker_a.heartbeat([row]) == frozenset()
    after = await worker_b.checkpoint(job_b, step(Stage.SUBMITTING, intent()), keep_lease=True)
    assert after.stage is Stage.SUBMITTING


# ---------------------------------------------------------------- checkpoint


async def test_checkpoint_without_the_lease_releases_the_row_due_after_the_delay(
    backend: Backend,
) -> None:
    repo = backend.repo()
    other = backend.repo("worker-b")
    assert await repo.next_due_in() is None  # no active row at all
    row = await repo.insert_request("a slow river")
    due_now = await repo.next_due_in()
    assert due_now is not None and due_now <= timedelta(0)
    job = await claim_one(repo, row)

    retry = step(Stage.PENDING, attempts=1, delay=SHORT, error="try again later")
    after = await repo.checkpoint(job, retry, keep_lease=False)
    assert (after.stage, after.attempts) == (Stage.PENDING, 1)
    due_in = await repo.next_due_in()
    assert due_in is not None and timedelta(0) < due_in <= SHORT
    assert await other.claim(5) == []  # released, but not due yet
    assert await repo.claim(5) == []

    [again] = await backend.after(SHORT, lambda: other.claim(5), lambda jobs: len(jobs) == 1)
    assert (again.id, again.attempts) == (row, 1)


async def test_checkpoint_with_a_stale_stage_or_key_changes_nothing(backend: Backend) -> None:
    repo = backend.repo()
    row = await repo.insert_request("a red kite")
    job = await claim_one(repo, row)

    with pytest.raises(LeaseLost):
        await repo.checkpoint(
            replace(job, stage=Stage.GENERATING), step(Stage.ARCHIVING), keep_lease=True
        )
    with pytest.raises(LeaseLost):
        stale_key = replace(job, submit_key=SubmitKey(uuid.uuid4()))
        await repo.checkpoint(stale_key, step(Stage.SUBMITTING, intent()), keep_lease=True)
    assert (await loaded(repo, row)).stage is Stage.PENDING

    submitting = await repo.checkpoint(job, step(Stage.SUBMITTING, intent()), keep_lease=True)
    with pytest.raises(LeaseLost):  # the row moved on: the old read is stale
        await repo.checkpoint(job, step(Stage.SUBMITTING, intent()), keep_lease=True)
    with pytest.raises(LeaseLost):  # same stage, another key (a re-queue minted a new one)
        rekeyed = replace(submitting, submit_key=SubmitKey(uuid.uuid4()))
        await repo.checkpoint(rekeyed, step(Stage.GENERATING, RecordJob("v", 0)), keep_lease=True)
    now = await loaded(repo, row)
    assert (now.stage, now.submit_key, now.video_id) == (
        Stage.SUBMITTING,
        submitting.submit_key,
        None,
    )


async def test_each_change_round_trips_through_load(backend: Backend) -> None:
    repo = backend.repo()
    row = await repo.insert_request("a lighthouse at dusk")
    job = await claim_one(repo, row)

    recorded = intent("sora-2-pro", "1280x720", "12")
    after = await repo.checkpoint(job, step(Stage.SUBMITTING, recorded), keep_lease=True)
    seen = await loaded(repo, row)
    assert (seen.stage, seen.submit_key, seen.provider) == (
        Stage.SUBMITTING,
        recorded.submit_key,
        "simulator",
    )
    assert (seen.model, seen.size, seen.seconds) == ("sora-2-pro", "1280x720", "12")
    assert seen.submitted_at == after.as_of  # written by the clock that read the row
    assert seen.as_of > after.as_of

    after = await repo.checkpoint(
        after, step(Stage.SUBMITTING, ForgetIntent(), attempts=1), keep_lease=True
    )
    seen = await loaded(repo, row)
    assert (seen.submit_key, seen.attempts, seen.stage) == (None, 1, Stage.SUBMITTING)

    after = await repo.checkpoint(after, step(Stage.SUBMITTING, recorded), keep_lease=True)
    after = await repo.checkpoint(
        after, step(Stage.GENERATING, RecordJob("video_123", 7)), keep_lease=True
    )
    seen = await loaded(repo, row)
    assert (seen.stage, seen.video_id, seen.progress) == (Stage.GENERATING, "video_123", 7)

    after = await repo.checkpoint(
        after, step(Stage.GENERATING, RecordProgress(42)), keep_lease=True
    )
    assert (await loaded(repo, row)).progress == 42

    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    download = RecordDownload("https://provider.example/video_123/content", expires)
    after = await repo.checkpoint(after, step(Stage.ARCHIVING, download), keep_lease=True)
    seen = await loaded(repo, row)
    assert (seen.stage, seen.expires_at, seen.progress) == (Stage.ARCHIVING, expires, 100)

    # The video is recorded the moment it is stored: the row shows it as completed.
    archive = RecordArchive("https://store.example/v.mp4", 1234, "ab" * 32)
    after = await repo.checkpoint(after, step(Stage.DESCRIBING, archive), keep_lease=True)
    seen = await loaded(repo, row)
    assert (seen.stage, seen.progress, seen.video_id) == (Stage.DESCRIBING, 100, "video_123")
    video = ("completed", "https://store.example/v.mp4", "ab" * 32, True)
    assert await backend.stored(row) == (*video, None, None, None)

    media = Media(4.0, 720, 1280, "https://store.example/v.poster.webp")
    made = RecordMedia("https://store.example/v.webp", media)
    after = await repo.checkpoint(after, step(Stage.COMPLETED, made), keep_lease=False)
    seen = await loaded(repo, row)
    assert (seen.stage, seen.progress, seen.video_id) == (Stage.COMPLETED, 100, "video_123")
    poster = "https://store.example/v.poster.webp"
    assert await backend.stored(row) == (*video, "https://store.example/v.webp", poster, 4.0)
    assert await repo.next_due_in() is None  # a finished row is owed nothing
    assert await repo.claim(5) == []


async def test_media_not_made_this_time_keep_what_the_row_holds(backend: Backend) -> None:
    """A re-archive whose poster fails keeps the old one (same key, still stored)."""
    repo = backend.repo()
    row = await repo.insert_request("remade media")
    job = await claim_one(repo, row)
    job = await repo.checkpoint(job, step(Stage.DESCRIBING), keep_lease=True)
    media = Media(4.0, 720, 1280, "https://s/p.webp", None)
    job = await repo.checkpoint(
        job, step(Stage.DESCRIBING, RecordMedia("https://s/t.webp", media)), keep_lease=True
    )
    job = await repo.checkpoint(
        job, step(Stage.COMPLETED, RecordMedia(None, Media())), keep_lease=False
    )
    assert (await backend.stored(row))[4:] == ("https://s/t.webp", "https://s/p.webp", 4.0)


async def test_a_describing_row_is_owed_work_and_claimed_when_due(backend: Backend) -> None:
    """A worker that died while making the media leaves the row to the next claim."""
    repo = backend.repo(lease=SHORT)
    row = await repo.insert_request("media after a crash")
    job = await claim_one(repo, row)
    archive = RecordArchive("https://store.example/v.mp4", 1234, "ab" * 32)
    await repo.checkpoint(job, step(Stage.DESCRIBING, archive), keep_lease=True)
    assert await repo.next_due_in() is not None
    other = backend.repo("worker-b")
    taken = await backend.after(SHORT, lambda: other.claim(5), bool)
    assert [(j.id, j.stage) for j in taken] == [(row, Stage.DESCRIBING)]


async def test_a_failed_row_keeps_its_error_and_leaves_the_queue(backend: Backend) -> None:
    repo = backend.repo()
    row = await repo.insert_request("an impossible film")
    job = await claim_one(repo, row)
    after = await repo.checkpoint(
        job,
        step(Stage.FAILED, attempts=3, error="gave up", error_kind="provider_error"),
        keep_lease=False,
    )
    assert (after.stage, after.attempts, after.error_kind) == (Stage.FAILED, 3, "provider_error")
    assert (await loaded(repo, row)).error_kind == "provider_error"
    assert await repo.next_due_in() is None


async def test_a_row_that_has_not_failed_has_no_error_kind(backend: Backend) -> None:
    repo = backend.repo()
    row = await repo.insert_request("a slow film")
    job = await claim_one(repo, row)
    after = await repo.checkpoint(job, step(Stage.SUBMITTING, intent()), keep_lease=True)
    assert after.error_kind is None


# ---------------------------------------------------------------- uniqueness rules


async def test_identical_requests_may_all_be_in_doubt_and_are_found_with_their_prints(
    backend: Backend,
) -> None:
    repo = backend.repo()
    prompt = "two identical cats"
    first = await repo.insert_request(prompt, "https://photos.example/a.jpg")
    second = await repo.insert_request(prompt)
    other_size = await repo.insert_request(prompt)
    different = await repo.insert_request("two identical cats, but different")
    jobs = await claim_all(repo, first, second, other_size, different)
    print_a = bytes(range(256)) * 3
    await repo.checkpoint(jobs[0], step(Stage.SUBMITTING, intent(print_=print_a)), keep_lease=True)
    # Identical requests no longer take turns: the second one is in doubt beside the first.
    await repo.checkpoint(jobs[1], step(Stage.SUBMITTING, intent()), keep_lease=True)
    await repo.checkpoint(jobs[2], step(Stage.SUBMITTING, intent(size="1280x720")), keep_lease=True)
    await repo.checkpoint(jobs[3], step(Stage.SUBMITTING, intent()), keep_lease=True)

    twins = await repo.twins_in_doubt(prompt, "sora-2", "720x1280", "8")
    assert sorted((t.key, t.photos, t.print) for t in twins) == sorted(
        [(first, True, print_a), (second, False, None)]
    )
    assert await repo.twins_in_doubt(prompt, "sora-2", "720x1280", "4") == []


async def test_a_provider_job_belongs_to_one_row(backend: Backend) -> None:
    repo = backend.repo()
    first = await repo.insert_request("a fox, once")
    second = await repo.insert_request("a fox, twice")
    job1, job2 = await claim_all(repo, first, second)
    job1 = await repo.checkpoint(job1, step(Stage.SUBMITTING, intent()), keep_lease=True)
    job2 = await repo.checkpoint(job2, step(Stage.SUBMITTING, intent()), keep_lease=True)
    await repo.checkpoint(job1, step(Stage.GENERATING, RecordJob("video_1", 0)), keep_lease=True)

    with pytest.raises(Conflict) as refused:
        await repo.checkpoint(
            job2, step(Stage.GENERATING, RecordJob("video_1", 0)), keep_lease=True
        )
    assert refused.value.rule is Rule.ONE_ROW_PER_VIDEO
    seen = await loaded(repo, second)
    assert (seen.stage, seen.video_id, seen.submit_key) == (
        Stage.SUBMITTING,
        None,
        job2.submit_key,
    )
    assert await repo.recorded_video_ids(["video_1", "video_2"]) == frozenset({"video_1"})
    assert await repo.recorded_video_ids([]) == frozenset()


async def test_a_gateways_job_is_one_job_however_its_id_is_spelt(backend: Backend) -> None:
    """LiteLLM's create and list spell one job two ways; both rules see one job."""
    repo = backend.repo()
    created = litellm_id("video_up1", "model-1", deployment_id="dep-1")
    listed = litellm_id("video_up1", "model-1")
    other = litellm_id("video_up2", "model-1")
    first = await repo.insert_request("a gateway fox")
    second = await repo.insert_request("another gateway fox")
    job1, job2 = await claim_all(repo, first, second)
    job1 = await repo.checkpoint(job1, step(Stage.SUBMITTING, intent()), keep_lease=True)
    job2 = await repo.checkpoint(job2, step(Stage.SUBMITTING, intent()), keep_lease=True)
    await repo.checkpoint(job1, step(Stage.GENERATING, RecordJob(created, 0)), keep_lease=True)

    assert await repo.recorded_video_ids([listed, other, "video_up1"]) == frozenset(
        {listed, "video_up1"}
    )
    with pytest.raises(Conflict) as refused:
        await repo.checkpoint(job2, step(Stage.GENERATING, RecordJob(listed, 0)), keep_lease=True)
    assert refused.value.rule is Rule.ONE_ROW_PER_VIDEO
    assert (await loaded(repo, first)).video_id == created  # kept as create returned it


# ---------------------------------------------------------------- leases


async def test_heartbeat_counts_the_rows_still_ours(backend: Backend) -> None:
    worker_a = backend.repo("worker-a")
    worker_b = backend.repo("worker-b")
    one = await worker_a.insert_request("heartbeat one")
    two = await worker_a.insert_request("heartbeat two")
    assert len(await worker_a.claim(5)) == 2

    assert await worker_a.heartbeat([one, two, RowId(uuid.uuid4())]) == {one, two}
    assert await worker_b.heartbeat([one, two]) == frozenset()
    await worker_a.release([one])
    assert len(await worker_a.heartbeat([one, two])) == 1
    assert await worker_a.heartbeat([]) == frozenset()


async def test_release_and_defer_give_rows_back(backend: Backend) -> None:
    worker_a = backend.repo("worker-a")
    worker_b = backend.repo("worker-b")
    row = await worker_a.insert_request("give it back")
    job = await claim_one(worker_a, row)

    await worker_b.release([row])  # not b's to give
    assert await worker_b.claim(5) == []
    await worker_a.release([row])
    job = await claim_one(worker_b, row)  # at once: nobody waits the lease out
    assert job.stage is Stage.PENDING

    await worker_a.defer(job, timedelta(hours=1))  # not a's either
    assert await worker_a.claim(5) == []
    await worker_b.defer(job, SHORT)
    assert await worker_a.claim(5) == []
    due_in = await worker_a.next_due_in()
    assert due_in is not None and timedelta(0) < due_in <= SHORT
    [again] = await backend.after(SHORT, lambda: worker_a.claim(5), lambda jobs: len(jobs) == 1)
    assert (again.id, again.stage, again.attempts) == (row, Stage.PENDING, 0)


async def test_withdrawing_an_intent_that_landed_or_not_gives_the_row_back_due_now(
    backend: Backend,
) -> None:
    worker_a = backend.repo("worker-a")
    worker_b = backend.repo("worker-b")
    landed = await worker_a.insert_request("the intent landed, its answer was lost")
    lost = await worker_a.insert_request("the intent never landed")
    job, _ = await claim_all(worker_a, landed, lost)
    recorded = intent()
    await worker_a.checkpoint(job, step(Stage.SUBMITTING, recorded), keep_lease=True)

    await worker_b.withdraw_intent(landed, recorded.submit_key)  # not b's row: untouched
    assert (await loaded(worker_a, landed)).submit_key == recorded.submit_key
    await worker_a.withdraw_intent(landed, SubmitKey(uuid.uuid4()))  # not that key: untouched
    assert (await loaded(worker_a, landed)).submit_key == recorded.submit_key

    await worker_a.withdraw_intent(landed, recorded.submit_key)
    await worker_a.withdraw_intent(lost, recorded.submit_key)
    again = await claim_all(worker_b, landed, lost)  # both due at once, for anyone
    by_id = {j.id: j for j in again}
    assert (by_id[landed].stage, by_id[landed].submit_key) == (Stage.SUBMITTING, None)
    assert (by_id[lost].stage, by_id[lost].submit_key) == (Stage.PENDING, None)


async def test_as_of_moves_forward_between_reads(backend: Backend) -> None:
    repo = backend.repo()
    row = await repo.insert_request("the passage of time")
    first = await loaded(repo, row)
    [claimed] = await repo.claim(1)
    second = await loaded(repo, row)
    assert first.as_of < claimed.as_of < second.as_of
    assert await repo.load(RowId(uuid.uuid4())) is None


# ---------------------------------------------------------------- webhooks


async def test_wake_makes_only_the_row_waiting_on_that_job_due_now(backend: Backend) -> None:
    repo = backend.repo()
    other = backend.repo("worker-b")
    row = await repo.insert_request("a kite over the sea")
    job = await claim_one(repo, row)
    job = await repo.checkpoint(job, step(Stage.SUBMITTING, intent()), keep_lease=True)
    polling = step(Stage.GENERATING, RecordJob("job-1", 5), delay=timedelta(hours=1))
    await repo.checkpoint(job, polling, keep_lease=False)
    assert await other.claim(5) == []  # its next poll is an hour away

    assert await repo.wake("replicate", "job-unknown") is None
    assert await repo.wake("google_veo", "job-1") is None  # the job id of another provider
    assert await repo.wake("simulator", "job-1") == row  # the row's provider (intent())

    [woken] = await other.claim(5)
    assert (woken.id, woken.stage, woken.video_id) == (row, Stage.GENERATING, "job-1")
    assert woken.progress == 5  # nothing but its due time changed


async def test_wake_leaves_finished_and_unsubmitted_rows_alone(backend: Backend) -> None:
    repo = backend.repo()
    row = await repo.insert_request("a quiet lake")
    job = await claim_one(repo, row)
    job = await repo.checkpoint(job, step(Stage.SUBMITTING, intent()), keep_lease=True)
    job = await repo.checkpoint(job, step(Stage.GENERATING, RecordJob("job-2", 0)), keep_lease=True)
    await repo.checkpoint(job, step(Stage.FAILED, error="the provider failed"), keep_lease=False)

    assert await repo.wake("simulator", "job-2") is None
    assert (await loaded(repo, row)).stage is Stage.FAILED


async def test_a_new_request_is_claimed_before_rows_that_fell_due_earlier(
    backend: Backend,
) -> None:
    repo = backend.repo()
    earlier = [await repo.insert_request(f"in doubt since a while {n}") for n in range(2)]
    for job in await claim_all(repo, *earlier):  # due again at once, and not new
        await repo.checkpoint(job, step(Stage.SUBMITTING, intent()), keep_lease=False)
    fresh = await repo.insert_request("just asked for")

    [first] = await repo.claim(1)
    assert first.id == fresh  # it does not queue behind a backlog of polls and retries
    assert {j.id for j in await repo.claim(5)} == set(earlier)
