"""The object-storage port, built for streaming.

``put`` takes an async iterator of chunks, so a video flows from the provider to the
store without ever being whole in memory, and returns the size and SHA-256 it counted
on the way. Keys are overwritten (upsert): a retried archive of the same row lands on
the same key instead of piling up copies. ``read`` streams an object back, so the
worker can tell whether a video it may have stored before a crash is there, and
measure what is (``measure``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    """Where an object now lives for good, and what was written."""

    url: str
    size: int
    sha256: str


class StorageError(Exception):
    """Writing failed; ``str()`` says why and, for a refusal, which setting to change.

    There is no "permanent" kind: a video is archived while the provider still holds
    it, so even a refusal (a bucket too small, a wrong key) is retried until the link
    expires, giving the operator that long to fix the setting the message names.
    """


class MissingObject(StorageError):
    """The store answered that it holds nothing at that key (an answer, not an outage)."""


PUBLIC_PREFIX = "/storage/v1/object/public"
"""Where public objects live under a store's base URL (Supabase's shape, kept by both)."""

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def check_bucket(bucket: str) -> None:
    """Bucket names as Supabase allows them, and safe as a directory name."""
    if not _BUCKET.match(bucket):
        raise StorageError(f"invalid bucket name {bucket!r}")


def key_parts(bucket: str, key: str) -> list[str]:
    """The path segments of ``bucket/key``, after the one rule every store applies.

    Plain names only (no ``..``, no empty or hidden segments, no spaces), so a key can
    neither escape a directory on disk nor need escaping in a URL.
    """
    check_bucket(bucket)
    parts = key.split("/")
    if not all(_KEY_PART.match(part) for part in parts):
        raise StorageError(f"invalid object key {key!r}")
    return parts


class ObjectStore(Protocol):
    """A bucketed object store with permanent public URLs."""

    async def put(
        self, bucket: str, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> StoredObject:
        """Stream ``chunks`` into ``bucket/key``, replacing any object there."""

    def read(self, bucket: str, key: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """``async with store.read(bucket, key) as chunks``: the object's bytes as stored.

        Raises ``MissingObject`` (on entering) when the store says there is none, and
        ``StorageError`` when it cannot say."""

    def public_url(self, bucket: str, key: str) -> str:
        """The permanent URL of ``bucket/key``."""

    async def delete(self, bucket: str, key: str) -> None:
        """Remove ``bucket/key``; an object already gone is no error (``prune`` re-runs)."""

    async def aclose(self) -> None:
        """Release connections."""


def locate(store: ObjectStore, url: str) -> tuple[str, str] | None:
    """The (bucket, key) of one of ``store``'s public URLs; None for any other URL.

    Both stores build URLs as ``<base>/storage/v1/object/public/<bucket>/<key>``, so
    the store's own prefix is read off a URL it makes.
    """
    prefix = store.public_url("b", "k")[: -len("b/k")]
    if not url.startswith(prefix):
        return None
    bucket, _, key = url[len(prefix) :].partition("/")
    try:
        key_parts(bucket, key)
    except StorageError:
        return None
    return bucket, key


Tap = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]


async def measure(
    store: ObjectStore, bucket: str, key: str, tap: Tap | None = None
) -> StoredObject | None:
    """What ``store`` holds at ``bucket/key``: its URL, and its size and SHA-256 read back
    (streamed, through ``tap`` if given); None when the store says there is nothing.

    Raises ``StorageError`` when the store cannot say (an outage, a refusal)."""
    digest = Digest()
    try:
        async with store.read(bucket, key) as chunks:
            async for _ in digest.tap(chunks if tap is None else tap(chunks)):
                pass
    except MissingObject:
        return None
    if digest.size == 0:
        return None  # no store writes an empty object (``put`` refuses one)
    return StoredObject(store.public_url(bucket, key), digest.size, digest.sha256)


class Digest:
    """Counts bytes and hashes them as they stream past."""

    def __init__(self) -> None:
        self.size = 0
        self._sha = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        """Count and hash ``chunk`` (in a thread: hashlib lets go of the GIL)."""
        self.size += len(chunk)
        self._sha.update(chunk)

    async def tap(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if chunk:
                self.update(chunk)
                yield chunk

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()
