"""``sora-worker demo``: the whole pipeline once, on this machine, with nothing to set up.

It starts what the embedded defaults start (PostgreSQL, the Sora simulator, the local
storage server), draws two sample photos, inserts one request row exactly as an app
would, runs the real daemon until the row finishes, then checks the archived video the
way a user would: fetch ``video_url`` over HTTP, compare its SHA-256 with the row's,
and decode it. The row is printed as one JSON object on the last line of stdout.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
import httpx
from PIL import Image, ImageDraw

from service.commands.output import as_json
from service.commands.progress import follow
from service.config import Settings
from service.local.replicate_server import ReplicateConfig
from service.local.simulator import SimulatorConfig
from service.local.veo_server import VeoConfig
from service.providers.registry import SimulatorSettings
from service.runtime import Runtime, open_runtime
from service.signals import until_signalled

DEMO_PROMPT = (
    "The two people from the reference photo step toward each other and share a warm, "
    "long hug in a sunlit park; gentle handheld camera, soft afternoon light."
)
DEMO_SIMULATOR = SimulatorConfig(queue_seconds=1.0, generation_seconds=6.0)
DEMO_VEO = VeoConfig(queue_seconds=1.0, generation_seconds=6.0)
DEMO_REPLICATE = ReplicateConfig(queue_seconds=1.0, generation_seconds=6.0)
TIMEOUT = 300.0


@dataclass(frozen=True)
class Probe:
    width: int
    height: int
    seconds: float
    codec: str


def sample_photo(name: str, shirt: tuple[int, int, int], sky: tuple[int, int, int]) -> bytes:
    """A simple portrait of a person, drawn so the demo needs no files or network."""
    image = Image.new("RGB", (600, 800), sky)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 560, 600, 800), fill=(86, 160, 72))
    draw.ellipse((210, 150, 390, 350), fill=(236, 196, 160))  # head
    draw.ellipse((255, 220, 275, 240), fill=(40, 40, 40))
    draw.ellipse((325, 220, 345, 240), fill=(40, 40, 40))
    draw.arc((260, 250, 340, 310), 20, 160, fill=(150, 60, 60), width=5)
    draw.rounded_rectangle((170, 360, 430, 700), radius=60, fill=shirt)  # body
    draw.text((20, 20), name, fill=(20, 20, 20))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


async def _one_chunk(data: bytes) -> Any:
    yield data


async def upload_photos(runtime: Runtime) -> tuple[str, str]:
    bucket = runtime.settings.storage.image_bucket
    urls = []
    for name, shirt, sky in (
        ("Alex", (200, 60, 60), (170, 210, 240)),
        ("Sam", (60, 90, 200), (240, 215, 170)),
    ):
        stored = await runtime.store.put(
            bucket,
            f"demo/{name.lower()}.jpg",
            _one_chunk(sample_photo(name, shirt, sky)),
            "image/jpeg",
        )
        urls.append(stored.url)
    return urls[0], urls[1]


def probe_mp4(path: Path) -> Probe:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(container.duration or 0) / 1_000_000
        return Probe(stream.width, stream.height, duration, stream.codec_context.name)


async def verify_video(http: httpx.AsyncClient, row: dict[str, Any]) -> Probe:
    """Fetch the permanent URL like a browser would and check what came back."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "video.mp4"
        with path.open("wb") as out:
            async with http.stream("GET", row["video_url"]) as response:
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != row["video_sha256"]:
            raise RuntimeError("the served video does not match the row's video_sha256")
        return await asyncio.to_thread(probe_mp4, path)


async def run_demo(settings: Settings, *, fresh: bool, keep_serving: bool) -> int:
    data_dir = settings.stand_ins.data_dir
    if fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    say = _say
    simulator = settings.stand_ins.of("openai", SimulatorSettings)
    async with open_runtime(
        settings,
        stand_in_configs={
            "openai": replace(DEMO_SIMULATOR, profile=simulator.profile),
            "google_veo": DEMO_VEO,
            "replicate": DEMO_REPLICATE,
        },
        flexible_ports=True,
    ) as runtime:
        say(f"demo: generating through {runtime.providers.default}")
        image1, image2 = await upload_photos(runtime)
        say(f"demo: sample photos at {image1} and {image2}")
        row_id = await runtime.repo.insert_request(DEMO_PROMPT, image1, image2)
        say(f"demo: inserted row {row_id}; the worker heard it and takes it from here")
        worker = runtime.worker()
        worker_task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(TIMEOUT):
                row = await follow(runtime.operator.fetch_row, row_id, "demo")
        finally:
            worker.stop()
            await worker_task
        ok = row["status"] == "completed"
        if ok:
            probe = await verify_video(runtime.http, row)
            say(
                f"demo: verified {row['video_url']}: {probe.codec} {probe.width}x{probe.height}, "
                f"{probe.seconds:.1f} s, {row['video_bytes']:,} bytes, sha256 matches"
            )
            ok = f"{probe.width}x{probe.height}" == row["size"]
        else:
            say(f"demo: the video failed: {row['error']}")
        if keep_serving and ok:
            say(f"demo: serving {row['video_url']} until Ctrl-C")
            await until_signalled()
    print(json.dumps(as_json(row), sort_keys=True))
    return 0 if ok else 1


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
