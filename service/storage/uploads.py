"""A photo on the requester's disk, put where the worker (and the provider) can read it.

``sora-worker request --image1 PATH`` is the seed app's upload step: the file goes into
the image bucket of the configured store (Supabase, or the local store) under a fresh
key, and the row gets its permanent public URL. Only what the worker accepts goes up
(JPEG, PNG, WebP, told by their first bytes, not the name), streamed in chunks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from service.media import headers, images
from service.storage.base import ObjectStore

CHUNK = 256 * 1024
KINDS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp")}


class PhotoFileError(ValueError):
    """The local file cannot be a photo for a row; the message says which and why."""


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def photo_kind(head: bytes) -> tuple[str, str] | None:
    """(content type, extension) of a JPEG, PNG or WebP, from its first 12 bytes."""
    return KINDS.get(headers.format_of(head) or "")


def check_photo_file(label: str, path: Path, max_bytes: int) -> tuple[str, str]:
    """Refuse what the worker would refuse, before anything is uploaded."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(12)
            if photo_kind(head) is not None and size <= max_bytes:
                images.inspect(label, handle)  # its pixels, from its header
    except images.ImageError as err:
        said = str(err).removeprefix(f"{label} ")
        raise PhotoFileError(f"{label}: {str(path)!r} {said}") from err
    except FileNotFoundError as err:
        raise PhotoFileError(f"{label}: no such file {str(path)!r}") from err
    except OSError as err:
        raise PhotoFileError(f"{label}: cannot read {str(path)!r} ({err.strerror})") from err
    kind = photo_kind(head)
    if kind is None:
        raise PhotoFileError(f"{label}: {str(path)!r} is not a JPEG, PNG or WebP file")
    if size > max_bytes:
        raise PhotoFileError(
            f"{label}: {str(path)!r} is {size:,} bytes; the limit is {max_bytes:,} "
            "(SORA_IMAGE_MAX_BYTES)"
        )
    return kind


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


async def upload_photo(
    store: ObjectStore, bucket: str, label: str, path: Path, max_bytes: int
) -> str:
    """Put a local photo into ``bucket`` under a new key; return its public URL."""
    mime, ext = check_photo_file(label, path, max_bytes)
    stored = await store.put(bucket, f"requests/{uuid.uuid4()}.{ext}", _chunks(path), mime)
    return stored.url
