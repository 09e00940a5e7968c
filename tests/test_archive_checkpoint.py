"""The archive is a checkpoint: a stored video is recorded at once, and a crash at any
line resumes without losing it, paying twice or failing it (issue 28, findings 1-2).

The worker runs on ``MemoryRepository`` (held to PostgreSQL's semantics by the contract
suite) with a "crash" injected where it hurts: the checkpoint right after the upload
never lands, so the row stays ``archiving`` with its video in the bucket, exactly as if
the process died between the two. Storage is our Supabase fake, made faithful to the
real server (``tests/test_storage_wire.py``): it refuses a PATCH to a key that exists
unless the PATCH itself says ``x-upsert``. The videos are 7 MiB, so they go through
TUS, and real MP4s (a rendered clip padded with a ``free`` box), so their media can be
read.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.core.job import Job, Policy, RowId, Stage
from service.core.machine import Transition
from service.core.request import VideoRequest
from service.database.errors import DatabaseUnavailable
from service.local.simulator.media import render_mp4
from service.media import fetch
from service.providers.base import ProviderJob, Variant, VideoGone
from service.providers.lookup import Providers
from service.storage.supabase import SupabaseStore
from service.worker.daemon import Worker, WorkerOptions
from service.worker.steps import Defaults, Steps
from tests.conftest import eventually
from tests.fakes.memory_repository import MemoryRepository, Row
from tests.fakes.supabase_storage import FakeSupabaseStorage, started
from tests.faultproxy import FaultProxy
from tests.storage_server import storage_server

BUCKET = "hug-videos"
SIZE = 7 * 1024 * 1024
PIECE = 256 * 1024
POLICY = Policy(
    poll_interval=timedelta(milliseconds=50),
    max_attempts=3,
    retry_base=timedelta(milliseconds=50),
    retry_cap=timedelta(milliseconds=200),
)
LEASE = timedelta(milliseconds=400)


def big_mp4(seed: str) -> bytes:
    """A real MP4 of exactly SIZE bytes: a short clip, then a ``free`` box."""
    clip = render_mp4(128, 96, 1, prompt=seed, reference=None, seed=seed)
    pad = SIZE - len(clip)
    return clip + struct.pack(">I", pad) + b"free" + bytes(pad - 8)


class BigVideoProvider:
    """A provider that finished one 7 MiB video per job; what it does next is scripted."""

    name = "scripted"
    submit_timeout = timedelta(seconds=2)

    def __init__(self) -> None:
        self.submitted: list[VideoRequest] = []
        self.videos: dict[str, bytes] = {}
        self.downloads = 0
        self.gone_after: int | None = None
        """Video downloads served before the provider's copy is gone (VideoGone)."""
        self.thumbnail_hangs = asyncio.Event()
        self.thumbnail_released = asyncio.Event()
        self.hang_thumbnails = False

    def validate(self, model: str, size: str, seconds: str) -> None:
        pass

    async def submit(self, request: VideoRequest) -> ProviderJob:
        self.submitted.append(request)
        job_id = f"video_{len(self.submitted)}"
        self.videos[job_id] = big_mp4(job_id)
        return ProviderJob(job_id, "completed", 100, "completed")

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        return []

    async def retrieve(self, job_id: str) -> ProviderJob:
        return ProviderJob(job_id, "completed", 100, "completed")

    @asynccontextmanager
    async def download(self, job_id: str, variant: Variant = "video") -> AsyncIterator[Any]:
        if variant == "thumbnail":
            if self.hang_thumbnails:
                self.thumbnail_hangs.set()
                await self.thumbnail_released.wait()
            raise VideoGone(f"{job_id} has no thumbnail")
        if self.gone_after is not None and self.downloads >= self.gone_after:
            raise VideoGone(f"{job_id} expired at the provider")
        self.downloads += 1
        data = self.videos[job_id]

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), PIECE):
                yield data[start : start + PIECE]

        yield chunks()

    def content_url(self, job_id: str) -> str:
        return f"https://provider.invalid/videos/{job_id}/content"

    async def aclose(self) -> None:
        pass


class CrashingRepository(MemoryRepository):
    """A worker that dies right after a step, before its checkpoint lands: the write to
    ``crash_into`` (the stage a checkpoint would move a row to) fails ``crashes`` times."""

    def __init__(self, *args: Any, crash_into: Stage, crashes: int = 1, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.crash_into = crash_into
        self.crashes = crashes

    async def checkpoint(self, job: Job, transition: Transition, *, keep_lease: bool) -> Job:
        if transition.stage is self.crash_into and self.crashes > 0:
            self.crashes -= 1
            raise DatabaseUnavailable("the worker died before this checkpoint")
        return await super().checkpoint(job, transition, keep_lease=keep_lease)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSupabaseStorage]:
    async with started() as fake:
        fake.add_bucket(BUCKET, public=True, allowed_mime_types=["video/mp4", "image/webp"])
        yield fake


