"""Each completed row records what its video is: length, size, a poster, a rendition."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

from service.config import Settings
from service.local.simulator import SimulatorConfig
from service.runtime import Runtime, open_runtime
from tests.conftest import FAST_SIMULATOR, changed
from tests.test_pipeline import finished, running


async def fetch(url: str) -> bytes:
    async with httpx.AsyncClient() as client:
        answer = await client.get(url)
    assert answer.status_code == 200, url
    return answer.content


def facts(mp4: bytes) -> tuple[float, int, int]:
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.duration is not None and stream.time_base is not None
        seconds = float(stream.duration * stream.time_base)
        return seconds, stream.codec_context.width, stream.codec_context.height


async def test_a_completed_row_has_its_length_size_and_a_poster(runtime: Runtime) -> None:
    async with running(runtime.worker()):
        row = await finished(runtime, await runtime.repo.insert_request("a poster, please"))
    assert row["status"] == "completed"
    seconds, width, height = facts(await fetch(row["video_url"]))
    assert (row["width"], row["height"]) == (width, height) == (720, 1280)
    assert row["duration_seconds"] == pytest.approx(seconds, abs=0.05)
    poster = Image.open(io.BytesIO(await fetch(row["poster_url"])))
    assert poster.format == "WEBP" and poster.size == (720, 1280)
    assert row["poster_url"].startswith(row["video_url"].rsplit("/", 1)[0])  # beside it
    assert row["rendition_url"] is None  # off by default


async def test_a_rendition_is_stored_beside_the_video_when_asked(settings: Settings) -> None:
    asked = changed(settings, rendition_bitrate=200)
    config = SimulatorConfig(**FAST_SIMULATOR)
    async with open_runtime(
        asked, apply_migrations=False, stand_in_configs={"openai": config}
    ) as rt:
        async with running(rt.worker()):
            row = await finished(rt, await rt.repo.insert_request("a small copy too"))
        original, small = await fetch(row["video_url"]), await fetch(row["rendition_url"])
    assert facts(small)[1:] == facts(original)[1:]
    assert facts(small)[0] == pytest.approx(facts(original)[0], abs=0.1)


async def test_media_that_cannot_be_made_never_fails_the_row(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No scratch space at all: the video is still archived, without its media facts.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    worker = runtime.worker()
    async with running(worker):
        row = await finished(runtime, await runtime.repo.insert_request("no scratch space"))
    assert row["status"] == "completed" and row["video_sha256"]
    assert (row["duration_seconds"], row["poster_url"]) == (None, None)
    # Counted, so an operator sees it without reading every log line.
    assert b"sora_archived_without_media_total 1.0" in worker.metrics.render(None)
