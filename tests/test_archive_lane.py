"""Archiving with receiving and writing overlapped (issue 27): a download's 1 MiB
chunks go to a lane of the file's own (``service.storage.lane``) while the next ones
arrive.

What the overlap must not cost: the bytes stored and their SHA-256 are the source's,
a download cut or refused part-way leaves nothing in place, a failed write stops the
receiving (and a failed receive the writing), and no lane thread outlives its put.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from service.media.delivery import CHUNK_SIZE, Delivery, DeliveryFailed, DeliveryRefused
from service.storage import local
from service.storage.lane import WRITE_AHEAD, Lane, LaneClosed
from service.storage.local import LocalStore

VIDEO = os.urandom(23 * 1024 * 1024 + 12_345)  # a realistic size, not a chunk multiple
PIECES = (1, 7_000, 65_536, 300_000, 2 * 1024 * 1024)  # as a server may send them
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sora-lane")]


def stored_files(root: Path) -> list[Path]:
    """Every file under ``root``, partial files included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """A provider's file host on loopback; its base URL."""
    app = web.Application()
    app.router.add_get("/video.mp4", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def uneven(body: bytes, cut_at: int | None = None, declared: int | None = None) -> Handler:
    """Sends ``body`` in pieces of uneven sizes; stops at ``cut_at`` and hangs up."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        if declared is not None:
            response.content_length = declared
        await response.prepare(request)
        sent, turn = 0, 0
        end = len(body) if cut_at is None else cut_at
        while sent < end:
            piece = body[sent : min(end, sent + PIECES[turn % len(PIECES)])]
            await response.write(piece)
            sent, turn = sent + len(piece), turn + 1
        if cut_at is not None:
            assert request.transport is not None
            request.transport.close()
        return response

    return handler


async def archive(base: str, root: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
    guard = Delivery((), max_bytes=max_bytes, timeout=10.0).with_origin(base)
    async with guard.stream(f"{base}/video.mp4", "the video") as chunks:
        await LocalStore(root, "http://x").put("hug-videos", "v.mp4", chunks, "video/mp4")


async def test_a_multi_chunk_video_is_stored_byte_for_byte_with_its_sha256(
    tmp_path: Path,
) -> None:
    async with serving(uneven(VIDEO, declared=len(VIDEO))) as base:
        guard = Delivery((), max_bytes=64 * 1024 * 1024, timeout=10.0).with_origin(base)
        sizes: list[int] = []

        async def counted(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            async for chunk in chunks:
                sizes.append(len(chunk))
                yield chunk

        async with guard.stream(f"{base}/video.mp4", "the video") as chunks:
            stored = await LocalStore(tmp_path, "http://x").put(
                "hug-videos", "v.mp4", counted(chunks), "video/mp4"
            )
    assert (tmp_path / "hug-videos" / "v.mp4").read_bytes() == VIDEO
    assert stored.size == len(VIDEO)
    assert stored.sha256 == hashlib.sha256(VIDEO).hexdigest()
    assert all(size >= CHUNK_SIZE for size in sizes[:-1]), "pieces joined into big chunks"
    assert stored_files(tmp_path) == [tmp_path / "hug-videos" / "v.mp4"]
    assert lane_threads() == []


async def test_a_download_cut_part_way_leaves_nothing_in_place(tmp_path: Path) -> None:
    cut = uneven(VIDEO, cut_at=len(VIDEO) // 2, declared=len(VIDEO))
    async with serving(cut) as base:
        with pytest.raises(DeliveryFailed, match="broke off"):
            await archive(base, tmp_path)
    assert stored_files(tmp_path) == []
    assert lane_threads() == []


async def test_a_video_over_the_size_limit_is_refused_while_it_streams(tmp_path: Path) -> None:
    async with serving(uneven(VIDEO)) as base:  # no Content-Length: counted as it comes
        with pytest.raises(DeliveryRefused, match="larger than"):
            await archive(base, tmp_path, max_bytes=len(VIDEO) - 1)
    assert stored_files(tmp_path) == []
    assert lane_threads() == []


async def test_a_failed_write_stops_the_receiving_and_nothing_is_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = 0

    def full_disk(self: object, chunk: bytes) -> None:
        nonlocal written
        written += 1
        if written == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(local._Partial, "write", full_disk)
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 1024

    with pytest.raises(OSError, match="No space left"):
        await LocalStore(tmp_path, "http://x").put("hug-videos", "v.mp4", endless(), "video/mp4")
    # The receiver is at most WRITE_AHEAD chunks past the write that failed.
    assert pulled <= 2 + WRITE_AHEAD + 1
    assert written == 2, "the writes queued after the failed one never ran"
    assert stored_files(tmp_path) == []
    assert lane_threads() == []


async def test_a_put_cancelled_while_receiving_leaves_nothing_behind(tmp_path: Path) -> None:
    waiting = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"first chunk"
        waiting.set()
        await asyncio.Event().wait()  # the provider goes quiet
        yield b"never"

    store = LocalStore(tmp_path, "http://x")
    put = asyncio.create_task(store.put("hug-videos", "v.mp4", stalled(), "video/mp4"))
    await waiting.wait()
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert stored_files(tmp_path) == []
    assert lane_threads() == []


async def test_closing_a_lane_drops_the_queued_calls_and_runs_the_last_after_the_running_one() -> (
    None
):
    lane = Lane(depth=4)
    release, ran = threading.Event(), []
    await lane.push(release.wait)  # the call running when the lane closes
    await lane.push(ran.append, "queued")
    await lane.push(ran.append, "queued too")
    asyncio.get_running_loop().call_soon(release.set)  # once aclose has begun
    await lane.aclose(lambda: ran.append("last"))
    assert ran == ["last"]
    assert lane_threads() == []
    with pytest.raises(LaneClosed):
        await lane.push(ran.append, "after")


async def test_a_lane_call_after_a_failed_one_never_runs_and_the_error_is_raised() -> None:
    lane = Lane(depth=4)
    release, ran = threading.Event(), []

    def fails() -> None:
        release.wait()  # fails only once both calls after it are queued
        raise OSError(5, "Input/output error")

    await lane.push(fails)
    await lane.push(ran.append, "write after the failure")
    asyncio.get_running_loop().call_soon(release.set)
    with pytest.raises(OSError, match="Input/output"):
        await lane.run(ran.append, "rename")
    await lane.aclose()
    assert ran == []
    assert lane_threads() == []
