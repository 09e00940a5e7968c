"""The simulator must be indistinguishable from OpenAI's Videos API to the official SDK.

Every call goes through ``openai.AsyncOpenAI`` (the arbiter of the contract), except where
the SDK cannot express the request (JSON bodies, a missing Authorization header, Range),
which use httpx. Time is moved with a fake clock; nothing sleeps.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import openai
import pytest
from PIL import Image

from service.local.simulator import FailureRule, Simulator, SimulatorConfig

# Every ``videos`` method is deprecated ("The Sora API is scheduled to permanently shut down").
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

START = 1_800_000_000.0
QUEUE, GENERATION = 1.0, 8.0
DONE = QUEUE + GENERATION


class FakeClock:
    """The simulator's time source; tests advance it instead of sleeping."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _config(clock: FakeClock, **overrides: object) -> SimulatorConfig:
    config = SimulatorConfig(queue_seconds=QUEUE, generation_seconds=GENERATION, clock=clock)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _image(width: int, height: int, image_format: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, format=image_format)
    return out.getvalue()


def _sdk(simulator: Simulator, api_key: str = "test") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=simulator.base_url, api_key=api_key, max_retries=0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    async with Simulator(_config(clock)) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _sdk(sim) as sdk:
        yield sdk


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.base_url) as raw:
        yield raw


AUTH = {"Authorization": "Bearer test"}


