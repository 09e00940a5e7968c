"""Supabase Storage: public buckets, videos streamed in as raw request bodies.

Why a raw body sent by hand: ``storage3``'s ``upload`` takes bytes or a file on disk,
so a video would have to be whole in memory or spooled to a temporary file first.
Supabase Storage also accepts ``POST /object/{bucket}/{key}`` with the object itself
as the body, so ``put`` hands httpx an async iterator and the video goes out in
chunked transfer encoding as it arrives from the provider. Bucket management is rare
and small, so it goes through the official ``storage3`` client.

Facts about the server this module relies on (supabase/storage, ``src/``):

- Errors are JSON ``{"statusCode": "<code>", "error", "message", "code"}``, and the
  HTTP status is 400 for every error except 500 (``http/error-handler.ts``): a
  missing bucket arrives as HTTP 400 with ``"statusCode": "404"``. The status that
  means something is the one in the body. The API gateway in front answers a bad
  ``apikey`` itself, with HTTP 401 and ``{"message": "Invalid API key"}``.
- A raw body's size is checked against the bucket's limit only through its
  ``Content-Length`` (``storage/uploader.ts``); a chunked body has none, so ``put``
  enforces the bucket limit itself while streaming.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError
from storage3.types import CreateOrUpdateBucketOptions

from service.storage.base import (
    PUBLIC_PREFIX,
    Digest,
    StorageError,
    StoredObject,
    check_bucket,
    key_parts,
)

KEY_SETTING = "SUPABASE_SERVICE_ROLE_KEY"
DEFAULT_CACHE_CONTROL = "max-age=31536000"
VIDEO_MIME_TYPES = ("video/mp4", "image/webp")
IMAGE_MIME_TYPES = ("image/jpeg", "image/png", "image/webp")
# Connect fast, but give the server time to finish a large upload after the last byte.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=120.0)

_TOO_LARGE = re.compile(r"payload too large|exceeded the maximum|entity ?too ?large", re.I)
_TRANSIENT = frozenset({408, 409, 423, 425, 429})


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

    ``url`` is the project URL (``https://<ref>.supabase.co``). Call
    ``ensure_buckets`` once at startup: it also learns each bucket's size limit,
    which ``put`` then enforces while streaming.
    """

    def __init__(
        self,
        url: str,
        service_role_key: str,
        http: httpx.AsyncClient | None = None,
        *,
        cache_control: str = DEFAULT_CACHE_CONTROL,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("SUPABASE_URL must be the project URL, like https://<ref>.supabase.co")
        if not service_role_key.strip():
            raise ValueError(f"{KEY_SETTING} is empty")
        self.url = url.rstrip("/")
        self.storage_url = f"{self.url}/storage/v1"
        self.cache_control = cache_control
        self._key = service_role_key
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
            if _status_of(err.status) == 404:
                return None
            raise self._api_error(err, f"checking bucket {bucket!r}", bucket) from err
        except httpx.TransportError as err:
            raise _unreachable(f"checking bucket {bucket!r}", err) from err
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
            status = _status_of(err.status)
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
            raise _unreachable(f"creating bucket {bucket!r}", err) from err
        found = await self._get_bucket(bucket)
        if found is None:
            raise StorageError(f"Supabase bucket {bucket!r} vanished right after creation")
        return found

    # ------------------------------------------------------------------ objects

    async def put(
        self, bucket: str, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> StoredObject:
        """Stream ``chunks`` as the request body; nothing is joined or spooled."""
        path = _object_path(bucket, key)
        digest = Digest()
        feed = _Feed(digest.tap(chunks), bucket, key, self._size_limits.get(bucket))
        if not await feed.prime():
            raise StorageError(f"refusing to store an empty object at {bucket}/{key}")
        headers = {
            **self._auth,
            "Content-Type": content_type,
            "Cache-Control": self.cache_control,
            "x-upsert": "true",
        }
        try:
            response = await self._http.post(
                f"{self.storage_url}/object/{path}", content=feed, headers=headers
            )
        except Exception as err:
            if feed.error is not None:
                # The chunks failed (the provider, or our own size guard): their error,
                # not a storage one, so the caller can tell who is to blame.
                if feed.error is err:
                    raise
                raise feed.error from err
            if isinstance(err, httpx.TransportError):
                raise _unreachable(f"uploading {bucket}/{key}", err) from err
            raise
        if response.status_code != 200:
            raise self._response_error(response, bucket, key)
        return StoredObject(self.public_url(bucket, key), digest.size, digest.sha256)

    def public_url(self, bucket: str, key: str) -> str:
        """Same shape as storage3's ``get_public_url``; permanent for public buckets."""
        return f"{self.url}{PUBLIC_PREFIX}/{_object_path(bucket, key)}"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # ------------------------------------------------------------------- errors

    def _response_error(self, response: httpx.Response, bucket: str, key: str) -> StorageError:
        status, detail = _read_error(response)
        return self._classify(status, detail, f"uploading {bucket}/{key}", bucket, response)

    def _api_error(self, err: StorageApiError, doing: str, bucket: str) -> StorageError:
        status = _status_of(err.status) or 0
        return self._classify(status, f"{err.code}: {err.message}", doing, bucket, None)

    def _classify(
        self,
        status: int,
        detail: str,
        doing: str,
        bucket: str,
        response: httpx.Response | None,
    ) -> StorageError:
        """One readable, key-free StorageError; "will retry" only where waiting alone can help."""
        detail = detail.replace(self._key, "[redacted]")
        shown = f"status {status}"
        if response is not None:
            shown = f"HTTP {response.status_code}, {shown}"
        said = f"Supabase Storage error while {doing} ({shown}: {detail})"
        if status == 413 or _TOO_LARGE.search(detail):
            limit = self._size_limits.get(bucket)
            known = f" ({limit:,} bytes)" if limit is not None else ""
            return StorageError(
                f"{said}. The object is larger than the file_size_limit of bucket {bucket!r}"
                f"{known} or the project's global upload limit: raise the bucket's "
                f"(Dashboard > Storage > {bucket} > Edit bucket) or the project's "
                "(Dashboard > Project Settings > Storage > Upload file size limit)."
            )
        if status in (401, 403):
            return StorageError(
                f"{said}. Check {KEY_SETTING}: it must be this project's service_role "
                "(secret) key, not the anon key; will retry."
            )
        if status == 404:
            return StorageError(
                f"{said}. Bucket {bucket!r} does not exist (create it, or let ensure_buckets "
                "do it at startup), or SUPABASE_URL is not the project URL."
            )
        if status == 415:
            return StorageError(f"{said}. Add the type to bucket {bucket!r}'s allowed MIME types.")
        if 400 <= status < 500 and status not in _TRANSIENT:
            return StorageError(said)
        return StorageError(f"{said}; will retry.")


class _Feed:
    """The request body: the digest-tapped chunks, with the first one fetched early.

    Priming catches an empty source before anything is sent (an upsert would
    otherwise replace a good object with nothing); ``error`` remembers a failure of
    the source itself, so ``put`` re-raises it instead of blaming the network.
    """

    def __init__(
        self, chunks: AsyncIterator[bytes], bucket: str, key: str, limit: int | None
    ) -> None:
        self._chunks = chunks
        self._bucket = bucket
        self._key = key
        self._limit = limit
        self._first: bytes | None = None
        self._sent = 0
        self.error: BaseException | None = None

    async def prime(self) -> bool:
        self._first = await self._next()
        return self._first is not None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = self._first
        self._first = None
        while chunk is not None:
            yield chunk
            chunk = await self._next()

    async def _next(self) -> bytes | None:
        try:
            chunk = await anext(self._chunks, None)
            if chunk is not None:
                self._sent += len(chunk)
                if self._limit is not None and self._sent > self._limit:
                    raise StorageError(
                        f"{self._bucket}/{self._key} is larger than the file_size_limit of "
                        f"bucket {self._bucket!r} ({self._limit:,} bytes): raise the limit "
                        f"(Dashboard > Storage > {self._bucket} > Edit bucket)."
                    )
        except BaseException as err:
            self.error = err
            raise
        return chunk


def _object_path(bucket: str, key: str) -> str:
    """``bucket/key`` for a URL, after the stores' one key rule, segment-quoted."""
    return "/".join([bucket, *(quote(part, safe="") for part in key_parts(bucket, key))])


def _mime_allowed(mime: str, allowed: list[str] | None) -> bool:
    """The server's rule (``validateMimeType``): no list allows all; ``type/*`` works."""
    if not allowed:
        return True
    kind, slash, _ = mime.partition("/")
    return bool(slash) and any(a in (mime, f"{kind}/*") for a in allowed)


def _status_of(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _read_error(response: httpx.Response) -> tuple[int, str]:
    """The status that counts (the body's ``statusCode`` if any) and a short detail."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        status = _status_of(body.get("statusCode")) or response.status_code
        parts = [str(body[k]) for k in ("error", "message") if body.get(k)]
        detail = ": ".join(dict.fromkeys(parts)) or response.text[:200]
    else:
        status = response.status_code
        detail = response.text[:200].strip() or response.reason_phrase
    return status, detail


def _unreachable(doing: str, err: httpx.TransportError) -> StorageError:
    return StorageError(
        f"Supabase Storage unreachable while {doing}: {type(err).__name__}: {err}; will retry."
    )
