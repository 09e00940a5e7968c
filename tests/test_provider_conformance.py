"""One contract, every adapter: each provider behind the port behaves the same way.

Each adapter runs through its official SDK against its local fake (only base_url points
at it): OpenAI against the simulator, Veo against the Vertex fake, Replicate against the
Replicate fake. Adding a provider = its module, its fake, and one line in ``HOSTS``.
Every model family the registry knows for a provider runs through the contract
(``FAMILIES``), each with its own sizes, lengths and input names, and the fakes check
what they receive: two photos reach a model that takes a first and a last frame as two
frames, never as one composed image.
"""

from __future__ import annotations

import hashlib
import io
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import httpx
import openai
import pytest
from PIL import Image

from service.commands.demo import upload_photos
from service.core.request import RequestImage, VideoRequest
from service.local.replicate_server import ReplicateConfig, ReplicateServer
from service.local.simulator import Simulator, SimulatorConfig
from service.local.veo_server import VeoConfig, VeoServer
from service.media import references
from service.media.delivery import CHUNK_SIZE, Delivery
from service.providers.base import (
    CannotReconcile,
    ProviderJob,
    RequestRejected,
    VideoGone,
    VideoProvider,
)
from service.providers.google_veo import GoogleVeo
from service.providers.models import MODELS, image_inputs, spec_for
from service.providers.openai_videos import OpenAIVideos
from service.providers.replicate_videos import ReplicateVideos
from service.runtime import Runtime, open_runtime
from tests.conftest import eventually, make_settings
from tests.test_pipeline import finished, running

FAST = {"queue_seconds": 0.05, "generation_seconds": 0.3}


@dataclass
class Host:
    """One provider under test: an adapter on its fake, and how to steer the fake."""

    provider: VideoProvider
    model: str
    unknown_model: str
    unknown_job: str
    creates: Callable[[], int]
    """How many creates the fake has accepted."""
    make_gone: Callable[[str], Awaitable[None]]
    """Make a finished job's video unobtainable, as the host does after its retention."""
    received: Callable[[str], list[bytes]]
    """The images the fake received for a job, in the order first, last, references."""
    can_list: bool = True


def delivery() -> Delivery:
    return Delivery((), max_bytes=64 * 1024 * 1024, timeout=30.0)


@asynccontextmanager
async def openai_host(model: str) -> AsyncIterator[Host]:
    async with Simulator(SimulatorConfig(**FAST)) as sim:
        provider = OpenAIVideos("sk-test", sim.base_url)

        def received(job_id: str) -> list[bytes]:
            reference = sim.store.reference_for(job_id)
            return [] if reference is None else [reference]

        async def delete(job_id: str) -> None:
            client = openai.AsyncOpenAI(api_key="sk-test", base_url=sim.base_url)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                await client.videos.delete(job_id)
            await client.close()

        yield Host(
            provider, model, "sora-0", "video_missing", lambda: len(sim.created), delete, received
        )
        await provider.aclose()


@asynccontextmanager
async def veo_host(model: str) -> AsyncIterator[Host]:
    async with VeoServer(VeoConfig(**FAST)) as fake:
        provider = GoogleVeo("test-key", fake.base_url)

        async def forget(name: str) -> None:
            fake.forget(name)

        def received(name: str) -> list[bytes]:
            return next(list(c.images.values()) for c in fake.created if c.operation == name)

        missing = f"projects/p/locations/us-central1/publishers/google/models/{model}/operations/x"
        yield Host(
            provider,
            model,
            "veo-0-unknown",
            missing,
            lambda: len(fake.created),
            forget,
            received,
            can_list=False,
        )
        await provider.aclose()


@asynccontextmanager
async def replicate_host(model: str) -> AsyncIterator[Host]:
    async with ReplicateServer(ReplicateConfig(**FAST)) as fake:
        provider = ReplicateVideos(
            "r8_test",
            fake.base_url,
            cancel_after=timedelta(minutes=30),
            delivery=delivery(),
            allowed_models=frozenset({model}),
        )

        async def expire(_job_id: str) -> None:
            fake.expire_outputs()

        yield Host(
            provider,
            model,
            "nobody/no-such-model",
            "0000000000000000000000000",
            lambda: len(fake.created),
            expire,
            lambda job_id: list(fake.received[job_id].values()),
        )
        await provider.aclose()


