"""Supabase Storage: public buckets; videos sent in 6 MiB chunks by resumable upload.

Why uploads are sent by hand: ``storage3``'s ``upload`` takes bytes or a file on disk,
so a video would have to be whole in memory or spooled to a temporary file first, and
it has no resumable (TUS) client. ``put`` reads the source into one 6 MiB buffer: an
object that fits goes out as one raw body (``POST /object/{bucket}/{key}``); a larger
one goes through TUS (``/upload/resumable``) chunk by chunk as it arrives from the
provider, and a dropped connection is resumed from the server's offset instead of
starting the video over. Bucket management is rare and small, so it goes through
the official ``storage3`` client.

Facts about the server this module relies on (supabase/storage, ``src/``):

- Errors are JSON ``{"statusCode": "<code>", "error", "message", "code"}``, and the
  HTTP status is 400 for every error except 500 (``http/error-handler.ts``): a
  missing bucket arrives as HTTP 400 with ``"statusCode": "404"``. The status that
  means something is the one in the body. The API gateway in front answers a bad
  ``apikey`` itself, with HTTP 401 and ``{"message": "Invalid API key"}``.
- A raw body's size is checked against the bucket's limit only through its
  ``Content-Length`` (``storage/uploader.ts``), and a deferred-length TUS upload only
  chunk by chunk, so ``put`` also enforces the bucket limit itself while reading.
- TUS errors (``@tus/server``) are plain text with the real HTTP status, e.g. 409
  "Upload-Offset conflict", 413 "Maximum size exceeded".
"""

from __future__ import annotations

import base64
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

# Supabase asks for TUS above 6 MB and for exactly 6 MiB in every chunk but the last.
TUS_CHUNK = 6 * 1024 * 1024
TUS_VERSION = "1.0.0"
# Cut connections survived per chunk before the upload is left to the next attempt.
TUS_RESUMES = 5