def make_worker(
    repo: MemoryRepository, provider: BigVideoProvider, store: SupabaseStore, tmp_path: Path
) -> Worker:
    providers = Providers(default=provider.name)
    providers.add(provider)
    steps = Steps(
        providers,
        store,
        defaults=Defaults("sora-2", "720x1280", "8"),
        video_bucket=BUCKET,
        photo_limits=fetch.Limits(max_bytes=1_000_000, timeout=1.0),
        ledger=repo,
    )
    options = WorkerOptions(
        concurrency=2,
        sweep_interval=0.1,
        lease_seconds=LEASE.total_seconds(),
        shutdown_grace=2.0,
        policy=POLICY,
    )
    return Worker(repo, steps, options)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def reaches(
    repo: MemoryRepository, row: RowId, check: Callable[[Row], bool], within: float = 20
) -> Row:
    async def current() -> Row:
        return repo.rows[row]

    found: Row = await eventually(current, check, within=within)
    return found


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def completed(
    repo: MemoryRepository, provider: BigVideoProvider, store: SupabaseStore, tmp_path: Path
) -> Row:
    """Ask for one video and run a worker until its row completes."""
    row = await repo.insert_request("a hug")
    try:
        async with running(make_worker(repo, provider, store, tmp_path)):
            return await reaches(repo, row, lambda r: r.stage is Stage.COMPLETED)
    finally:
        await store.aclose()


