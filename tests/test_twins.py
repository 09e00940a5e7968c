"""Identical requests in doubt together: each row still gets the video made from its photos.

Two rows with the same prompt and different photos are sent side by side; when both
creates end in doubt (the provider made the job, the answer was lost), the provider's
list shows two jobs that match both rows equally. The first frame settles it: a video
starts from its reference image. These tests check what a user would see: the first
frame of each row's archived video is that row's own photo.
"""

from __future__ import annotations

import tempfile
import warnings
from uuid import UUID

import av
import httpx
import openai
from PIL import Image, ImageStat

from service.core import likeness
from service.local.simulator.media import render_mp4, render_thumbnail
from service.media import images, prints, thumbnails
from service.runtime import Runtime
from tests.conftest import eventually, replica_of, simulator_of
from tests.test_pipeline import finished, photo, row_of, running

RED, BLUE = (200, 30, 30), (30, 30, 200)


async def first_frame_colour(video_url: str) -> tuple[float, ...]:
    """The mean colour of the first frame of the video a user downloads from video_url."""
    async with httpx.AsyncClient() as client:
        response = await client.get(video_url)
    response.raise_for_status()
    with tempfile.NamedTemporaryFile(suffix=".mp4") as file:
        file.write(response.content)
        file.flush()
        with av.open(file.name) as container:
            frame = next(iter(container.decode(video=0)))
            image: Image.Image = frame.to_image()  # type: ignore[no-untyped-call]
    return tuple(ImageStat.Stat(image.convert("RGB")).mean)


def close_to(got: tuple[float, ...], want: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 25 for a, b in zip(got, want, strict=True))


def reference_of(colour: tuple[int, int, int]) -> bytes:
    """The reference the worker composes from one photo of ``colour`` (720x1280)."""
    return images.compose_reference([images.decode("image1_url", photo(colour))], 720, 1280)


async def twins_in_doubt(
    runtime: Runtime, prompt: str, colours: list[tuple[int, int, int]]
) -> list[UUID]:
    """What workers killed mid-create leave: every row's intent recorded (with the print
    of its reference), and every job made at the provider, in the reverse order. (The
    photos are never fetched again: their URLs only say that the rows have photos.)"""
    ids = []
    for colour in colours:
        row_id = await runtime.repo.insert_request(
            prompt, f"https://photos.example/{'-'.join(map(str, colour))}.png"
        )
        await runtime.pool.execute(
            """update videos set stage = 'submitting', status = 'processing', model = 'sora-2',
               size = '720x1280', seconds = '4', provider = 'openai',
               submit_key = gen_random_uuid(), submitted_at = now() - interval '1 second',
               reference_print = $2, locked_by = 'dead-worker',
               locked_until = now() - interval '1 second', next_attempt_at = now()
               where id = $1""",
            row_id,
            prints.print_of_image(reference_of(colour)),
        )
        ids.append(row_id)
    for colour in reversed(colours):
        await create_at_provider(runtime, prompt, reference_of(colour))
    return ids


async def create_at_provider(runtime: Runtime, prompt: str, reference: bytes) -> str:
    client = openai.AsyncOpenAI(base_url=simulator_of(runtime).base_url, api_key="test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        video = await client.videos.create(
            prompt=prompt,
            model="sora-2",
            size="720x1280",
            seconds="4",
            input_reference=("reference.jpg", reference, "image/jpeg"),
        )
    await client.close()
    return video.id


async def test_twins_in_doubt_with_different_photos_each_get_the_video_of_their_own(
    runtime: Runtime,
) -> None:
    ids = await twins_in_doubt(runtime, "two friends hug", [RED, BLUE])
    async with (
        replica_of(runtime) as other,
        running(runtime.worker()),
        running(other.worker()),
    ):
        rows = [await finished(runtime, row_id, within=30) for row_id in ids]
    assert [r["status"] for r in rows] == ["completed", "completed"], [r["error"] for r in rows]
    assert len(simulator_of(runtime).created) == 2  # paid once each
    assert rows[0]["video_id"] != rows[1]["video_id"]
    for row, colour in zip(rows, (RED, BLUE), strict=True):
        got = await first_frame_colour(row["video_url"])
        assert close_to(got, colour), (row["id"], got, colour)


async def test_twins_whose_photos_look_alike_stay_in_doubt_rather_than_guess(
    runtime: Runtime,
) -> None:
    # Prints 2.7 apart: not the same photo, yet closer than encoding noise allows to judge.
    almost = (RED[0] + 4, RED[1] + 4, RED[2])
    ids = await twins_in_doubt(runtime, "two friends hug, alike", [RED, almost])
    async with running(runtime.worker()):
        rows = [
            await eventually(
                lambda row_id=row_id: row_of(runtime, row_id),
                lambda r: "cannot tell" in (r["error"] or "") and r["submitted_at"] is not None,
                within=30,
            )
            for row_id in ids
        ]
        # Both jobs are finished at the provider (their first frames known), and still
        # neither row took one.
        for created in simulator_of(runtime).created:
            job = simulator_of(runtime).store.get(created.video_id)
            await eventually(
                lambda job=job: _status(runtime, job), lambda s: s == "completed", within=10
            )
        # Looked at again twice after that, frames in hand: still no guess.
        for _ in range(2):
            since = await runtime.pool.fetchval("select now()")
            again = [
                await eventually(
                    lambda row_id=row_id: row_of(runtime, row_id),
                    lambda r, since=since: r["updated_at"] > since,
                    within=30,
                )
                for row_id in ids
            ]
    for row in [*rows, *again]:
        assert row["stage"] == "submitting" and row["video_id"] is None, row
        assert row["attempts"] == 0  # waiting to tell them apart spends no attempt
    assert len(simulator_of(runtime).created) == 2  # none more


async def _status(runtime: Runtime, job: object) -> str:
    return str(job.video(simulator_of(runtime).config)["status"])  # type: ignore[attr-defined]


async def test_twins_with_the_same_photos_are_interchangeable(runtime: Runtime) -> None:
    ids = await twins_in_doubt(runtime, "two friends hug, same photo", [RED, RED])
    async with running(runtime.worker()):
        rows = [await finished(runtime, row_id, within=30) for row_id in ids]
    assert [r["status"] for r in rows] == ["completed", "completed"], [r["error"] for r in rows]
    assert len(simulator_of(runtime).created) == 2
    assert rows[0]["video_id"] != rows[1]["video_id"]
    for row in rows:
        assert close_to(await first_frame_colour(row["video_url"]), RED)


def test_the_simulators_first_frame_is_the_reference_it_was_given() -> None:
    """What reconciliation relies on, as an image-to-video provider does it."""
    reference = images.compose_reference(
        [images.decode("image1_url", photo(RED)), images.decode("image2_url", photo(BLUE))],
        720,
        1280,
    )
    mine = prints.print_of_image(reference)
    thumb = render_thumbnail(720, 1280, 4, prompt="p", reference=reference, seed="s")
    assert thumbnails.image_type(thumb[:16]) is not None
    assert likeness.distance(mine, prints.print_of_image(thumb)) < 3
    with tempfile.NamedTemporaryFile(suffix=".mp4") as file:
        file.write(render_mp4(720, 1280, 1, prompt="p", reference=reference, seed="s"))
        file.flush()
        assert likeness.distance(mine, prints.print_of_video(file.name)) < 3
    other = prints.print_of_image(
        render_thumbnail(720, 1280, 4, prompt="p", reference=None, seed="s")
    )
    assert likeness.distance(mine, other) > likeness.CAP
