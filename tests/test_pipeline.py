"""End to end: a row inserted into PostgreSQL becomes a stored, permanent video.

Real PostgreSQL, the real daemon, the official openai SDK talking to the simulator over
HTTP, local storage served over HTTP. Only the provider's servers are simulated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import av
import httpx
import pytest
from aiohttp import web
from PIL import Image
from structlog.testing import capture_logs

from service.database.errors import Refused
from service.local.simulator import PROFILES, FailureRule
from service.media import thumbnails
from service.runtime import Runtime
from service.web.serving import serve
from service.worker.daemon import Worker
from tests.conftest import changed, eventually, replica_of, simulator_of


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def row_of(runtime: Runtime, row_id: UUID) -> dict[str, Any]:
    row = await runtime.operator.fetch_row(row_id)
    assert row is not None
    return row


async def finished(runtime: Runtime, row_id: UUID, within: float = 60.0) -> dict[str, Any]:
    return await eventually(
        lambda: row_of(runtime, row_id),
        lambda r: r["stage"] in ("completed", "failed"),  # media made too (not describing)
        within=within,
    )


def photo(color: tuple[int, int, int], size: tuple[int, int] = (300, 400)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


@asynccontextmanager
async def photo_host(routes: dict[str, tuple[int, bytes, str]]) -> AsyncIterator[str]:
    """A tiny HTTP server serving fixed responses: path -> (status, body, content type)."""

    async def handler(request: web.Request) -> web.Response:
        status, body, ctype = routes.get(request.path, (404, b"not found", "text/plain"))
        return web.Response(status=status, body=body, content_type=ctype)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def allowing(runtime: Runtime, base: str) -> Runtime:
    """The runtime with the photo host at ``base`` allowed, the way an operator allows
    one (SORA_IMAGE_ALLOW_HOSTS): photo hosts on 127.0.0.1 are refused by default."""
    entry = urlsplit(base).netloc
    settings = changed(runtime.settings, image_allow_hosts=entry)
    return dataclasses.replace(runtime, settings=settings)


async def leave_in_doubt(
    runtime: Runtime, row_id: UUID, submitted_ago: timedelta = timedelta(seconds=1)
) -> None:
    """What a worker killed mid-create leaves: intent recorded, outcome unknown."""
    await runtime.pool.execute(
        """update videos set stage = 'submitting', status = 'processing', model = 'sora-2',
           size = '720x1280', seconds = '4', provider = 'openai', submit_key = gen_random_uuid(),
           submitted_at = now() - $2::interval, locked_by = 'dead-worker',
           locked_until = now() - interval '1 second' where id = $1""",
        row_id,
        submitted_ago,
    )


async def create_at_provider(runtime: Runtime, prompt: str) -> str:
    import warnings

    import openai

    client = openai.AsyncOpenAI(base_url=simulator_of(runtime).base_url, api_key="test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        video = await client.videos.create(
            prompt=prompt, model="sora-2", size="720x1280", seconds="4"
        )
    await client.close()
    return video.id


LISTING = [p for p in PROFILES if not p.startswith("litellm")]
"""Hosts whose job list works (a LiteLLM proxy's fails: tests/test_gateways.py)."""
every_host = pytest.mark.parametrize("simulator_profile", PROFILES)
"""The core end-to-end tests run against OpenAI's shape and each gateway's quirks."""


@every_host
async def test_a_row_becomes_a_permanent_video_with_both_photos(runtime: Runtime) -> None:
    async with photo_host(
        {
            "/a.png": (200, photo((220, 40, 40)), "image/png"),
            "/b.png": (200, photo((40, 40, 220)), "image/png"),
        }
    ) as host:
        row_id = await runtime.repo.insert_request(
            "two friends hug", f"{host}/a.png", f"{host}/b.png"
        )
        async with running(allowing(runtime, host).worker()):
            row = await finished(runtime, row_id)

    assert row["status"] == "completed", row["error"]
    assert row["stage"] == "completed" and row["progress"] == 100 and row["error"] is None
    # The provider's own link: /content, or the file a relay named inline (new-api-xai).
    content = f"/videos/{row['video_id']}/content"
    assert row["video_id"] and (
        row["openai_url"].endswith(content) or f"/files/{row['video_id']}" in row["openai_url"]
    )
    assert row["locked_by"] is None and row["completed_at"] is not None

    # The permanent URL serves exactly the bytes the provider produced.
    async with httpx.AsyncClient() as http:
        served = (await http.get(row["video_url"])).content
        original = (
            await http.get(row["openai_url"], headers={"Authorization": "Bearer test"})
        ).content
    assert served == original
    assert len(served) == row["video_bytes"]
    assert hashlib.sha256(served).hexdigest() == row["video_sha256"]
    with av.open(io.BytesIO(served)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (720, 1280)

    # A thumbnail that is an image (a LiteLLM proxy answers the thumbnail request with
    # the MP4: then it is the video's first frame), showing the first frame.
    assert row["thumbnail_url"] and row["thumbnail_url"].endswith(".webp")
    async with httpx.AsyncClient() as http:
        thumbnail = (await http.get(row["thumbnail_url"])).content
    assert thumbnails.image_type(thumbnail) == "webp"
    first_frame = Image.open(io.BytesIO(thumbnail)).convert("RGB")
    assert first_frame.size == (720, 1280)
    top, bottom = first_frame.getpixel((360, 320)), first_frame.getpixel((360, 960))
    assert top[0] > 150 and top[2] < 110, top
    assert bottom[2] > 150 and bottom[0] < 110, bottom

    # The provider got one reference image of the video's exact size, showing both photos.
    reference = simulator_of(runtime).reference_for(row["video_id"])
    assert reference is not None
    composed = Image.open(io.BytesIO(reference)).convert("RGB")
    assert composed.size == (720, 1280)
    top, bottom = composed.getpixel((360, 320)), composed.getpixel((360, 960))
    assert top[0] > 180 and top[2] < 80, top  # red person on top
    assert bottom[2] > 180 and bottom[0] < 80, bottom  # blue person below


@every_host
async def test_a_text_only_row_completes_without_a_reference(runtime: Runtime) -> None:
    row_id = await runtime.repo.insert_request("a lighthouse at dawn", size="1280x720", seconds="8")
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]
    assert simulator_of(runtime).reference_for(row["video_id"]) is None
    async with httpx.AsyncClient() as http:
        data = (await http.get(row["video_url"])).content
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (1280, 720)
        assert abs(float(container.duration) / 1e6 - 8.0) < 0.2


@every_host
async def test_a_failed_generation_is_recorded_with_its_reason(runtime: Runtime) -> None:
    simulator_of(runtime).config.failure_rules.append(
        FailureRule(
            prompt_contains="forbidden",
            stage="generate",
            code="moderation_blocked",
            message="Your request was blocked by our moderation system.",
        )
    )
    row_id = await runtime.repo.insert_request("something forbidden")
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "failed" and row["stage"] == "failed"
    assert "moderation_blocked" in row["error"] and "moderation system" in row["error"]
    assert row["error_kind"] == "safety_filtered"
    assert row["video_url"] is None


@every_host
async def test_a_refused_submission_fails_the_row_and_is_not_retried(runtime: Runtime) -> None:
    simulator_of(runtime).config.failure_rules.append(
        FailureRule(
            prompt_contains="celebrity",
            stage="create",
            status=400,
            code="moderation_blocked",
            message="This prompt is not allowed.",
        )
    )
    row_id = await runtime.repo.insert_request("a celebrity")
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "failed" and row["error_kind"] == "safety_filtered"
    assert "not allowed" in row["error"]
    assert row["attempts"] == 0


@every_host
async def test_a_model_the_provider_no_longer_serves_fails_with_what_to_change(
    runtime: Runtime,
) -> None:
    # A model the registry does not know, allowed by the operator (SORA_ALLOWED_MODELS).
    async with replica_of(runtime, allowed_models="default,openai:sora-3-retired") as allowing:
        row_id = await runtime.repo.insert_request("a cat", model="sora-3-retired")
        async with running(allowing.worker()):
            row = await finished(runtime, row_id)
    assert row["status"] == "failed" and row["error_kind"] == "invalid_request"
    assert row["error"].count("SORA_MODEL") == 1 and "sora-3-retired" in row["error"]
    assert "HTTP 400 400" not in row["error"] and "HTTP 404 404" not in row["error"]


async def test_sizes_the_model_does_not_offer_fail_before_any_submission(runtime: Runtime) -> None:
    with pytest.raises(Refused, match="size 640x480 is not offered by sora-2; use one of: "):
        await runtime.repo.insert_request("a dog", size="640x480")
    # A row changed after its insert (by the service role) fails in the worker instead.
    row_id = await runtime.repo.insert_request("a dog")
    await runtime.pool.execute("update videos set size = '640x480' where id = $1", row_id)
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "failed" and "640x480" in row["error"]
    assert row["error_kind"] == "invalid_request"
    assert simulator_of(runtime).created == []


async def test_bad_photos_fail_their_row_and_the_worker_serves_the_others(runtime: Runtime) -> None:
    async with photo_host(
        {
            "/text.png": (200, b"<html>not an image</html>", "image/png"),
            "/good.png": (200, photo((10, 200, 10)), "image/png"),
            "/huge.png": (200, b"\x89PNG" + b"0" * 16_000_000, "image/png"),
        }
    ) as host:
        bad = {
            "missing": await runtime.repo.insert_request("x", f"{host}/nope.png"),
            "not_image": await runtime.repo.insert_request("x", f"{host}/text.png"),
            "too_big": await runtime.repo.insert_request("x", f"{host}/huge.png"),
            "scheme": await runtime.repo.insert_request("x", "file:///etc/passwd"),
        }
        good = await runtime.repo.insert_request("fine", f"{host}/good.png")
        async with running(allowing(runtime, host).worker()):
            rows = {name: await finished(runtime, rid) for name, rid in bad.items()}
            good_row = await finished(runtime, good)

    assert good_row["status"] == "completed", good_row["error"]
    assert all(r["status"] == "failed" for r in rows.values())
    # An allowed host is still an internal one: what it answered is not repeated.
    assert "could not be fetched from the internal host" in rows["missing"]["error"]
    assert "HTTP" not in rows["missing"]["error"]
    assert "not a readable image" in rows["not_image"]["error"]
    assert "15,000,000" in rows["too_big"]["error"]  # the limit, stated
    assert "http(s)" in rows["scheme"]["error"]
    assert len(simulator_of(runtime).created) == 1


async def test_a_photo_host_that_fails_is_the_photos_outcome_after_a_few_tries(
    runtime: Runtime,
) -> None:
    """Issue 24, finding 8: an unresolvable or endlessly slow photo host was tried
    SORA_MAX_ATTEMPTS times and failed as ``provider_error``, though no provider was
    called. It is the photo's outcome (``photo_unavailable``), after three tries."""

    async def stall(_request: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()  # never answers
        raise AssertionError

    app = web.Application()
    app.router.add_get("/{tail:.*}", stall)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        slow = await runtime.repo.insert_request("x", f"http://127.0.0.1:{port}/a.png")
        unresolvable = await runtime.repo.insert_request("x", "http://photos.invalid/a.png")
        settings = changed(
            runtime.settings,
            max_attempts=6,
            image_timeout=0.3,
            image_allow_hosts=f"127.0.0.1:{port}",
        )
        async with running(dataclasses.replace(runtime, settings=settings).worker()):
            rows = [await finished(runtime, row_id) for row_id in (slow, unresolvable)]
    finally:
        await runner.cleanup()
    for row in rows:
        assert (row["status"], row["error_kind"], row["attempts"]) == (
            "failed",
            "photo_unavailable",
            3,
        ), row["error"]
    assert "did not download within 0.3 s" in rows[0]["error"]
    assert "does not resolve" in rows[1]["error"]
    assert simulator_of(runtime).created == []


async def test_a_huge_size_is_refused_at_insert_whatever_the_model(runtime: Runtime) -> None:
    """sql/0011: the CHECKs bound what any model may be asked (60 s, 4096 pixels a side)
    and a model the registry does not know is refused unless the operator allows it."""
    with pytest.raises(Refused, match="model some-gateway-model is not offered here"):
        await runtime.repo.insert_request("x", model="some-gateway-model", size="1280x720")
    async with replica_of(runtime, allowed_models="default,openai:some-gateway-model"):
        for size, seconds in (("99999x99999", "4"), ("4097x720", "4"), ("720x1280", "61")):
            with pytest.raises(Refused, match=r"videos_(size|seconds)_bounded"):
                await runtime.repo.insert_request(
                    "x", model="some-gateway-model", size=size, seconds=seconds
                )
        await runtime.repo.insert_request(
            "x", model="some-gateway-model", size="4096x4096", seconds="60"
        )


async def test_notify_wakes_an_idle_worker_without_waiting_for_a_sweep(runtime: Runtime) -> None:
    async with replica_of(runtime, sweep_interval=3600.0) as quiet:
        worker = quiet.worker(listen=True)
        assert "listen" in worker.sources
        async with running(worker):
            await asyncio.wait_for(worker.sources["listen"].connected.wait(), 10)
            row_id = await runtime.repo.insert_request("woken by notify")
            row = await finished(runtime, row_id, within=15)
    assert row["status"] == "completed", row["error"]


async def test_a_lost_notification_is_recovered_by_the_sweep(runtime: Runtime) -> None:
    # No LISTEN at all: every notification is "lost"; only the sweep can find the row.
    async with (
        replica_of(runtime, sweep_interval=0.3) as sweeping,
        running(sweeping.worker(listen=False)),
    ):
        row_id = await runtime.repo.insert_request("found by the sweep")
        row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]


@every_host
async def test_shutdown_mid_job_releases_the_row_and_a_restart_finishes_it(
    runtime: Runtime,
) -> None:
    # Far from done when the worker stops, however slowly this machine runs today.
    simulator_of(runtime).config.generation_seconds = 30
    row_id = await runtime.repo.insert_request("interrupted")
    async with running(runtime.worker()):
        await eventually(lambda: row_of(runtime, row_id), lambda r: r["stage"] == "generating")
    row = await row_of(runtime, row_id)
    assert row["stage"] == "generating" and row["locked_by"] is None

    simulator_of(runtime).config.generation_seconds = 0.2
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]
    assert len(simulator_of(runtime).created) == 1  # never paid twice


