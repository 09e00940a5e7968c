"""Supabase Storage: public buckets; videos sent in 6 MiB chunks by resumable upload.

Why uploads are sent by hand: ``storage3``'s ``upload`` takes bytes or a file on disk,
so a video would have to be whole in memory or spooled to a temporary file first, and
it has no resumable (TUS) client. ``put`` reads the source into one 6 MiB buffer: an
object that fits goes out as one raw body (``POST /object/{bucket}/{key}``); a larger
one goes through TUS (``service.storage.tus``) chunk by chunk as it arrives from the
provider, and a dropped connection is resumed from the server's offset instead of
starting the video over. Every write replaces what is at the key (``x-upsert`` on
every request), so a retried or repeated archive lands where the first one did.
``read`` streams an object back (``GET /object/authenticated/...``): how the worker
learns whether a video it may have stored before a crash is there, and its checksum.
Bucket management is rare and small, so it goes through the official ``storage3``
client. How refusals are read: ``service.storage.supabase_errors``.

A raw body's size is checked against the bucket's limit only through its
``Content-Length`` (``storage/uploader.ts``), and a deferred-length TUS upload only
chunk by chunk, so ``put`` also enforces the bucket limit itself while reading.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError
from storage3.types import CreateOrUpdateBucketOptions

from service.storage.base import (
    PUBLIC_PREFIX,
    Digest,
    MissingObject,
    StorageError,
    StoredObject,
    check_bucket,
    key_parts,
)
from service.storage.supabase_errors import KEY_SETTING, Errors, read_error, status_of, unreachable
from service.storage.tus import TUS_CHUNK, TUS_PAUSES, Blocks, TusClient

__all__ = [
    "DEFAULT_CACHE_CONTROL",
    "IMAGE_MIME_TYPES",
    "KEY_SETTING",
    "TUS_CHUNK",
    "VIDEO_MIME_TYPES",
    "BucketSpec",
    "SupabaseStore",
    "default_bucket_specs",
]

DEFAULT_CACHE_CONTROL = "max-age=31536000"
VIDEO_MIME_TYPES = ("video/mp4", "image/webp")
IMAGE_MIME_TYPES = ("image/jpeg", "image/png", "image/webp")
# Connect fast, but give the server time to finish a large upload after the last byte.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=120.0)

_ABSENT = re.compile(r"no ?such ?(key|bucket)", re.I)
"""The codes of a Storage answer that says an object is not there (not an outage)."""


@dataclass(frozen=True)
class BucketSpec:
    """What a bucket must be: public, accepting these types, optionally size-capped."""

    allowed_mime_types: tuple[str, ...]
    file_size_limit: int | None = None


def default_bucket_specs(
    videos: str, images: str, *, video_size_limit: int | None = None
) -> dict[str, BucketSpec]:
    """The worker's two buckets: videos (with their webp thumbnails) and photos."""
    return {
        videos: BucketSpec(VIDEO_MIME_TYPES, video_size_limit),
        images: BucketSpec(IMAGE_MIME_TYPES),
    }


