"""The daemon's failure paths: what a user relies on when something goes wrong.

The worker runs on ``MemoryRepository`` (the contract suite holds it to PostgreSQL's
semantics), whose faults can be switched on and off, and on a scripted provider (a fake
at the provider's edge). Nothing here sleeps to synchronise: tests wait on logged
events, rows' states and asyncio Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from structlog.testing import capture_logs

from service.core.events import RecordIntent
from service.core.job import Job, Policy, RowId, Stage, SubmitKey
from service.core.machine import Transition
from service.core.request import VideoRequest
from service.database.errors import DatabaseUnavailable
from service.media import fetch
from service.providers.base import ProviderJob, Variant
from service.providers.lookup import Providers
from service.storage.local import LocalStore
from service.wakeups.listen import Listener
from service.wakeups.wakeup import Wakeup
from service.worker.daemon import Worker, WorkerOptions
from service.worker.steps import Defaults, Steps
from tests.conftest import eventually
from tests.fakes.memory_repository import MemoryRepository, Row
from tests.faultproxy import PostgresFaultProxy as FlakyProxy

Logs = list[dict[str, Any]]

POLICY = Policy(
    poll_interval=timedelta(milliseconds=50),
    max_attempts=3,
    retry_base=timedelta(milliseconds=50),
    retry_cap=timedelta(milliseconds=200),
)


class ScriptedProvider:
    """A provider whose answers the test decides: instant, hanging, or a bug."""

    name = "scripted"
    submit_timeout = timedelta(seconds=1)

    def __init__(self) -> None:
        self.submitted: list[VideoRequest] = []
        self.submit_started = asyncio.Event()
        self.submit_cancelled = asyncio.Event()
        self.hang_submit = False
        self.buggy_prompts: set[str] = set()

    def validate(self, model: str, size: str, seconds: str) -> None:
        pass

    async def submit(self, request: VideoRequest) -> ProviderJob:
        self.submitted.append(request)
        self.submit_started.set()
        if self.hang_submit:
            try:
                await asyncio.Event().wait()  # a create that never answers
            except asyncio.CancelledError:
                self.submit_cancelled.set()
                raise
        kind = "buggy" if request.prompt in self.buggy_prompts else "video"
        return ProviderJob(f"{kind}_{len(self.submitted)}", "queued", 0, "queued")

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        return []

    async def retrieve(self, job_id: str) -> ProviderJob:
        if job_id.startswith("buggy"):
            raise ValueError("a bug in the provider adapter")
        return ProviderJob(job_id, "completed", 100, "completed")

    @asynccontextmanager
    async def download(self, job_id: str, variant: Variant = "video") -> AsyncIterator[Any]:
        async def chunks() -> AsyncIterator[bytes]:
            yield f"{variant} of {job_id}".encode()

        yield chunks()

    def content_url(self, job_id: str) -> str:
        return f"https://provider.invalid/videos/{job_id}/content"

    async def aclose(self) -> None:
        pass


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def logs() -> Iterable[Logs]:
    with capture_logs() as captured:
        yield captured


def make_worker(
    repo: MemoryRepository,
    provider: ScriptedProvider,
    http: httpx.AsyncClient,
    tmp_path: Path,
    **options: Any,
) -> Worker:
    providers = Providers(default=provider.name)
    providers.add(provider)
    for extra in options.pop("more_providers", ()):
        providers.add(extra)
    steps = Steps(
        providers,
        LocalStore(tmp_path / "store", "http://store.invalid"),
        defaults=Defaults("sora-2", "720x1280", "8"),
        video_bucket="videos",
        photo_limits=fetch.Limits(max_bytes=1_000_000, timeout=1.0),
        ledger=repo,
    )
    values: dict[str, Any] = dict(
        concurrency=4,
        sweep_interval=0.5,
        lease_seconds=repo.lease.total_seconds(),
        shutdown_grace=1.0,
        policy=POLICY,
        restart_delay=0.05,
    )
    values.update(options)
    return Worker(repo, steps, WorkerOptions(**values))


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)


async def logged(
    logs: Logs,
    event: str,
    where: Callable[[dict[str, Any]], bool] = lambda _: True,
    *,
    count: int = 1,
    within: float = 4,
) -> list[dict[str, Any]]:
    """Wait until ``event`` was logged ``count`` times (matching ``where``); return them."""

    async def matching() -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == event and where(e)]

    found: list[dict[str, Any]] = await eventually(
        matching, lambda found: len(found) >= count, within=within
    )
    return found


async def row_state(repo: MemoryRepository, row_id: RowId) -> Row:
    return repo.rows[row_id]


# ---------------------------------------------------------------- (a) shutdown


async def test_a_hung_step_is_cancelled_after_the_grace_and_its_row_released_at_once(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    repo = MemoryRepository("worker-a", timedelta(minutes=5))
    provider.hang_submit = True
    row = await repo.insert_request("a create that never answers")
    worker = make_worker(repo, provider, http, tmp_path, shutdown_grace=0.2)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(provider.submit_started.wait(), 4)
    assert repo.rows[row].locked_by == "worker-a"

    worker.stop()
    await asyncio.wait_for(task, 4)  # run() returns within the grace, not the lease

    assert provider.submit_cancelled.is_set()
    [cancelling] = await logged(logs, "worker.cancelling")
    assert cancelling["rows"] == [str(row)]
    assert (repo.rows[row].locked_by, repo.rows[row].locked_until) == (None, None)
    # Another worker takes it over now, not five minutes from now; the intent was
    # recorded before the create, so it will reconcile rather than pay twice.
    [taken] = await repo.replica("worker-b").claim(5)
    assert (taken.id, taken.stage) == (row, Stage.SUBMITTING)
    assert taken.submit_key is not None


# ---------------------------------------------------------------- (b) database outage


async def test_a_database_outage_is_said_once_waited_out_and_its_end_reported(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    repo = MemoryRepository("worker-a")
    row = await repo.insert_request("made after the outage")
    repo.fail_with = DatabaseUnavailable("claiming rows: connection refused")
    worker = make_worker(repo, provider, http, tmp_path, max_backoff=0.4)

    async def failures() -> int:
        return repo.failures

    async with running(worker) as task:
        await eventually(failures, lambda n: n >= 5)  # it keeps probing, pauses capped
        outage = [e for e in logs if e["event"] == "worker.database_unavailable"]
        assert len(outage) == 1, outage  # said once, not once per failed claim
        assert outage[0]["error"] == "claiming rows: connection refused"
        assert outage[0]["retry_in"] == 0.25
        assert not task.done()  # the worker waits the outage out; it never exits
        assert repo.rows[row].stage is Stage.PENDING

        repo.fail_with = None
        back = await logged(logs, "worker.database_back")
        assert back[0]["down_for_s"] >= 0
        done = await eventually(
            lambda: row_state(repo, row), lambda r: r.stage is Stage.COMPLETED, within=4
        )
        assert done.video_url is not None and done.error is None

        # The outage ended: the next one is said again and starts from the shortest pause.
        repo.fail_with = DatabaseUnavailable("again")
        again = await logged(logs, "worker.database_unavailable", count=2)
        assert (again[1]["error"], again[1]["retry_in"]) == ("again", 0.25)
        repo.fail_with = None


# ---------------------------------------------------------------- (c) side tasks


class HeartbeatCrashesOnce(MemoryRepository):
    """A bug (not a database error) in the first heartbeat; later ones work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crashed = False
        self.beats_after_crash = 0

    async def heartbeat(self, ids: Iterable[RowId]) -> frozenset[RowId]:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("a bug in heartbeat")
        self.beats_after_crash += 1
        return await super().heartbeat(ids)