@pytest.mark.parametrize("simulator_profile", LISTING)
async def test_a_crash_after_submitting_is_reconciled_not_paid_twice(runtime: Runtime) -> None:
    """A worker died between the provider's accept and recording the id."""
    row_id = await runtime.repo.insert_request("orphaned at the provider")
    await leave_in_doubt(runtime, row_id)
    orphan = await create_at_provider(runtime, "orphaned at the provider")
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]
    assert row["video_id"] == orphan
    assert len(simulator_of(runtime).created) == 1


@pytest.mark.parametrize("simulator_profile", LISTING)
async def test_an_interrupted_submission_with_nothing_at_the_provider_is_submitted_once(
    runtime: Runtime,
) -> None:
    row_id = await runtime.repo.insert_request("never reached the provider")
    await leave_in_doubt(runtime, row_id, submitted_ago=timedelta(minutes=10))
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]
    assert len(simulator_of(runtime).created) == 1


async def test_a_row_whose_owner_died_is_taken_over_when_its_lease_lapses(runtime: Runtime) -> None:
    row_id = await runtime.repo.insert_request("owner crashed")
    await runtime.pool.execute(
        "update videos set locked_by = 'dead', locked_until = now() + interval '300 ms' "
        "where id = $1",
        row_id,
    )
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]


