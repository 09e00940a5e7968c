"""What a finished Veo operation costs the worker in memory, the SDK's way and ours.

Veo on Vertex returns the video inline, base64 in the operation's JSON. The yardstick is
the official SDK's own ``operations.get`` (it parses the whole answer); beside it, the
adapter's poll and download, which read the answer as a stream. The Veo fake runs in
another process, so only the worker's memory is measured; each case runs in a fresh
process so peaks do not mix.

    .venv/bin/python -m bench.veo_memory          # 20 and 60 MiB videos
    .venv/bin/python -m bench.veo_memory 100
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

MODEL = "veo-3.1-generate-001"


def rss(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


async def serve_fake(mib: int, port: int) -> None:
    from service.local.veo_server import VeoConfig, VeoServer

    fake = VeoServer(VeoConfig(queue_seconds=0, generation_seconds=0))
    blob = os.urandom(mib * 1024 * 1024)

    async def render(_operation: object) -> bytes:
        return blob

    fake._render = render  # type: ignore[method-assign]  # a big video without encoding one
    await fake.start(port=port)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def measure(how: str, port: int) -> None:
    from google.genai import types

    from service.providers.base import VideoRequest
    from service.providers.google_veo import GoogleVeo

    provider = GoogleVeo("bench-key", f"http://127.0.0.1:{port}")
    job = await provider.submit(VideoRequest("a hug", MODEL, "1920x1080", "8", "bench"))
    before = rss("VmRSS:")
    received = 0
    if how == "sdk":
        operation = types.GenerateVideosOperation.model_validate({"name": job.id})
        done = await provider._client.aio.operations.get(operation)
        assert done.response is not None and done.response.generated_videos
        video = done.response.generated_videos[0].video
        received = len(video.video_bytes or b"") if video else 0
    else:
        assert (await provider.retrieve(job.id)).status == "completed"
        async with provider.download(job.id) as chunks:
            async for chunk in chunks:
                received += len(chunk)
    await provider.aclose()
    grew = rss("VmHWM:") - before
    print(f"  {how:<8} received {received / 2**20:5.0f} MiB, RSS grew {grew:6.0f} MiB")


def main() -> None:
    if sys.argv[1:2] == ["--fake"]:
        asyncio.run(serve_fake(int(sys.argv[2]), int(sys.argv[3])))
        return
    if sys.argv[1:2] == ["--measure"]:
        asyncio.run(measure(sys.argv[2], int(sys.argv[3])))
        return
    for mib in [int(a) for a in sys.argv[1:]] or [20, 60]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        fake = subprocess.Popen(
            [sys.executable, "-m", "bench.veo_memory", "--fake", str(mib), str(port)],
            stdout=subprocess.PIPE,
        )
        try:
            assert fake.stdout is not None and fake.stdout.readline().strip() == b"ready"
            print(f"a {mib} MiB video:")
            for how in ("sdk", "adapter"):
                command = [sys.executable, "-m", "bench.veo_memory", "--measure", how, str(port)]
                subprocess.run(command, check=True)
        finally:
            fake.kill()
            fake.wait()


if __name__ == "__main__":
    main()
