"""The object-storage port, built for streaming.

``put`` takes an async iterator of chunks, so a video flows from the provider to the
store without ever being whole in memory, and returns the size and SHA-256 it counted
on the way. Keys are overwritten (upsert): a retried archive of the same row lands on
the same key instead of piling up copies.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    """Where an object now lives for good, and what was written."""

    url: str
    size: int
    sha256: str


class StorageError(Exception):
    """Writing failed. ``permanent`` errors (too large, refused) are not worth retrying."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class ObjectStore(Protocol):
    """A bucketed object store with permanent public URLs."""

    async def put(
        self, bucket: str, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> StoredObject:
        """Stream ``chunks`` into ``bucket/key``, replacing any object there."""

    def public_url(self, bucket: str, key: str) -> str:
        """The permanent URL of ``bucket/key``."""

    async def aclose(self) -> None:
        """Release connections."""


class Digest:
    """Counts bytes and hashes them as they stream past."""

    def __init__(self) -> None:
        self.size = 0
        self._sha = hashlib.sha256()

    async def tap(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if chunk:
                self.size += len(chunk)
                self._sha.update(chunk)
                yield chunk

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()