@every_host
async def test_many_rows_flow_through_two_workers_each_submitted_once(runtime: Runtime) -> None:
    ids = [await runtime.repo.insert_request(f"video {n}") for n in range(12)]
    async with (
        replica_of(runtime) as other,
        running(runtime.worker()),
        running(other.worker()),
    ):
        rows = [await finished(runtime, rid, within=40) for rid in ids]
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    assert len(simulator_of(runtime).created) == 12
    assert len({r["video_id"] for r in rows}) == 12


async def test_stored_files_are_on_disk_under_the_video_bucket(
    runtime: Runtime, tmp_path: Path
) -> None:
    row_id = await runtime.repo.insert_request("on disk")
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    path = tmp_path / "storage" / "hug-videos" / str(row_id) / f"{row['video_id']}.mp4"
    assert path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["video_sha256"]
    assert not list(path.parent.glob(".*.part"))


async def test_with_supabase_settings_videos_land_in_the_public_bucket(
    db_url: str, tmp_path: Path
) -> None:
    from service.local.simulator import SimulatorConfig
    from service.runtime import open_runtime
    from tests.conftest import FAST_SIMULATOR, make_settings
    from tests.fakes.supabase_storage import started

    async with started() as supabase:
        settings = make_settings(
            db_url,
            tmp_path,
            supabase_url=supabase.url,
            supabase_service_role_key=supabase.service_key,
        )
        async with open_runtime(
            settings,
            apply_migrations=False,
            stand_in_configs={"openai": SimulatorConfig(**FAST_SIMULATOR)},
        ) as runtime:
            assert supabase.buckets["hug-videos"].public
            row_id = await runtime.repo.insert_request("to the cloud")
            async with running(runtime.worker()):
                row = await finished(runtime, row_id)
            assert row["status"] == "completed", row["error"]
            assert row["video_url"] == (
                f"{supabase.url}/storage/v1/object/public/hug-videos/{row_id}/{row['video_id']}.mp4"
            )
            async with httpx.AsyncClient() as http:
                served = (await http.get(row["video_url"])).content
            assert hashlib.sha256(served).hexdigest() == row["video_sha256"]
            assert supabase.objects[f"hug-videos/{row_id}/{row['video_id']}.mp4"].data == served
            assert not (tmp_path / "storage").exists()  # nothing went to local disk

            # A storage outage during the archive is retried: the paid video is not lost.
            supabase.fail_uploads(2, 503, message="storage is restarting")
            second = await runtime.repo.insert_request("through an outage")
            async with running(runtime.worker()):
                row = await finished(runtime, second)
            assert row["status"] == "completed", row["error"]
            assert row["attempts"] == 0 and row["error"] is None
            assert f"hug-videos/{second}/{row['video_id']}.mp4" in supabase.objects