HOSTS: dict[str, Callable[[str], AbstractAsyncContextManager[Host]]] = {
    "openai": openai_host,
    "google_veo": veo_host,
    "replicate": replicate_host,
}

NOT_SERVED = {"veo-3.1-lite-generate-preview": "a Gemini API model: Vertex AI does not list it"}
FAMILIES = [
    (spec.provider, spec.name)
    for spec in MODELS.values()
    if spec.provider in HOSTS and spec.name not in NOT_SERVED
]
"""Every model the registry knows, on its own provider's fake."""


@pytest.fixture(params=FAMILIES, ids=[f"{p}:{m}" for p, m in FAMILIES])
async def host(request: pytest.FixtureRequest) -> AsyncIterator[Host]:
    provider, model = request.param
    async with HOSTS[provider](model) as opened:
        yield opened


def reference(size: str, colour: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    width, height = (int(n) for n in size.split("x"))
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="JPEG")
    return out.getvalue()


def size_for(model: str) -> str:
    """A size the model offers: portrait 720p where it can, else its first."""
    spec = spec_for(model)
    if spec is None or "720x1280" in spec.sizes:
        return "720x1280"
    return sorted(spec.sizes)[0]


def seconds_for(model: str) -> str:
    spec = spec_for(model)
    return "4" if spec is None or "4" in spec.seconds else min(spec.seconds, key=int)


def request_for(
    host: Host, prompt: str, *, model: str | None = None, size: str | None = None
) -> VideoRequest:
    chosen = model or host.model
    size = size or size_for(chosen)
    return VideoRequest(
        prompt=prompt,
        model=chosen,
        size=size,
        seconds=seconds_for(chosen),
        idempotency_key=str(uuid.uuid4()),
        images=(RequestImage("first_frame", reference(size)),),
    )


async def until_done(host: Host, job_id: str) -> ProviderJob:
    return await eventually(
        lambda: host.provider.retrieve(job_id), lambda j: j.status in ("completed", "failed")
    )


