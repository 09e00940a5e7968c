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

READ_CHUNK = 1024 * 1024


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
        target = object_path(self.root, bucket, key)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        digest = Digest()
        handle: BinaryIO = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in digest.tap(chunks):
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush_and_close, handle)
            if digest.size == 0:
                raise StorageError(f"refusing to store an empty object at {bucket}/{key}")
            await asyncio.to_thread(os.replace, partial, target)
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
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


def _flush_and_close(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