async def test_create_without_reference(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    video = await client.videos.create(prompt="a cat", extra_headers={"Idempotency-Key": "k-1"})
    assert (video.object, video.status, video.progress) == ("video", "queued", 0)
    assert (video.model, video.size, video.seconds) == ("sora-2", "720x1280", "4")
    assert (video.created_at, video.completed_at, video.error) == (int(START), None, None)
    assert video.id.startswith("video_")
    assert sim.created == [(video.id, "sora-2", "720x1280", "4", False, "k-1")]
    assert sim.reference_for(video.id) is None


async def test_create_with_reference(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    reference = _image(1280, 720)
    video = await client.videos.create(
        prompt="a dog",
        model="sora-2-pro",
        size="1280x720",
        seconds="8",
        input_reference=("ref.png", reference, "image/png"),
    )
    assert (video.model, video.size, video.seconds) == ("sora-2-pro", "1280x720", "8")
    assert sim.created[0].has_reference and sim.created[0].idempotency_key is None
    assert sim.reference_for(video.id) == reference


async def test_create_json_body(
    sim: Simulator, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    body = {
        "prompt": "a bird",
        "model": "sora-2-pro",
        "size": "1792x1024",
        "seconds": 12,
        "input_reference": {"image_url": "https://example.com/bird.png"},
    }
    response = await http.post("/videos", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    video = await client.videos.retrieve(response.json()["id"])
    assert (video.size, video.seconds, video.prompt) == ("1792x1024", "12", "a bird")
    assert not sim.created[0].has_reference


async def test_status_moves_with_the_clock(clock: FakeClock, client: openai.AsyncOpenAI) -> None:
    video = await client.videos.create(prompt="a cat")
    raw = await client.videos.with_raw_response.retrieve(video.id)
    assert "openai-poll-after-ms" not in raw.headers  # sent only when configured
    assert raw.request_id is not None and raw.request_id.startswith("req_")
    assert raw.parse().status == "queued"
    clock.advance(QUEUE + 2.0)
    early = await client.videos.retrieve(video.id)
    clock.advance(4.0)
    late = await client.videos.retrieve(video.id)
    assert (early.status, late.status) == ("in_progress", "in_progress")
    assert 0 < early.progress < late.progress < 100
    clock.advance(DONE)
    done = await client.videos.retrieve(video.id)
    assert (done.status, done.progress, done.completed_at) == ("completed", 100, int(START + DONE))
    assert done.expires_at == int(START + DONE) + 86400


async def test_list_auto_paginates(client: openai.AsyncOpenAI) -> None:
    ids = [(await client.videos.create(prompt=f"video {n}")).id for n in range(5)]
    first = await client.videos.list(limit=2)
    assert [v.id for v in first.data] == ids[::-1][:2]
    assert first.has_more and first.last_id == ids[3]
    assert [v.id async for v in client.videos.list(limit=2)] == ids[::-1]
    assert [v.id async for v in client.videos.list(limit=2, order="asc")] == ids


async def test_delete(client: openai.AsyncOpenAI) -> None:
    keep, doomed = [(await client.videos.create(prompt=p)).id for p in ("keep", "doomed")]
    deleted = await client.videos.delete(doomed)
    assert (deleted.id, deleted.object, deleted.deleted) == (doomed, "video.deleted", True)
    with pytest.raises(openai.NotFoundError):
        await client.videos.retrieve(doomed)
    with pytest.raises(openai.NotFoundError):
        await client.videos.delete(doomed)
    assert [v.id async for v in client.videos.list(limit=1)] == [keep]


async def test_download_all_variants(
    clock: FakeClock, client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    video = await client.videos.create(
        prompt="a red square", input_reference=("ref.png", _image(720, 1280), "image/png")
    )
    clock.advance(DONE)
    chunks: list[bytes] = []
    async with client.videos.with_streaming_response.download_content(video.id) as response:
        assert response.headers["content-type"] == "video/mp4"
        chunks = [chunk async for chunk in response.iter_bytes()]
    mp4 = b"".join(chunks)
    assert int(response.headers["content-length"]) == len(mp4)
    assert mp4.find(b"moov") < mp4.find(b"mdat")  # faststart: playable while downloading
    with av.open(io.BytesIO(mp4), mode="r") as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (720, 1280)
        assert stream.duration is not None and stream.time_base is not None
        assert abs(float(stream.duration * stream.time_base) - 4.0) < 0.1
        assert len(list(container.decode(stream))) == 96

    partial = await http.get(
        f"/videos/{video.id}/content", headers={**AUTH, "Range": "bytes=100-199"}
    )
    assert partial.status_code == 206 and partial.content == mp4[100:200]
    head = await http.head(f"/videos/{video.id}/content", headers=AUTH)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(mp4))
    assert (await http.get("/videos", headers=AUTH)).is_success  # no stray body after HEAD

    thumbnail = await client.videos.download_content(video.id, variant="thumbnail")
    with Image.open(io.BytesIO(thumbnail.content)) as image:
        assert (image.format, image.size) == ("WEBP", (720, 1280))
    sheet = await client.videos.download_content(video.id, variant="spritesheet")
    with Image.open(io.BytesIO(sheet.content)) as image:
        assert image.format == "JPEG"


@pytest.mark.parametrize(
    ("kwargs", "error", "param", "code"),
    [
        ({"model": "sora-3"}, openai.NotFoundError, None, "model_not_found"),
        ({"size": "1792x1024"}, openai.BadRequestError, "size", "invalid_value"),
        ({"seconds": "5"}, openai.BadRequestError, "seconds", "invalid_value"),
        (
            {"input_reference": ("r.png", _image(100, 100), "image/png")},
            openai.BadRequestError,
            "input_reference",
            "invalid_value",
        ),
        (
            {"input_reference": ("r.gif", _image(720, 1280, "GIF"), "image/gif")},
            openai.BadRequestError,
            "input_reference",
            "invalid_image_format",
        ),
    ],
)
async def test_invalid_create_maps_to_sdk_errors(
    sim: Simulator,
    client: openai.AsyncOpenAI,
    kwargs: dict[str, object],
    error: type[openai.APIStatusError],
    param: str | None,
    code: str,
) -> None:
    with pytest.raises(error) as caught:
        await client.videos.create(prompt="x", **kwargs)  # type: ignore[arg-type]
    assert (caught.value.param, caught.value.code) == (param, code)
    assert sim.created == []


async def test_reference_size_message_names_both_sizes(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="expected 720x1280, got 1280x720"):
        await client.videos.create(
            prompt="x", input_reference=("r.jpg", _image(1280, 720, "JPEG"), "image/jpeg")
        )


async def test_authentication(sim: Simulator, http: httpx.AsyncClient) -> None:
    missing = await http.get("/videos")
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    sim.config.api_key = "secret"
    async with _sdk(sim, api_key="wrong") as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.videos.list()
    assert (await http.get("/videos", headers={"Authorization": "Bearer secret"})).is_success


async def test_unknown_route_and_video(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    response = await http.get("/nothing-here", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/nothing-here)"
    with pytest.raises(openai.NotFoundError):
        await client.videos.retrieve("video_missing")


async def test_failure_rule_at_create(sim: Simulator, client: openai.AsyncOpenAI) -> None:
    sim.config.failure_rules.append(FailureRule("forbidden", "create", message="Blocked."))
    with pytest.raises(openai.BadRequestError, match="Blocked") as caught:
        await client.videos.create(prompt="something FORBIDDEN")
    assert caught.value.code == "moderation_blocked"
    assert sim.created == []


async def test_failure_rule_at_generate(
    sim: Simulator, clock: FakeClock, client: openai.AsyncOpenAI
) -> None:
    sim.config.failure_rules.append(FailureRule("doomed", "generate", code="policy"))
    video = await client.videos.create(prompt="a doomed video")
    assert video.status == "queued"
    clock.advance(DONE)
    failed = await client.videos.retrieve(video.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "policy"
    with pytest.raises(openai.BadRequestError):
        await client.videos.download_content(video.id)


async def test_content_before_completion(clock: FakeClock, client: openai.AsyncOpenAI) -> None:
    video = await client.videos.create(prompt="a cat")
    clock.advance(QUEUE + 1.0)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.videos.download_content(video.id)
    assert (caught.value.status_code, caught.value.code) == (400, "video_not_ready")


async def test_expired_content(clock: FakeClock, client: openai.AsyncOpenAI) -> None:
    video = await client.videos.create(prompt="a cat")
    clock.advance(DONE + 86400)
    assert (await client.videos.retrieve(video.id)).status == "completed"
    with pytest.raises(openai.NotFoundError, match="expired") as caught:
        await client.videos.download_content(video.id, variant="thumbnail")
    assert caught.value.code == "video_expired"


async def test_state_dir_survives_restart(clock: FakeClock, tmp_path: Path) -> None:
    reference = _image(720, 1280)
    async with Simulator(_config(clock, state_dir=tmp_path)) as first, _sdk(first) as sdk:
        kept = await sdk.videos.create(
            prompt="kept", input_reference=("r.png", reference, "image/png")
        )
        dropped = await sdk.videos.create(prompt="dropped")
        await sdk.videos.delete(dropped.id)
        clock.advance(DONE)
        thumbnail = (await sdk.videos.download_content(kept.id, variant="thumbnail")).content

    async with Simulator(_config(clock, state_dir=tmp_path)) as second, _sdk(second) as sdk:
        assert second.reference_for(kept.id) == reference
        again = await sdk.videos.retrieve(kept.id)
        assert (again.status, again.created_at, again.prompt) == ("completed", int(START), "kept")
        with pytest.raises(openai.NotFoundError):
            await sdk.videos.retrieve(dropped.id)
        assert [v.id async for v in sdk.videos.list()] == [kept.id]
        cached = await sdk.videos.download_content(kept.id, variant="thumbnail")
        assert cached.content == thumbnail


async def test_remix_of_a_completed_video(clock: FakeClock, client: openai.AsyncOpenAI) -> None:
    source = await client.videos.create(prompt="a cat", size="1280x720", seconds="8")
    with pytest.raises(openai.BadRequestError):
        await client.videos.remix(source.id, prompt="a cat, now in the rain")
    clock.advance(DONE)
    remix = await client.videos.remix(source.id, prompt="a cat, now in the rain")
    assert remix.remixed_from_video_id == source.id
    assert (remix.size, remix.seconds, remix.status) == ("1280x720", "8", "queued")
    clock.advance(DONE)
    assert (await client.videos.retrieve(remix.id)).status == "completed"
    with pytest.raises(openai.NotFoundError):
        await client.videos.remix("video_missing", prompt="x")


async def test_simulators_sharing_a_state_dir_know_each_others_jobs(
    clock: FakeClock, tmp_path: Path
) -> None:
    async with (
        Simulator(_config(clock, state_dir=tmp_path)) as first,
        Simulator(_config(clock, state_dir=tmp_path)) as second,
        _sdk(first) as one,
        _sdk(second) as two,
    ):
        made = await one.videos.create(prompt="made by the first")
        assert (await two.videos.retrieve(made.id)).prompt == "made by the first"
        later = await two.videos.create(prompt="made by the second")
        assert [v.id async for v in one.videos.list(order="asc")] == [made.id, later.id]
        await two.videos.delete(made.id)
        assert [v.id async for v in one.videos.list()] == [later.id]
