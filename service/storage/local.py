"""Local-disk object storage: the embedded default, served over HTTP by ``server.py``.

Files land under ``root/bucket/key`` through a temporary file and an atomic rename, so
a reader never sees half a video and a crash mid-write leaves no torn object behind.
URLs have Supabase's public-object shape, so front ends treat both backends alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from service.storage.base import (
    PUBLIC_PREFIX,
    Digest,
    MissingObject,
    StorageError,
    StoredObject,
    key_parts,
)
from service.storage.lane import WRITE_AHEAD, Lane

READ_CHUNK = 1024 * 1024
WRITEBACK_EVERY = 8 * 1024 * 1024
"""How many bytes are written between two writeback starts (``_Partial``)."""


def object_path(root: Path, bucket: str, key: str) -> Path:
    """The file for ``bucket/key``; ``key_parts`` refuses anything that could escape ``root``."""
    return root.joinpath(bucket, *key_parts(bucket, key))


class LocalStore:
    """``ObjectStore`` on a local directory."""

    def __init__(self, root: Path, public_base_url: str) -> None:
        self.root = root
        self.public_base_url = public_base_url.rstrip("/")

    async def put(
        self, bucket: str, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> StoredObject:
        """Receive ``chunks`` on the loop while a lane of its own hashes and writes them
        (``Lane``: receiving and writing overlap, at most ``WRITE_AHEAD`` chunks held)."""
        partial = _Partial(object_path(self.root, bucket, key), f"{bucket}/{key}")
        lane = Lane(WRITE_AHEAD)
        try:
            await lane.run(partial.open)
            async for chunk in chunks:
                if chunk:
                    await lane.push(partial.write, chunk)
            await lane.run(partial.commit)
        except BaseException:
            await lane.aclose(partial.discard)
            raise
        await lane.aclose()
        digest = partial.digest
        return StoredObject(self.public_url(bucket, key), digest.size, digest.sha256)

    @asynccontextmanager
    async def read(self, bucket: str, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            handle: BinaryIO = await asyncio.to_thread(
                object_path(self.root, bucket, key).open, "rb"
            )
        except FileNotFoundError as err:
            raise MissingObject(f"no {bucket}/{key} under {self.root}") from err
        except OSError as err:
            raise StorageError(f"cannot read {bucket}/{key}: {err.strerror}") from err
        try:
            yield _chunks_of(handle)
        finally:
            handle.close()

    def public_url(self, bucket: str, key: str) -> str:
        return f"{self.public_base_url}{PUBLIC_PREFIX}/{bucket}/{key}"

    async def delete(self, bucket: str, key: str) -> None:
        await asyncio.to_thread(object_path(self.root, bucket, key).unlink, missing_ok=True)

    async def aclose(self) -> None:
        return None


PARTIAL_MAX_AGE = 3600.0


def remove_stale_partials(root: Path, max_age: float) -> int:
    """Delete half-written files left by a killed worker (older than ``max_age`` s).

    A live upload's partial file is younger than that; a sibling replica's is safe.
    """
    cutoff = time.time() - max_age
    removed = 0
    for path in root.rglob(".*.part"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


async def _chunks_of(handle: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
        yield chunk


class _Partial:
    """An object being written beside its place, then synced and renamed into it.

    Every method runs on the put's lane, one after another: the SHA-256 is taken of
    exactly the bytes written, and the rename comes only after every write and the
    fsync succeeded (a failed call stops the lane)."""

    def __init__(self, target: Path, name: str) -> None:
        self.target = target
        self.name = name
        self.path = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        self.digest = Digest()
        self._handle: BinaryIO | None = None
        self._flushing = 0
        """Where the last writeback started (``_start_writeback``)."""

    def open(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("wb")

    def write(self, chunk: bytes) -> None:
        assert self._handle is not None, "open() runs first on the lane"
        self.digest.update(chunk)
        self._handle.write(chunk)
        if self.digest.size - self._flushing >= WRITEBACK_EVERY:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Have the kernel start writing out what has been written so far, without
        waiting for it: the disk works while the rest arrives, and the fsync before the
        rename finds little left (else all of it waits for that fsync, the kernel
        holding gigabytes dirty before it writes any back on its own). Also lets the
        page cache drop the pages once written: the object is read back rarely."""
        assert self._handle is not None, "open() runs first on the lane"
        if hasattr(os, "posix_fadvise"):  # POSIX, not on macOS or Windows
            self._handle.flush()
            start, end = self._flushing, self.digest.size
            os.posix_fadvise(self._handle.fileno(), start, end - start, os.POSIX_FADV_DONTNEED)
        self._flushing = self.digest.size

    def commit(self) -> None:
        assert self._handle is not None, "open() runs first on the lane"
        if self.digest.size == 0:
            raise StorageError(f"refusing to store an empty object at {self.name}")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.path, self.target)

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self.path.unlink(missing_ok=True)
