"""Does archiving stay flat in memory whatever the video size? (README: "Stream, never buffer")

Streams a video of N MiB from a local server speaking the Videos API content endpoint,
through the real OpenAI adapter (official SDK), into the local store, and reports the
process's peak RSS. Each size runs in a fresh process so peaks do not mix.

    .venv/bin/python bench/archive_memory.py            # 16, 128, 512 MiB
    .venv/bin/python bench/archive_memory.py 64 1024
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from service.web.serving import serve

CHUNK = b"\x00\x00\x00\x18ftypmp42" + bytes(1024 * 1024 - 12)


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def content_app(mib: int) -> web.Application:
    """The Videos API content endpoint, serving an MP4-headed file of ``mib`` MiB."""

    async def content(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = mib * len(CHUNK)
        await response.prepare(request)
        for _ in range(mib):
            await response.write(CHUNK)
        return response

    app = web.Application()
    app.router.add_get("/v1/videos/{id}/content", content)
    return app


async def timed_archive(base_url: str, mib: int) -> tuple[float, float, float]:
    """Archive one video of ``mib`` MiB from ``base_url`` as the worker does (the real
    adapter into the local store); its seconds, its CPU seconds (all threads: less
    moved by other load than the seconds), and this process's RSS before it."""
    from service.providers.openai_videos import OpenAIVideos
    from service.storage.local import LocalStore

    provider = OpenAIVideos("sk-bench", base_url)
    with tempfile.TemporaryDirectory() as root:
        store = LocalStore(Path(root), "http://bench")
        baseline = current_rss_mib()
        started, cpu = time.perf_counter(), time.process_time()
        async with provider.download("video_bench") as chunks:
            stored = await store.put("hug-videos", "bench.mp4", chunks, "video/mp4")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    await provider.aclose()
    assert stored.size == mib * len(CHUNK)
    return seconds, cpu, baseline


async def download_from(base_url: str, mib: int) -> None:
    """The archive's download alone (the guarded fetcher, bytes discarded); a JSON line.
    Beside the archive it shows what is left to the HTTP stack once storing overlaps."""
    import json

    from service.providers.openai_videos import OpenAIVideos

    provider = OpenAIVideos("sk-bench", base_url)
    received, started = 0, time.perf_counter()
    async with provider.download("video_bench") as chunks:
        async for chunk in chunks:
            received += len(chunk)
    seconds = time.perf_counter() - started
    await provider.aclose()
    assert received == mib * len(CHUNK)
    print(json.dumps({"download_mib_per_s": mib / seconds}))


async def one(mib: int) -> None:
    runner, port = await serve(content_app(mib), "127.0.0.1", 0)
    seconds, _, baseline = await timed_archive(f"http://127.0.0.1:{port}/v1", mib)
    await runner.cleanup()
    print(
        f"{mib:>6} MiB  {seconds:6.2f} s  {mib / seconds:7.1f} MiB/s  "
        f"rss before {baseline:6.1f} MiB  peak {peak_rss_mib():6.1f} MiB"
    )


async def serve_content(mib: int) -> None:
    """The content endpoint alone (for `make bench`: server and client in two processes,
    as a provider and a worker are); prints its base URL."""

    _, port = await serve(content_app(mib), "127.0.0.1", 0)
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.Event().wait()


async def archive_from(base_url: str, mib: int) -> None:
    """Archive one video from ``base_url`` as the worker does; print a JSON line."""
    import json

    seconds, cpu, baseline = await timed_archive(base_url, mib)
    growth = peak_rss_mib() - baseline
    figures = {"mib_per_s": mib / seconds, "cpu_s_per_gib": cpu * 1024 / mib}
    print(json.dumps(figures | {"rss_growth_mib": growth}))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        asyncio.run(one(int(sys.argv[2])))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(serve_content(int(sys.argv[2])))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--from":
        asyncio.run(archive_from(sys.argv[2], int(sys.argv[3])))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--download":
        asyncio.run(download_from(sys.argv[2], int(sys.argv[3])))
        return
    sizes = [int(a) for a in sys.argv[1:]] or [16, 128, 512]
    print("  size      time   throughput   memory (server and client in one process)")
    for mib in sizes:
        subprocess.run([sys.executable, __file__, "--one", str(mib)], check=True)


if __name__ == "__main__":
    main()