_MAX_AGE = re.compile(r"max-age=(\d+)")
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
        self.tus_chunk = TUS_CHUNK

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
        """Store ``chunks``: one request if they fit in a chunk, else a resumable upload.

        Up to ``TUS_CHUNK`` bytes are read first. A source that ends within them goes
        out as one plain upload; a longer one goes through TUS, so a dropped connection
        costs at most the chunk in flight instead of the whole video. Either way at
        most about two chunks are in memory.
        """
        path = _object_path(bucket, key)
        digest = Digest()
        limited = _limited(digest.tap(chunks), bucket, key, self._size_limits.get(bucket))
        blocks = _Blocks(limited, self.tus_chunk)
        first = await blocks.next()
        if first is None:
            raise StorageError(f"refusing to store an empty object at {bucket}/{key}")
        body, last = first
        if last:
            await self._put_whole(bucket, key, path, body, content_type)
        else:
            await self._put_resumable(bucket, key, body, blocks, content_type)
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
            raise _unreachable(f"uploading {bucket}/{key}", err) from err
        if response.status_code != 200:
            raise self._response_error(response, bucket, key)

    # --------------------------------------------------------- resumable (TUS)

    async def _put_resumable(
        self, bucket: str, key: str, first: bytes, blocks: _Blocks, content_type: str
    ) -> None:
        """TUS 1.0.0 with a deferred length: the total is known only at the last chunk.

        storage-api's tus server (``@tus/server`` on a store with the
        ``creation-defer-length`` extension) accepts ``Upload-Defer-Length: 1`` at
        creation and the real ``Upload-Length`` on a later PATCH, so the video never
        has to be counted (or spooled) before it is sent.
        """
        url = await self._tus_create(bucket, key, content_type)
        offset, block, last = 0, first, False
        while True:
            offset = await self._tus_send(url, block, offset, last, bucket, key)
            if last:
                return
            following = await blocks.next()
            if following is None:  # _Blocks flags the last block, so this cannot be
                raise AssertionError("the source ended after a block that was not the last")
            block, last = following

    async def _tus_create(self, bucket: str, key: str, content_type: str) -> str:
        """Create the upload; its URL (the reply's ``Location``)."""
        metadata = {"bucketName": bucket, "objectName": key, "contentType": content_type}
        # storage-api turns a number of seconds into "max-age=N", anything else into
        # "no-cache", so only the number goes in the metadata.
        if seconds := _MAX_AGE.search(self.cache_control):
            metadata["cacheControl"] = seconds[1]
        headers = {
            **self._auth,
            "Tus-Resumable": TUS_VERSION,
            "Upload-Defer-Length": "1",
            "Upload-Metadata": ",".join(
                f"{name} {base64.b64encode(value.encode()).decode()}"
                for name, value in metadata.items()
            ),
            "x-upsert": "true",
        }
        endpoint = f"{self.storage_url}/upload/resumable"
        try:
            response = await self._http.post(endpoint, headers=headers)
        except httpx.TransportError as err:
            raise _unreachable(f"uploading {bucket}/{key}", err) from err
        location = response.headers.get("Location")
        if response.status_code != 201 or not location:
            raise self._tus_error(response, bucket, key)
        url = httpx.URL(f"{endpoint}/").join(location)
        asked = httpx.URL(endpoint)
        if (url.scheme, url.host, url.port) != (asked.scheme, asked.host, asked.port):
            # The chunks go out with the service-role key: never to a host we did not pick.
            raise StorageError(
                f"Supabase Storage pointed the upload of {bucket}/{key} at another host "
                f"({url.scheme}://{url.host}); refusing to send the key there"
            )
        return str(url)

    async def _tus_send(
        self, url: str, block: bytes, start: int, last: bool, bucket: str, key: str
    ) -> int:
        """PATCH ``block`` (starting at ``start``); after a cut, resume at the server's offset.

        Only this block is in memory, so a resume can re-send the part of it the
        server lacks, never anything before it.
        """
        end = start + len(block)
        offset, declared, cuts = start, False, 0
        while offset < end:
            headers = {
                **self._auth,
                "Tus-Resumable": TUS_VERSION,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }
            if last and not declared:
                headers["Upload-Length"] = str(end)
            body = memoryview(block)[offset - start :]
            headers["Content-Length"] = str(len(body))
            try:
                # A one-shot iterator, not the bytes: httpx's request (kept alive by
                # reference cycles until a GC pass) would otherwise pin every chunk sent.
                response = await self._http.patch(url, content=_once(body), headers=headers)
            except httpx.TransportError as err:
                cuts += 1
                if cuts > TUS_RESUMES:
                    raise _unreachable(f"uploading {bucket}/{key}", err) from err
                offset, declared = await self._tus_offset(url, start, end, bucket, key)
                continue
            if response.status_code != 204 or "Upload-Offset" not in response.headers:
                raise self._tus_error(response, bucket, key)
            offset, declared = int(response.headers["Upload-Offset"]), last
        return offset

    async def _tus_offset(
        self, url: str, start: int, end: int, bucket: str, key: str
    ) -> tuple[int, bool]:
        """The server's offset (``HEAD``), and whether it already knows the total length."""
        headers = {**self._auth, "Tus-Resumable": TUS_VERSION}
        try:
            response = await self._http.head(url, headers=headers)
        except httpx.TransportError as err:
            raise _unreachable(f"resuming the upload of {bucket}/{key}", err) from err
        if response.status_code != 200 or "Upload-Offset" not in response.headers:
            raise self._tus_error(response, bucket, key)
        offset = int(response.headers["Upload-Offset"])
        if not start <= offset <= end:
            raise StorageError(
                f"cannot resume the upload of {bucket}/{key}: the server holds {offset:,} "
                f"bytes, but only bytes {start:,} to {end:,} are still at hand; the upload "
                "starts over on the next attempt; will retry."
            )
        return offset, "Upload-Length" in response.headers

    def _tus_error(self, response: httpx.Response, bucket: str, key: str) -> StorageError:
        """Like the standard path's errors; a 409 is another writer or a lost offset."""
        status, detail = _read_error(response)
        if status == 409:
            detail = detail.replace(self._key, "[redacted]")
            return StorageError(
                f"Supabase Storage error while uploading {bucket}/{key} "
                f"(HTTP {response.status_code}, status 409: {detail}). Another upload to the "
                "same object holds its lock, or the server's offset is not ours "
                "(Upload-Offset conflict); will retry."
            )
        return self._classify(status, detail, f"uploading {bucket}/{key}", bucket, response)

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
            raise _unreachable(f"deleting {bucket}/{key}", err) from err

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


class _Blocks:
    """The source re-cut into blocks of exactly ``size`` bytes (the last may be shorter).

    Supabase requires every TUS chunk but the last to be exactly 6 MiB, and the last
    PATCH must carry the total length, so each block comes with whether it is the
    last: one piece of the source is read ahead to know.
    """

    def __init__(self, source: AsyncIterator[bytes], size: int) -> None:
        self._source = source
        self._size = size
        self._pending = b""
        self._ended = False

    async def _read(self) -> bytes | None:
        piece = await anext(self._source, None)
        if piece is None:
            self._ended = True
        return piece

    async def next(self) -> tuple[bytes, bool] | None:
        """The next block and whether it is the last, or None once the source is spent."""
        buffer = bytearray(self._pending)
        self._pending = b""
        while len(buffer) < self._size and not self._ended:
            if (piece := await self._read()) is not None:
                buffer += piece
        if len(buffer) > self._size:
            self._pending = bytes(buffer[self._size :])
            del buffer[self._size :]
        if not self._pending and not self._ended:
            self._pending = await self._read() or b""
        if not buffer:
            return None
        return bytes(buffer), self._ended and not self._pending


async def _once(body: memoryview) -> AsyncIterator[bytes]:
    """``body`` as a request stream that lets go of it once sent."""
    yield bytes(body)


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
