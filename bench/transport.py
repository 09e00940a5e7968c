"""Which of the OpenAI SDK's HTTP transports should polls and downloads use?

The SDK's default (HTTPX2) against its aiohttp transport (``openai.DefaultAioHttpClient``),
interleaved in one run: CPU per ``videos.retrieve`` against the simulator in another
process (16 at a time), and download speed of a 256 MiB video from a content server
in another process. Creates stay on the default transport whatever this says: only it
tells a connection that never opened from one dropped after the POST went out
(``service/providers/openai_videos.py``).

    .venv/bin/python -m bench.transport
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx2
import openai

from bench.scenarios import create_jobs, simulator_process

POLLS = 2000
MIB = 256


def client(transport: str, base_url: str) -> openai.AsyncOpenAI:
    limits = httpx2.Limits(max_connections=8, max_keepalive_connections=8)
    http = (
        openai.DefaultAioHttpClient(limits=limits)
        if transport == "aiohttp"
        else openai.DefaultAsyncHttpxClient(limits=limits)
    )
    return openai.AsyncOpenAI(api_key="bench", base_url=base_url, http_client=http)


async def cpu_per_poll(transport: str, base_url: str, ids: list[str]) -> float:
    sdk = client(transport, base_url)
    gate = asyncio.Semaphore(16)

    async def poll(video_id: str) -> None:
        async with gate:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                await sdk.videos.retrieve(video_id)

    await poll(ids[0])  # connections open before the clock starts
    cpu = time.process_time()
    await asyncio.gather(*(poll(ids[i % len(ids)]) for i in range(POLLS)))
    cpu = time.process_time() - cpu
    await sdk.close()
    return cpu / POLLS * 1000


async def download_speed(transport: str, base_url: str) -> float:
    sdk = client(transport, base_url)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        async with sdk.videos.with_streaming_response.download_content("video_bench") as body:
            async for _ in body.iter_bytes(256 * 1024):
                pass
    seconds = time.perf_counter() - started
    await sdk.close()
    return MIB / seconds


async def compare(content_url: str) -> None:
    with simulator_process(
        queue_seconds=0.0,
        generation_seconds=3600.0,
        models={"bench": ["64x64"]},
        seconds=["1"],
    ) as base_url:
        ids = await create_jobs(base_url, 500)
        print(f"{'transport':<10} {'CPU per poll':>13} {'download':>12}")
        for transport in ("httpx2", "aiohttp", "httpx2", "aiohttp"):
            cpu = await cpu_per_poll(transport, base_url, ids)
            speed = await download_speed(transport, content_url)
            print(f"{transport:<10} {cpu:>10.2f} ms {speed:>7.0f} MiB/s", flush=True)


def main() -> None:
    content = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("archive_memory.py")), "--serve", str(MIB)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert content.stdout is not None
        asyncio.run(compare(content.stdout.readline().strip()))
    finally:
        content.terminate()
        content.wait(10)


if __name__ == "__main__":
    main()