async def test_a_video_that_expired_before_archiving_fails_with_that_reason(
    runtime: Runtime,
) -> None:
    simulator_of(runtime).config.expires_after_seconds = 0.0
    row_id = await runtime.repo.insert_request("too late")
    with capture_logs() as logs:
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)
    assert row["status"] == "failed" and "expired" in row["error"]
    assert row["error_kind"] == "expired"
    # A video paid for and lost is said at error level.
    [failed] = [e for e in logs if e["event"] == "video.failed"]
    assert (failed["log_level"], failed["error_kind"]) == ("error", "expired")


async def test_a_long_step_keeps_its_lease_alive_with_heartbeats(
    db_url: str, tmp_path: Path
) -> None:
    from service.local.simulator import SimulatorConfig
    from service.runtime import open_runtime
    from tests.conftest import FAST_SIMULATOR, make_settings

    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_photo(_request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(body=photo((5, 5, 5)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/slow.png", slow_photo)
    runner, port = await serve(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/slow.png"
    settings = make_settings(
        db_url, tmp_path, lease_seconds=0.6, image_allow_hosts=urlsplit(url).netloc
    )
    try:
        async with open_runtime(
            settings,
            apply_migrations=False,
            stand_in_configs={"openai": SimulatorConfig(**FAST_SIMULATOR)},
        ) as runtime:
            row_id = await runtime.repo.insert_request("slow photo", url)
            worker = runtime.worker()
            async with running(worker):
                await asyncio.wait_for(entered.wait(), 10)
                first = await row_of(runtime, row_id)
                # Several leases pass while the photo hangs; the heartbeat keeps extending it.
                later = await eventually(
                    lambda: row_of(runtime, row_id),
                    lambda r: r["locked_until"] > first["locked_until"] + timedelta(seconds=1.2),
                )
                assert later["locked_by"] == first["locked_by"] == runtime.repo.worker_id
                release.set()
                row = await finished(runtime, row_id)
            assert row["status"] == "completed", row["error"]
    finally:
        release.set()
        await runner.cleanup()


async def test_identical_requests_are_sent_together_and_each_gets_its_own_photos(
    runtime: Runtime,
) -> None:
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    routes = {f"/{i}.png": (200, photo(c), "image/png") for i, c in enumerate(colors)}
    async with photo_host(routes) as host:
        ids = [
            await runtime.repo.insert_request("the same words", f"{host}/{i}.png")
            for i in range(len(colors))
        ]
        async with (
            replica_of(runtime, image_allow_hosts=urlsplit(host).netloc) as other,
            running(allowing(runtime, host).worker()),
            running(other.worker()),
        ):
            rows = [await finished(runtime, rid) for rid in ids]
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    assert len(simulator_of(runtime).created) == len(colors)
    for row, color in zip(rows, colors, strict=True):
        reference = simulator_of(runtime).reference_for(row["video_id"])
        assert reference is not None
        pixel = Image.open(io.BytesIO(reference)).convert("RGB").getpixel((360, 640))
        assert all(abs(a - b) < 40 for a, b in zip(pixel, color, strict=True)), (pixel, color)


async def test_a_row_in_doubt_with_photos_never_takes_a_strangers_identical_job(
    runtime: Runtime,
) -> None:
    async with photo_host({"/a.png": (200, photo((200, 0, 0)), "image/png")}) as host:
        row_id = await runtime.repo.insert_request("same words", f"{host}/a.png")
        await leave_in_doubt(runtime, row_id)
        for _ in range(2):
            await create_at_provider(runtime, "same words")
        async with running(runtime.worker()):
            row = await eventually(
                lambda: row_of(runtime, row_id),
                lambda r: "cannot tell" in (r["error"] or ""),
            )
    assert row["stage"] == "submitting" and row["video_id"] is None
    assert len(simulator_of(runtime).created) == 2  # no third


async def test_a_text_only_row_in_doubt_adopts_the_oldest_identical_job(runtime: Runtime) -> None:
    row_id = await runtime.repo.insert_request("same words, no photos")
    await leave_in_doubt(runtime, row_id)
    oldest = await create_at_provider(runtime, "same words, no photos")
    await create_at_provider(runtime, "same words, no photos")
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]
    assert row["video_id"] == oldest
    assert len(simulator_of(runtime).created) == 2


async def test_requeueing_a_finished_row_wakes_the_worker_and_makes_a_new_video(
    runtime: Runtime,
) -> None:
    async with replica_of(runtime, sweep_interval=3600.0) as quiet:
        worker = quiet.worker(listen=True)
        assert "listen" in worker.sources
        async with running(worker):
            await asyncio.wait_for(worker.sources["listen"].connected.wait(), 10)
            row_id = await runtime.repo.insert_request("again, please")
            first = await finished(runtime, row_id)
            requeued = await runtime.pool.fetchrow(
                """update videos set status = 'queued' where id = $1
                   returning video_url, video_sha256""",
                row_id,
            )
            assert requeued is not None
            assert requeued["video_url"] is None and requeued["video_sha256"] is None
            second = await eventually(
                lambda: row_of(runtime, row_id),
                lambda r: r["stage"] == "completed" and r["video_id"] != first["video_id"],
            )
    assert second["video_url"] != first["video_url"]
    async with httpx.AsyncClient() as http:
        assert (await http.get(first["video_url"])).status_code == 200  # the old file survives
