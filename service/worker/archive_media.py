"""The media of a stored video: a scratch copy of the video as it streams past (into
the store, or back out of it), then its facts, a poster and an optional rendition,
stored beside the video.

Best effort throughout: by the time any of this runs the video is stored and recorded
(stage ``describing``). A failure is logged (``video.media_skipped``) and the row
completes without that part, because the video itself is what was paid for.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import structlog

from service.core.events import Media
from service.media import probe as media
from service.storage.base import ObjectStore, StorageError
from service.storage.lane import WRITE_AHEAD, Lane

log = structlog.get_logger("service.worker.archive_media")

READ_CHUNK = 1024 * 1024


class ScratchCopy:
    """A scratch directory (``open`` to ``close``, or ``async with``) holding the copy
    written by ``tap``. Nothing here may fail the archive it taps: no directory or a
    failed write (a full disk) only stops the copy, and ``complete`` says whether it
    holds the whole video. The directory is made and removed in a thread: on a busy
    disk each takes milliseconds, which the event loop (every other row's step) would
    otherwise wait out."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.complete = False
        self._dir: str | None = None

    async def open(self) -> ScratchCopy:
        # Named here, made in the thread: a step cancelled while the thread runs still
        # knows the directory, so close() removes it (rmtree ignores one never made).
        self._dir = os.path.join(tempfile.gettempdir(), f"sora-archive-{uuid.uuid4().hex}")
        try:
            await asyncio.to_thread(os.mkdir, self._dir, 0o700)
        except OSError as err:
            _give_up(err)
        else:
            self.path = Path(self._dir) / "video.mp4"
        return self

    async def close(self) -> None:
        self.complete = False
        if self._dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._dir, ignore_errors=True)

    async def __aenter__(self) -> ScratchCopy:
        return await self.open()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def tap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` unchanged, written to the copy on the way (from its start)."""
        self.complete = False
        copy = None if self.path is None else _Writing(self.path)
        try:
            if copy is not None:
                await copy.open()
            async for chunk in chunks:
                if copy is not None:
                    await copy.write(chunk)
                yield chunk
            self.complete = copy is not None and await copy.finish()
        finally:
            if copy is not None:
                await copy.aclose()


class _Writing:
    """A scratch copy being written on a lane of its own, so the chunks go on to the
    store while earlier ones are written. A failure (a full disk) only ends the copy:
    ``ok`` turns False and the calls after it do nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ok = True
        self._lane = Lane(WRITE_AHEAD)
        self._handle: BinaryIO | None = None

    async def open(self) -> None:
        await self._step(self._lane.run, self._open)

    async def write(self, chunk: bytes) -> None:
        if self.ok:
            await self._step(self._lane.push, self._write, chunk)

    async def finish(self) -> bool:
        """Whether the copy holds every chunk written, now closed."""
        if self.ok:
            await self._step(self._lane.run, self._close)
        return self.ok

    async def aclose(self) -> None:
        await self._lane.aclose(self._close)

    async def _step(self, step: Callable[..., Awaitable[None]], *args: object) -> None:
        try:
            await step(*args)
        except OSError as err:
            self.ok = False
            _give_up(err)

    def _open(self) -> None:
        self._handle = self.path.open("wb")

    def _write(self, chunk: bytes) -> None:
        assert self._handle is not None, "_open runs first on the lane"
        self._handle.write(chunk)

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _give_up(err: OSError) -> None:
    log.warning("video.media_skipped", part="scratch copy", error=err.strerror or str(err))


class Describer:
    """Reads an archived video's facts and stores its poster (and rendition)."""

    def __init__(self, store: ObjectStore, bucket: str, rendition_kbps: int) -> None:
        self.store = store
        self.bucket = bucket
        self.rendition_kbps = rendition_kbps
        # One probe or rendition at a time per worker: they are CPU work (a rendition
        # can take seconds), and the worker's other rows must not queue behind several.
        self._cpu = asyncio.Semaphore(1)

    async def describe(self, name: str, path: Path) -> Media:
        """``name`` is the video's key without ``.mp4``; the poster and the rendition
        are stored beside it (``name.poster.webp``, ``name.small.mp4``).

        Never raises: the video is already stored, and a failure here (a decoder's
        odd exception included) must not send the row back to download it again."""
        try:
            return await self._describe(name, path)
        except Exception as err:
            log.warning("video.media_skipped", part="media", error=repr(err))
            return Media()

    async def _describe(self, name: str, path: Path) -> Media:
        try:
            async with self._cpu:
                facts = await asyncio.to_thread(media.probe, path)
        except media.MediaError as err:
            log.warning("video.media_skipped", part="probe", error=str(err))
            return Media()
        poster_url = await self._put_poster(name, facts.poster_webp)
        rendition_url = await self._rendition(name, path) if self.rendition_kbps else None
        return Media(facts.duration_seconds, facts.width, facts.height, poster_url, rendition_url)

    async def _put_poster(self, name: str, image: bytes) -> str | None:
        async def one() -> AsyncIterator[bytes]:
            yield image

        try:
            stored = await self.store.put(self.bucket, f"{name}.poster.webp", one(), "image/webp")
        except (StorageError, OSError) as err:
            log.warning("video.media_skipped", part="poster", error=str(err))
            return None
        return stored.url

    async def _rendition(self, name: str, path: Path) -> str | None:
        target = path.with_name("small.mp4")
        try:
            async with self._cpu:
                await asyncio.to_thread(media.render, path, target, self.rendition_kbps)
            stored = await self.store.put(
                self.bucket, f"{name}.small.mp4", _read(target), "video/mp4"
            )
        except (media.MediaError, StorageError, OSError) as err:
            log.warning("video.media_skipped", part="rendition", error=str(err))
            return None
        return stored.url


async def _read(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk
    finally:
        handle.close()