def probe(data: bytes) -> tuple[str, int, int, float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        seconds = float(container.duration or 0) / 1_000_000
        return stream.codec_context.name, stream.width, stream.height, seconds


# ---------------------------------------------------------------- the port's contract


async def test_a_job_is_made_polled_and_streamed_as_a_valid_mp4(host: Host) -> None:
    job = await host.provider.submit(request_for(host, "two friends hug at a station"))
    assert job.status in ("queued", "running") and job.id
    done = await until_done(host, job.id)
    assert done.status == "completed" and done.id == job.id and done.error is None

    chunks = []
    async with host.provider.download(job.id) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    # Bounded pieces, never the video at once: a delivery chunk (1 MiB) plus at most one
    # network read (Veo's own download: 256 KiB).
    assert chunks and all(len(c) <= 2 * CHUNK_SIZE for c in chunks)
    codec, width, height, seconds = probe(b"".join(chunks))
    asked = request_for(host, "")
    assert (codec, f"{width}x{height}") == ("h264", asked.size)
    assert abs(seconds - int(asked.seconds)) < 0.5
    assert host.provider.content_url(job.id).startswith("http")
    assert host.creates() == 1


RED, BLUE = (220, 30, 30), (30, 30, 220)


def mean_colour(data: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").resize((1, 1), Image.Resampling.BOX)
        return tuple(small.getpixel((0, 0)))  # type: ignore[arg-type]


def near(colour: tuple[int, ...], wanted: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(colour, wanted, strict=True))


async def test_two_photos_arrive_as_the_model_takes_them(host: Host) -> None:
    """Photo 1 (red) and photo 2 (blue), arranged for the model as a worker does: a model
    that takes a first and a last frame receives two frames of the video's size, red
    then blue; one that takes one image receives one composed frame holding both."""
    size = size_for(host.model)
    width, height = (int(n) for n in size.split("x"))
    photos: list[references.Decode] = [
        lambda: Image.new("RGB", (900, 700), RED),
        lambda: Image.new("RGB", (600, 800), BLUE),
    ]
    inputs = image_inputs(host.provider.name, host.model)
    sent = references.arrange(photos, inputs, width, height)
    request = replace(request_for(host, "two friends meet at a station"), images=sent.images)
    job = await host.provider.submit(request)
    received = host.received(job.id)
    sizes = [Image.open(io.BytesIO(data)).size for data in received]
    assert sizes and all(s == (width, height) for s in sizes), sizes
    if inputs.kind == "first_last":
        assert sent.how == "first_last" and len(received) == 2, "two photos, two frames"
        assert near(mean_colour(received[0]), RED) and near(mean_colour(received[1]), BLUE)
    else:
        assert sent.how == "composed" and len(received) == 1
        colour = mean_colour(received[0])
        assert not near(colour, RED) and not near(colour, BLUE)  # both photos, in one frame
    await until_done(host, job.id)


async def test_a_request_the_host_refuses_is_rejected_for_good(host: Host) -> None:
    with pytest.raises(RequestRejected) as refused:
        await host.provider.submit(request_for(host, "a cat", model=host.unknown_model))
    assert host.unknown_model in str(refused.value) and "SORA_MODEL" in str(refused.value)
    odd = request_for(host, "a cat", size="999x333")  # no such frame anywhere
    with pytest.raises(RequestRejected):  # refused by the adapter, or else by the host
        host.provider.validate(odd.model, odd.size, odd.seconds)
        await host.provider.submit(odd)


async def test_an_unknown_job_is_gone(host: Host) -> None:
    with pytest.raises(VideoGone):
        await host.provider.retrieve(host.unknown_job)


async def test_a_video_past_the_hosts_retention_is_gone(host: Host) -> None:
    job = await host.provider.submit(request_for(host, "a lighthouse at dusk"))
    await until_done(host, job.id)
    await host.make_gone(job.id)
    with pytest.raises(VideoGone):
        async with host.provider.download(job.id) as stream:
            async for _ in stream:
                pass


async def test_reconcile_finds_the_job_or_says_it_cannot(host: Host) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    ours = request_for(host, "a red kite over the dunes")
    job = await host.provider.submit(ours)
    if not host.can_list:
        with pytest.raises(CannotReconcile) as cannot:
            await host.provider.find_submitted(ours, before)
        assert ours.idempotency_key in str(cannot.value)
        return
    found = await host.provider.find_submitted(ours, before)
    assert [j.id for j in found] == [job.id]
    other = request_for(host, "a blue kite over the dunes")
    assert await host.provider.find_submitted(other, before) == []


# ---------------------------------------------------------------- end to end


@asynccontextmanager
async def provider_runtime(
    db_url: str, data_dir: Path, provider: str, **overrides: Any
) -> AsyncIterator[Runtime]:
    settings = make_settings(db_url, data_dir, provider=provider, **overrides)
    async with open_runtime(
        settings,
        apply_migrations=False,
        stand_in_configs={
            "openai": SimulatorConfig(**FAST),
            "google_veo": VeoConfig(**FAST),
            "replicate": ReplicateConfig(**FAST),
        },
    ) as runtime:
        yield runtime


@pytest.mark.parametrize("provider", sorted(HOSTS))
async def test_a_row_becomes_an_archived_verified_video(
    provider: str, db_url: str, tmp_path: Path
) -> None:
    async with provider_runtime(db_url, tmp_path, provider) as runtime:
        image1, image2 = await upload_photos(runtime)
        row_id = await runtime.repo.insert_request("two old friends hug", image1, image2)
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)

        assert row["status"] == "completed", row["error"]
        assert (row["stage"], row["provider"], row["error"]) == ("completed", provider, None)
        # Veo and Replicate's default models take a first and a last frame; the Videos
        # API shape carries one image.
        assert row["photos_sent"] == ("composed" if provider == "openai" else "first_last")
        async with httpx.AsyncClient() as http:
            stored = (await http.get(row["video_url"])).content
        assert hashlib.sha256(stored).hexdigest() == row["video_sha256"]
        assert len(stored) == row["video_bytes"]
        codec, width, height, _ = probe(stored)
        assert (codec, f"{width}x{height}") == ("h264", row["size"])