class SupabaseStore:
    """``ObjectStore`` on Supabase Storage, with permanent public URLs.

    ``url`` is the project URL (``https://<ref>.supabase.co``); the Storage API is
    ``{url}/storage/v1`` unless ``storage_url`` says otherwise (the storage server
    itself, without a gateway). Call ``ensure_buckets`` once at startup: it also learns
    each bucket's size limit, which ``put`` then enforces while streaming.
    """

    def __init__(
        self,
        url: str,
        service_role_key: str,
        http: httpx.AsyncClient | None = None,
        *,
        cache_control: str = DEFAULT_CACHE_CONTROL,
        storage_url: str | None = None,
        tus_pauses: tuple[float, ...] = TUS_PAUSES,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("SUPABASE_URL must be the project URL, like https://<ref>.supabase.co")
        if not service_role_key.strip():
            raise ValueError(f"{KEY_SETTING} is empty")
        self.url = url.rstrip("/")
        self.storage_url = (storage_url or f"{self.url}/storage/v1").rstrip("/")
        self.cache_control = cache_control
        self._owns_http = http is None
        # The key travels per request, never in the client's defaults, so nothing
        # that prints the client can show it.
        self._http = http or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
        self._auth = {"apikey": service_role_key, "Authorization": f"Bearer {service_role_key}"}
        # storage3 warns (an error under -W error) unless the base URL ends in "/".
        self._storage = AsyncStorageClient(
            f"{self.storage_url}/", dict(self._auth), http_client=self._http
        )
        self._size_limits: dict[str, int] = {}
        self._errors = Errors(service_role_key, self._size_limits)
        self._tus = TusClient(
            self._http, self.storage_url, self._auth, self._errors, pauses=tus_pauses
        )

    def __repr__(self) -> str:
        return f"SupabaseStore(url={self.url!r})"

    # ------------------------------------------------------------------ buckets

    async def ensure_buckets(self, specs: Mapping[str, BucketSpec]) -> None:
        """Create each missing bucket as public; refuse existing ones that cannot work.

        An existing bucket is never changed: making a bucket public, or widening what
        it accepts, is the owner's decision, so the error says what to change instead.
        """
        for bucket, spec in specs.items():
            check_bucket(bucket)
            found = await self._get_bucket(bucket)
            if found is None:
                found = await self._create_bucket(bucket, spec)
            public, limit, allowed = found
            if not public:
                raise StorageError(
                    f"Supabase bucket {bucket!r} exists but is private, and videos need "
                    f"permanent public URLs. Make it public: Dashboard > Storage > {bucket} > "
                    f"Edit bucket > 'Public bucket' on, or SQL: update storage.buckets set "
                    f"public = true where id = '{bucket}';"
                )
            refused = [m for m in spec.allowed_mime_types if not _mime_allowed(m, allowed)]
            if refused:
                raise StorageError(
                    f"Supabase bucket {bucket!r} does not accept {', '.join(refused)} "
                    f"(it allows {', '.join(allowed or [])}). Add them to its allowed MIME "
                    f"types: Dashboard > Storage > {bucket} > Edit bucket."
                )
            if limit is not None:
                self._size_limits[bucket] = limit
            else:
                self._size_limits.pop(bucket, None)

    async def _get_bucket(self, bucket: str) -> tuple[bool, int | None, list[str] | None] | None:
        """The bucket's (public, file_size_limit, allowed_mime_types), or None if missing."""
        try:
            found = await self._storage.get_bucket(bucket)
        except StorageApiError as err:
            if status_of(err.status) == 404:
                return None
            raise self._api_error(err, f"checking bucket {bucket!r}", bucket) from err
        except httpx.TransportError as err:
            raise unreachable(f"checking bucket {bucket!r}", err) from err
        return found.public, found.file_size_limit, found.allowed_mime_types

    async def _create_bucket(
        self, bucket: str, spec: BucketSpec
    ) -> tuple[bool, int | None, list[str] | None]:
        options: CreateOrUpdateBucketOptions = {
            "public": True,
            "allowed_mime_types": list(spec.allowed_mime_types),
        }
        if spec.file_size_limit is not None:
            options["file_size_limit"] = spec.file_size_limit
        try:
            await self._storage.create_bucket(bucket, options=options)
        except StorageApiError as err:
            status = status_of(err.status)
            if status == 413:
                raise StorageError(
                    f"cannot create Supabase bucket {bucket!r} with a file_size_limit of "
                    f"{spec.file_size_limit} bytes: that is above the project's global upload "
                    "limit (Dashboard > Project Settings > Storage). Lower the bucket limit "
                    "or raise the project's."
                ) from err
            if status != 409:
                raise self._api_error(err, f"creating bucket {bucket!r}", bucket) from err
            # Another worker created it between our get and our create: use theirs.
        except httpx.TransportError as err:
            raise unreachable(f"creating bucket {bucket!r}", err) from err
        found = await self._get_bucket(bucket)
        if found is None:
            raise StorageError(f"Supabase bucket {bucket!r} vanished right after creation")
        return found

    # ------------------------------------------------------------------ objects

    async def put(
        self, bucket: str, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> StoredObject:
        """Store ``chunks``: one request if they fit in a chunk, else a resumable upload.

        Up to ``TUS_CHUNK`` bytes are read first. A source that ends within them goes
        out as one plain upload; a longer one goes through TUS, so a dropped connection
        costs at most the chunk in flight instead of the whole video. Either way at
        most about two chunks are in memory, and an object already at the key is
        replaced.
        """
        path = _object_path(bucket, key)
        digest = Digest()
        limited = _limited(digest.tap(chunks), bucket, key, self._size_limits.get(bucket))
        blocks = Blocks(limited, TUS_CHUNK)
        first = await blocks.next()
        if first is None:
            raise StorageError(f"refusing to store an empty object at {bucket}/{key}")
        body, last = first
        if last:
            await self._put_whole(bucket, key, path, body, content_type)
        else:
            await self._tus.upload(bucket, key, first, blocks, content_type, self.cache_control)
        return StoredObject(self.public_url(bucket, key), digest.size, digest.sha256)

    async def _put_whole(
        self, bucket: str, key: str, path: str, body: bytes, content_type: str
    ) -> None:
        """The standard upload: the object as a raw body, with its length."""
        headers = {
            **self._auth,
            "Content-Type": content_type,
            "Cache-Control": self.cache_control,
            "x-upsert": "true",
        }
        try:
            response = await self._http.post(
                f"{self.storage_url}/object/{path}", content=body, headers=headers
            )
        except httpx.TransportError as err:
            raise unreachable(f"uploading {bucket}/{key}", err) from err
        if response.status_code != 200:
            raise self._errors.response(response, f"uploading {bucket}/{key}", bucket)

    @asynccontextmanager
    async def read(self, bucket: str, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream ``bucket/key`` back as stored (with the service key, so a private
        bucket works too). ``MissingObject`` when the server says it is not there."""
        path = _object_path(bucket, key)
        doing = f"reading {bucket}/{key}"
        request = self._http.build_request(
            "GET", f"{self.storage_url}/object/authenticated/{path}", headers=self._auth
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as err:
            raise unreachable(doing, err) from err
        try:
            if response.status_code != 200:
                await response.aread()
                status, detail = read_error(response)
                if status == 404 and _ABSENT.search(detail):
                    raise MissingObject(f"Supabase Storage holds no {bucket}/{key} ({detail})")
                raise self._errors.classify(status, detail, doing, bucket, response)
            yield _body(response, doing)
        finally:
            await response.aclose()

    def public_url(self, bucket: str, key: str) -> str:
        """Same shape as storage3's ``get_public_url``; permanent for public buckets."""
        return f"{self.url}{PUBLIC_PREFIX}/{_object_path(bucket, key)}"

    async def delete(self, bucket: str, key: str) -> None:
        """Through storage3 (``DELETE /object/{bucket}`` with the key as a prefix); a
        missing object is not an error there either."""
        key_parts(bucket, key)
        try:
            await self._storage.from_(bucket).remove([key])
        except StorageApiError as err:
            raise self._api_error(err, f"deleting {bucket}/{key}", bucket) from err
        except httpx.TransportError as err:
            raise unreachable(f"deleting {bucket}/{key}", err) from err

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _api_error(self, err: StorageApiError, doing: str, bucket: str) -> StorageError:
        status = status_of(err.status) or 0
        return self._errors.classify(status, f"{err.code}: {err.message}", doing, bucket)


async def _body(response: httpx.Response, doing: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.TransportError as err:
        raise unreachable(doing, err) from err


async def _limited(
    chunks: AsyncIterator[bytes], bucket: str, key: str, limit: int | None
) -> AsyncIterator[bytes]:
    """``chunks``, refused as soon as they pass the bucket's known size limit."""
    sent = 0
    async for chunk in chunks:
        sent += len(chunk)
        if limit is not None and sent > limit:
            raise StorageError(
                f"{bucket}/{key} is larger than the file_size_limit of bucket {bucket!r} "
                f"({limit:,} bytes): raise the limit (Dashboard > Storage > {bucket} > "
                "Edit bucket)."
            )
        yield chunk


def _object_path(bucket: str, key: str) -> str:
    """``bucket/key`` for a URL, after the stores' one key rule, segment-quoted."""
    return "/".join([bucket, *(quote(part, safe="") for part in key_parts(bucket, key))])


def _mime_allowed(mime: str, allowed: list[str] | None) -> bool:
    """The server's rule (``validateMimeType``): no list allows all; ``type/*`` works."""
    if not allowed:
        return True
    kind, slash, _ = mime.partition("/")
    return bool(slash) and any(a in (mime, f"{kind}/*") for a in allowed)