async def test_a_crash_after_the_upload_is_retried_into_the_stored_key_and_completes(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    """The retry stores the video again over the same key (x-upsert on every PATCH) and
    records it; before, every PATCH answered 409 "The resource already exists" until
    the row failed while the whole video sat in the bucket."""
    repo = CrashingRepository("worker-a", LEASE, crash_into=Stage.DESCRIBING)
    provider = BigVideoProvider()
    store = SupabaseStore(fake.url, fake.service_key, tus_pauses=(0.0,) * 5)
    done = await completed(repo, provider, store, tmp_path)
    key = f"{done.id}/video_1.mp4"
    assert done.video_url == store.public_url(BUCKET, key)
    assert (
        done.video_sha256
        == sha(provider.videos["video_1"])
        == fake.objects[f"{BUCKET}/{key}"].sha256()
    )
    assert (done.error, done.error_kind, done.media.duration_seconds) == (None, None, 1.0)
    assert len(provider.submitted) == 1  # paid once
    assert provider.downloads == 2 and len(fake.tus) == 2  # stored twice, same key
    assert not [r for r in fake.tus_refusals if r[1] == 409]


async def test_a_crash_after_the_upload_is_recorded_from_the_store_when_the_provider_copy_is_gone(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    """``expired`` is never written for a row whose video is in the bucket: the retry
    finds it there, reads it back for its size and checksum, and records it."""
    repo = CrashingRepository("worker-a", LEASE, crash_into=Stage.DESCRIBING)
    provider = BigVideoProvider()
    provider.gone_after = 1  # the link expires right after the first (crashed) archive
    store = SupabaseStore(fake.url, fake.service_key, tus_pauses=(0.0,) * 5)
    row = await repo.insert_request("stored, then the link expired")
    worker = make_worker(repo, provider, store, tmp_path)
    try:
        with capture_logs() as logs:
            async with running(worker):
                done = await reaches(repo, row, lambda r: r.stage is Stage.COMPLETED)
    finally:
        await store.aclose()
    assert (done.error_kind, done.video_sha256) == (None, sha(provider.videos["video_1"]))
    assert done.media.duration_seconds == 1.0 and done.media.poster_url  # from the copy read back
    assert provider.downloads == 1 and len(fake.tus) == 1  # never uploaded again
    recovered = [e for e in logs if e["event"] == "video.archive_recovered"]
    assert len(recovered) == 1 and "expired at the provider" in recovered[0]["reason"]
    assert b"sora_archived_from_store_total 1.0" in worker.metrics.render(None)


async def test_a_video_the_store_cannot_vouch_for_is_never_failed_as_expired(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    """The provider's copy is gone and storage does not answer: whether the video is
    stored is unknown, so the row keeps trying past every deadline; once storage
    answers again, the video an earlier attempt stored is found and recorded."""
    proxy = FaultProxy(("127.0.0.1", int(fake.url.rsplit(":", 1)[1])))
    async with proxy:
        fake.url = f"http://127.0.0.1:{proxy.port}"  # the URLs it hands out
        repo = CrashingRepository("worker-a", LEASE, crash_into=Stage.DESCRIBING)
        provider = BigVideoProvider()
        provider.gone_after = 1
        store = SupabaseStore(fake.url, fake.service_key, tus_pauses=(0.0,) * 5)
        row = await repo.insert_request("stored, link expired, storage down")
        worker = make_worker(repo, provider, store, tmp_path)
        try:
            async with running(worker):
                await reaches(repo, row, lambda r: repo.crashes == 0)  # stored, then died
                proxy.refuse()
                proxy.cut_all()
                waiting = await reaches(repo, row, lambda r: r.attempts >= POLICY.max_attempts + 2)
                # Far past max_attempts, and past the link's expiry: still archiving.
                assert (waiting.stage, waiting.error_kind) == (Stage.ARCHIVING, None)
                assert "whether storage already holds the video is unknown" in (waiting.error or "")
                proxy.restore()
                done = await reaches(repo, row, lambda r: r.stage is Stage.COMPLETED)
        finally:
            await store.aclose()
    assert (done.error_kind, done.video_sha256) == (None, sha(provider.videos["video_1"]))


async def test_the_row_records_the_video_before_its_media_are_made(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    """Issue 28, finding 2: the archive used to fetch the provider's thumbnail (up to
    two minutes), probe and store a poster before writing the row; a crash or an expired
    link in that window lost track of a stored video. Now apps see it at once."""
    repo = MemoryRepository("worker-a", LEASE)
    provider = BigVideoProvider()
    provider.hang_thumbnails = True
    store = SupabaseStore(fake.url, fake.service_key)
    row = await repo.insert_request("seen before its poster")
    try:
        async with running(make_worker(repo, provider, store, tmp_path)):
            await asyncio.wait_for(provider.thumbnail_hangs.wait(), 20)
            shown = repo.rows[row]
            assert (shown.stage, shown.status) == (Stage.DESCRIBING, "completed")
            assert shown.video_sha256 == sha(provider.videos["video_1"])
            assert shown.video_url and shown.completed_at is not None
            assert shown.media.poster_url is None  # still on its way
            provider.thumbnail_released.set()
            done = await reaches(repo, row, lambda r: r.stage is Stage.COMPLETED)
    finally:
        await store.aclose()
    assert done.media.poster_url and done.thumbnail_url == done.media.poster_url
    assert done.completed_at == shown.completed_at


async def test_a_crash_while_making_the_media_leaves_the_video_and_the_next_claim_makes_them(
    fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    """Another claim (here, after the lease lapsed) reads the video back from the store,
    never from the provider, whose copy may be gone by then."""
    repo = CrashingRepository("worker-a", LEASE, crash_into=Stage.COMPLETED)
    provider = BigVideoProvider()
    provider.gone_after = 1
    done = await completed(repo, provider, SupabaseStore(fake.url, fake.service_key), tmp_path)
    assert (done.error, done.error_kind, done.attempts) == (None, None, 0)
    assert done.media.duration_seconds == 1.0 and done.media.poster_url
    assert provider.downloads == 1 and len(provider.submitted) == 1


async def test_a_worker_archives_into_the_storage_server_and_rearchive_replaces_it(
    db_url: str, tmp_path: Path
) -> None:
    """End to end through the runtime, against the fake or, with SORA_TEST_SUPABASE_URL,
    the real server: a row completes with its video and poster stored, and a rearchive
    stores the video again over its key and completes the row again."""
    from service.database.operator import Operator
    from service.local.simulator import SimulatorConfig
    from service.runtime import open_runtime
    from tests.conftest import FAST_SIMULATOR, make_settings
    from tests.test_pipeline import finished, row_of
    from tests.test_pipeline import running as running_runtime

    async with storage_server() as server:
        server.created(server.videos)
        server.created(server.images)
        settings = make_settings(
            db_url,
            tmp_path,
            supabase_url=server.url,
            supabase_service_role_key=server.service_key,
            video_bucket=server.videos,
            image_bucket=server.images,
        )
        config = SimulatorConfig(**FAST_SIMULATOR)
        async with open_runtime(
            settings, apply_migrations=False, stand_in_configs={"openai": config}
        ) as runtime:
            row_id = await runtime.repo.insert_request("to the real thing")
            async with running_runtime(runtime.worker()):
                first = await finished(runtime, row_id)
                assert first["stage"] == "completed", first["error"]
                assert await Operator(runtime.pool).rearchive(row_id)
                again = await eventually(
                    lambda: row_of(runtime, row_id),
                    lambda r: (
                        r["stage"] == "completed" and r["completed_at"] > first["completed_at"]
                    ),
                )
        key = f"{row_id}/{first['video_id']}.mp4"
        held = await server.object_bytes(server.videos, key)
        assert held is not None and sha(held) == again["video_sha256"] == first["video_sha256"]
        assert first["poster_url"] and again["poster_url"] == first["poster_url"]
        poster = first["poster_url"].split(f"/{server.videos}/", 1)[1]
        assert await server.object_bytes(server.videos, poster)
        assert (again["error"], again["error_kind"], again["attempts"]) == (None, None, 0)