async def test_a_crashed_heartbeat_is_restarted_and_keeps_the_lease(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    lease = timedelta(seconds=0.6)
    repo = HeartbeatCrashesOnce("worker-a", lease)
    provider.hang_submit = True  # keeps the row in flight, so heartbeats have work
    row = await repo.insert_request("a long create")
    worker = make_worker(repo, provider, http, tmp_path, shutdown_grace=0.1)

    async with running(worker):
        await asyncio.wait_for(provider.submit_started.wait(), 4)
        first_lease_end = repo.rows[row].locked_until
        assert first_lease_end is not None

        [died] = await logged(logs, "worker.side_task_died")
        assert (died["task"], died["restart_in"]) == ("heartbeat", 0.05)
        assert died["log_level"] == "error"
        extended = await eventually(
            lambda: row_state(repo, row),
            lambda r: r.locked_until is not None and r.locked_until > first_lease_end + lease,
            within=4,
        )
        assert extended.locked_by == "worker-a"
        assert repo.beats_after_crash >= 1
        # The first lease is long over, yet nobody else may take the row.
        assert datetime.now(UTC) > first_lease_end
        assert await repo.replica("worker-b").claim(5) == []


# ---------------------------------------------------------------- (d) a bug in a step


async def test_a_crashing_step_retries_its_row_and_the_worker_serves_the_others(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    repo = MemoryRepository("worker-a")
    provider.buggy_prompts.add("polled by a buggy adapter")
    buggy = await repo.insert_request("polled by a buggy adapter")
    fine = await repo.insert_request("an ordinary video")
    worker = make_worker(repo, provider, http, tmp_path)

    async with running(worker):
        crashed = await logged(logs, "video.step_crashed", count=2)
        assert crashed[0]["action"] == "poll"
        assert crashed[0]["exc_info"] is True  # logged with its traceback
        kept = await eventually(lambda: row_state(repo, buggy), lambda r: r.attempts >= 2, within=4)
        assert kept.stage is Stage.GENERATING  # the paid-for job is not lost
        assert kept.video_id is not None and kept.video_id.startswith("buggy")
        assert kept.error is not None
        assert kept.error.endswith("will retry: internal error in poll: ValueError")
        done = await eventually(
            lambda: row_state(repo, fine), lambda r: r.stage is Stage.COMPLETED, within=4
        )
        assert done.video_url is not None


# ---------------------------------------------------------------- (e) identical requests


async def test_identical_requests_are_sent_side_by_side_not_in_turns(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    repo = MemoryRepository("worker-a")
    provider.hang_submit = True  # both creates stay in flight: in doubt together
    for _ in range(2):
        await repo.insert_request("the same cat twice")

    async def sent() -> int:
        return len(provider.submitted)

    async with running(make_worker(repo, provider, http, tmp_path)):
        await eventually(sent, lambda n: n == 2, within=4)
        keys = {row.submit_key for row in repo.rows.values()}
    assert None not in keys and len(keys) == 2  # each with its own intent recorded


# ---------------------------------------------------------------- (f) LISTEN self-check


@asynccontextmanager
async def listening_through(proxy: FlakyProxy, db_url: str, logs: Logs) -> AsyncIterator[Wakeup]:
    """A Listener with a fast self-check, connected through ``proxy`` and ready."""
    parts = urlsplit(db_url)
    async with proxy as port:
        dsn = f"postgresql://{parts.username}@127.0.0.1:{port}{parts.path}?sslmode=disable"
        wakeup = Wakeup()
        listener = Listener(dsn, check_every=0.1, echo_timeout=1.0, max_backoff=0.5)
        task = asyncio.create_task(listener.run(wakeup))
        try:
            await logged(logs, "listen.ready")
            assert "listen.connected" in await wakeup.wait(4)
            yield wakeup
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_listener_notices_notifications_stop_and_reconnects(
    db_url: str, logs: Logs
) -> None:
    proxy = FlakyProxy(db_url)
    async with listening_through(proxy, db_url, logs) as wakeup:
        proxy.deaf = True  # queries still answer; the echo never comes
        [lost] = await logged(logs, "listen.lost")
        assert lost["error"] == "LISTEN self-check got no echo"
        assert lost["log_level"] == "warning"
        proxy.deaf = False
        await logged(logs, "listen.ready", count=2)
        # Notifications sent while deaf are gone for good: the reconnect says "look again".
        assert "listen.connected" in await wakeup.wait(4)
        assert proxy.connections == 2


async def test_the_listener_notices_a_silent_connection_and_reconnects(
    db_url: str, logs: Logs
) -> None:
    proxy = FlakyProxy(db_url)
    async with listening_through(proxy, db_url, logs) as wakeup:
        proxy.freeze()  # the server's bytes stop arriving at all
        await logged(logs, "listen.lost", within=2)
        proxy.thaw()
        await logged(logs, "listen.ready", count=2)
        assert "listen.connected" in await wakeup.wait(4)


# ---------------------------------------------------------------- leases


class ReleaseReplyIsSlow(MemoryRepository):
    """A checkpoint that gives its lease up is written, then its reply takes until the
    next heartbeat has run: the race a real network opens between the two."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.released = asyncio.Event()
        self.heartbeat_after_release = asyncio.Event()

    async def checkpoint(self, job: Job, transition: Transition, *, keep_lease: bool) -> Job:
        after = await super().checkpoint(job, transition, keep_lease=keep_lease)
        if not keep_lease:
            self.released.set()
            async with asyncio.timeout(5):
                await self.heartbeat_after_release.wait()
        return after

    async def heartbeat(self, ids: Iterable[RowId]) -> frozenset[RowId]:
        kept = await super().heartbeat(ids)
        if self.released.is_set():
            self.heartbeat_after_release.set()
        return kept


async def test_a_lease_given_up_while_a_heartbeat_runs_is_not_reported_lost(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    repo = ReleaseReplyIsSlow("worker-a", lease=timedelta(milliseconds=300))
    provider.hang_submit = True  # this row stays in flight: heartbeats keep running
    held = await repo.insert_request("held while its create hangs")
    given_up = await repo.insert_request("")  # refused at once: failed, its lease given up
    worker = make_worker(repo, provider, http, tmp_path)

    async with running(worker):
        await eventually(lambda: row_state(repo, given_up), lambda r: r.stage is Stage.FAILED)
        async with asyncio.timeout(5):
            await repo.heartbeat_after_release.wait()
        await logged(logs, "video.failed")
        assert repo.rows[held].locked_by == "worker-a"  # still ours, still extended
    assert [e for e in logs if e["event"] == "worker.leases_lost"] == []


# ---------------------------------------------------------------- an intent's answer lost


class IntentAnswerLost(MemoryRepository):
    """The intent's checkpoint lands, then the connection dies before its answer."""

    async def checkpoint(self, job: Job, transition: Transition, *, keep_lease: bool) -> Job:
        after = await super().checkpoint(job, transition, keep_lease=keep_lease)
        if isinstance(transition.change, RecordIntent) and not getattr(self, "lost", False):
            self.lost = True
            raise DatabaseUnavailable("checkpointing: connection was closed")
        return after


async def test_an_intent_whose_answer_was_lost_is_withdrawn_not_left_in_doubt(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    """The create was never sent, so the row must not wait out a create timeout (nor a
    lease) as "in doubt": it is prepared again at once and submitted exactly once."""
    repo = IntentAnswerLost("worker-a", lease=timedelta(minutes=5))
    provider.submit_timeout = timedelta(hours=1)
    row = await repo.insert_request("answer lost on the wire")
    async with running(make_worker(repo, provider, http, tmp_path)):
        await logged(logs, "video.intent_withdrawn")
        done = await eventually(
            lambda: row_state(repo, row), lambda r: r.stage is Stage.COMPLETED, within=4
        )
    assert done.error is None
    assert len(provider.submitted) == 1


async def test_a_database_outage_inside_a_step_is_a_retry_not_a_crash(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    repo = MemoryRepository("worker-a")
    row = await repo.insert_request("asked about its twins during an outage")
    in_doubt = repo.rows[row]  # a create whose answer was lost, long enough ago
    in_doubt.stage, in_doubt.status = Stage.SUBMITTING, "processing"
    in_doubt.submit_key = SubmitKey(uuid.uuid4())
    in_doubt.submitted_at = datetime.now(UTC) - timedelta(seconds=5)
    in_doubt.model, in_doubt.size, in_doubt.seconds = "sora-2", "720x1280", "8"
    repo.fail_methods = frozenset({"recorded_video_ids"})
    repo.fail_with = DatabaseUnavailable("looking up provider ids: reset")
    async with running(make_worker(repo, provider, http, tmp_path)):
        said = await logged(logs, "video.step_database_error")
        assert said[0]["action"] == "reconcile"
        retried = await eventually(lambda: row_state(repo, row), lambda r: r.attempts >= 1)
        assert "database unavailable during reconcile" in (retried.error or "")
        repo.fail_with = None
        await eventually(lambda: row_state(repo, row), lambda r: r.stage is Stage.COMPLETED)
    assert [e for e in logs if e["event"] == "video.step_crashed"] == []


# ---------------------------------------------------------------- the claim loop


class ClaimHitsABug(MemoryRepository):
    """The first claim raises what no layer expected (as asyncpg's InternalClientError
    once escaped the driver's error types during a restart)."""

    async def claim(
        self, limit: int, exclude: Iterable[RowId] = (), *, fresh_only: bool = False
    ) -> list[Job]:
        if not getattr(self, "raised", False):
            self.raised = True
            raise RuntimeError("cannot switch to state 15; another operation is in progress")
        return await super().claim(limit, exclude, fresh_only=fresh_only)


async def test_a_bug_in_the_claim_loop_is_logged_and_the_worker_goes_on(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    repo = ClaimHitsABug("worker-a")
    row = await repo.insert_request("claimed after a bug")
    async with running(make_worker(repo, provider, http, tmp_path, max_backoff=0.1)) as task:
        await logged(logs, "worker.claim_loop_failed")
        await eventually(lambda: row_state(repo, row), lambda r: r.stage is Stage.COMPLETED)
        assert not task.done()


async def test_the_listener_reconnecting_ends_an_outage_pause_at_once(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path, logs: Logs
) -> None:
    """A long outage grows the pause between claims; the database's return, announced by
    any source reconnecting, must not wait that pause out."""
    repo = MemoryRepository("worker-a")
    row = await repo.insert_request("back as soon as the database is")
    repo.fail_with = DatabaseUnavailable("claiming rows: connection refused")
    worker = make_worker(repo, provider, http, tmp_path, max_backoff=30.0)

    async def failures() -> int:
        return repo.failures

    async with running(worker):
        # 0.25 + 0.5 + 1 + 2 s of pauses: the pause now under way is 4 s long.
        await eventually(failures, lambda n: n >= 5, within=10)
        repo.fail_with = None
        worker.wakeup.set("listen.connected")
        await logged(logs, "worker.database_back", within=1.0)
        await eventually(lambda: row_state(repo, row), lambda r: r.stage is Stage.COMPLETED)


# ---------------------------------------------------------------- providers per row


async def test_a_submitted_row_keeps_its_provider_and_model_whatever_the_default(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The default is ``provider``; a row submitted earlier through ``earlier`` is polled
    and archived there, with the model it was submitted with."""
    earlier = ScriptedProvider()
    earlier.name = "earlier"
    repo = MemoryRepository()
    resumed = await repo.insert_request("submitted before the settings changed")
    repo.rows[resumed] = replace(
        repo.rows[resumed],
        stage=Stage.GENERATING,
        status="processing",
        provider="earlier",
        model="model-of-then",
        video_id="video_then",
        submitted_at=repo.table.clock(),
    )
    fresh = await repo.insert_request("asked now")
    worker = make_worker(repo, provider, http, tmp_path, more_providers=[earlier])
    async with running(worker):
        done = await eventually(
            lambda: row_state(repo, resumed), lambda r: r.stage is Stage.COMPLETED
        )
        new = await eventually(lambda: row_state(repo, fresh), lambda r: r.stage is Stage.COMPLETED)
    assert (done.provider, done.model, done.video_id) == ("earlier", "model-of-then", "video_then")
    assert done.video_url is not None and done.video_url.endswith("/video_then.mp4")
    assert new.provider == "scripted" and new.model == "sora-2"
    assert earlier.submitted == [] and [r.prompt for r in provider.submitted] == ["asked now"]


async def test_a_new_row_naming_a_provider_this_worker_lacks_fails_naming_the_ones_it_has(
    provider: ScriptedProvider, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    repo = MemoryRepository()
    row_id = await repo.insert_request("for a provider nobody configured")
    repo.rows[row_id] = replace(repo.rows[row_id], provider="google_veo")
    async with running(make_worker(repo, provider, http, tmp_path)):
        row = await eventually(lambda: row_state(repo, row_id), lambda r: r.stage is Stage.FAILED)
    assert row.error_kind == "invalid_request"
    assert row.error is not None and "'google_veo'" in row.error and "scripted" in row.error


# ---------------------------------------------------------------- the dispatch lane


class HangingPolls(ScriptedProvider):
    """Polls that hang until released: every slot they hold stays busy."""

    submit_timeout = timedelta(seconds=30)

    def __init__(self) -> None:
        super().__init__()
        self.polling = 0
        self.release = asyncio.Event()
        self.created: dict[str, asyncio.Event] = {}

    async def submit(self, request: VideoRequest) -> ProviderJob:
        self.created.setdefault(request.prompt, asyncio.Event()).set()
        return await super().submit(request)

    async def retrieve(self, job_id: str) -> ProviderJob:
        self.polling += 1
        try:
            await self.release.wait()
        finally:
            self.polling -= 1
        return ProviderJob(job_id, "running", 50, "in_progress")


async def test_a_new_row_is_dispatched_while_polls_hold_every_other_slot(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    repo = MemoryRepository("worker-lane", timedelta(minutes=5))
    provider = HangingPolls()
    for i in range(8):
        await repo.insert_request(f"polled {i}")
    worker = make_worker(repo, provider, http, tmp_path, concurrency=8)
    async with running(worker):
        reserved = 8 // 8  # DISPATCH_RESERVE: the loop's polls leave this many slots free

        async def polls() -> int:
            return provider.polling

        await eventually(polls, lambda n: n == 8 - reserved, within=30)
        created = provider.created.setdefault("a new request", asyncio.Event())
        await repo.insert_request("a new request")
        worker.wakeup.set("notify")  # what the LISTEN connection does on the INSERT
        await asyncio.wait_for(created.wait(), 10)
        assert provider.polling == 8 - reserved  # every poll still hangs meanwhile
        provider.release.set()
