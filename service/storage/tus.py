"""Supabase Storage's resumable uploads (TUS 1.0.0), spoken with httpx.

storage3 has no TUS client, and tuspy/aiotus read a file; ours reads the provider's
stream in 6 MiB blocks (Supabase wants exactly 6 MiB in every chunk but the last) with a
deferred length (the total is known only at the last block), so at most about two
blocks are ever in memory.

What the real server does, and what each rule here answers (supabase/storage v1.11.2,
``@tus/server`` 2.4; measured through a prefix-stripping gateway, ``docs/supabase.md``):

- It reads ``x-upsert`` on **every** request (``onIncomingRequest`` runs ``canUpload``
  on each POST and PATCH), so it goes on every request: sent on the create alone,
  every PATCH to a key that exists answers 409 "The resource already exists", and an
  object could never be replaced (a re-archive, a retry after a crash).
- Locking is per upload, not per object path: two uploads to one key both finish and
  the last one wins. A 409 is therefore never "another writer holds the object".
- A PATCH whose ``Upload-Offset`` is not the server's answers 409 "Upload-Offset
  conflict"; right after a cut, ``HEAD`` may still report the old offset (the server
  is finishing the cut request), so the first resumed PATCH can get that 409 too. The
  answer to both is to ask for the offset again (``HEAD``) and go on from there, as
  tus-js-client does, never to start the upload over.
- The server sends some refusals (that 409, 403, 413) before reading the body, then
  closes the connection. Through a gateway the client reads the answer; an asyncio
  client talking to the server directly gets a ``ReadError`` instead. Either way the
  next step is the same ``HEAD``: a transport error on PATCH is a resume, never a
  restart.
- The ``Location`` of the create carries ``/storage/v1`` only when the server trusts
  the gateway's ``X-Forwarded-Prefix`` (``REQUEST_ALLOW_X_FORWARDED_PATH=true``);
  without it the URL points past the gateway, which answers 404. The upload id is the
  last path segment, so the URL is rebuilt under our own endpoint (and said once).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Mapping

import httpx
import structlog

from service.storage.base import StorageError
from service.storage.supabase_errors import Errors, read_error, unreachable

log = structlog.get_logger("service.storage")

TUS_CHUNK = 6 * 1024 * 1024
"""Supabase asks for TUS above 6 MB and for exactly 6 MiB in every chunk but the last."""
TUS_VERSION = "1.0.0"
TUS_PAUSES = (0.0, 0.5, 1.0, 2.0, 4.0)
"""How long to wait before each successive attempt to resume one block (after a cut or
an offset conflict): the server may still be finishing the request we gave up on.
One more failure than there are pauses leaves the upload to the next attempt."""

_MAX_AGE = re.compile(r"max-age=(\d+)")
_OFFSET_CONFLICT = "upload-offset conflict"


class Blocks:
    """The source re-cut into blocks of exactly ``size`` bytes (the last may be shorter).

    Every TUS chunk but the last must be exactly 6 MiB, and the last PATCH must carry
    the total length, so each block comes with whether it is the last: one piece of
    the source is read ahead to know.
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


class TusClient:
    """Resumable uploads to one Storage API (``{storage_url}/upload/resumable``)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        storage_url: str,
        auth: Mapping[str, str],
        errors: Errors,
        *,
        pauses: tuple[float, ...] = TUS_PAUSES,
    ) -> None:
        self.http = http
        self.endpoint = f"{storage_url}/upload/resumable"
        self.auth = dict(auth)
        self.errors = errors
        self.pauses = pauses
        self._told_prefix = False

    def _headers(self, **extra: str) -> dict[str, str]:
        # x-upsert on every request: the server decides on each one (module docstring).
        return {**self.auth, "Tus-Resumable": TUS_VERSION, "x-upsert": "true", **extra}

    async def upload(
        self,
        bucket: str,
        key: str,
        first: tuple[bytes, bool],
        blocks: Blocks,
        content_type: str,
        cache_control: str,
    ) -> None:
        """Send ``first`` (a block and whether it is the last), then every block after it."""
        url = await self._create(bucket, key, content_type, cache_control)
        (block, last), offset = first, 0
        while True:
            offset = await self._send(url, block, offset, last, bucket, key)
            if last:
                return
            following = await blocks.next()
            if following is None:  # Blocks flags the last block, so this cannot be
                raise AssertionError("the source ended after a block that was not the last")
            block, last = following

    async def _create(self, bucket: str, key: str, content_type: str, cache_control: str) -> str:
        """Create the upload; its URL (the reply's ``Location``)."""
        metadata = {"bucketName": bucket, "objectName": key, "contentType": content_type}
        # storage-api turns a number of seconds into "max-age=N", anything else into
        # "no-cache", so only the number goes in the metadata.
        if seconds := _MAX_AGE.search(cache_control):
            metadata["cacheControl"] = seconds[1]
        headers = self._headers(
            **{
                "Upload-Defer-Length": "1",
                "Upload-Metadata": ",".join(
                    f"{name} {base64.b64encode(value.encode()).decode()}"
                    for name, value in metadata.items()
                ),
            }
        )
        try:
            response = await self.http.post(self.endpoint, headers=headers)
        except httpx.TransportError as err:
            raise unreachable(f"uploading {bucket}/{key}", err) from err
        location = response.headers.get("Location")
        if response.status_code != 201 or not location:
            raise self._error(response, bucket, key)
        return self._upload_url(location, bucket, key)

    def _upload_url(self, location: str, bucket: str, key: str) -> str:
        url = httpx.URL(f"{self.endpoint}/").join(location)
        asked = httpx.URL(self.endpoint)
        if (url.scheme, url.host, url.port) != (asked.scheme, asked.host, asked.port):
            # The chunks go out with the service-role key: never to a host we did not pick.
            raise StorageError(
                f"Supabase Storage pointed the upload of {bucket}/{key} at another host "
                f"({url.scheme}://{url.host}); refusing to send the key there"
            )
        if url.path.startswith(f"{asked.path}/"):
            return str(url)
        upload_id = url.path.rstrip("/").rpartition("/")[2]
        if not self._told_prefix:
            self._told_prefix = True
            log.warning(
                "storage.upload_url_without_prefix",
                location=url.path,
                expected=asked.path,
                fix="self-hosted storage behind a gateway: set "
                "REQUEST_ALLOW_X_FORWARDED_PATH=true on the storage server",
            )
        return f"{self.endpoint}/{upload_id}"

    async def _send(
        self, url: str, block: bytes, start: int, last: bool, bucket: str, key: str
    ) -> int:
        """PATCH ``block`` (starting at ``start``); after a cut or an offset conflict,
        ask for the server's offset and go on from there.

        Only this block is in memory, so a resume can re-send the part of it the
        server lacks, never anything before it.
        """
        end = start + len(block)
        offset, declared, failures = start, False, 0
        while offset < end or (last and not declared):
            headers = self._headers(
                **{"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
            )
            if last and not declared:
                headers["Upload-Length"] = str(end)
            body = memoryview(block)[offset - start :]
            headers["Content-Length"] = str(len(body))
            try:
                # A one-shot iterator, not the bytes: httpx's request (kept alive by
                # reference cycles until a GC pass) would otherwise pin every chunk sent.
                response = await self.http.patch(url, content=_once(body), headers=headers)
            except httpx.TransportError as err:
                # A cut, or (talking to the server directly) an early refusal whose
                # answer the connection lost: either way, the server's offset decides.
                problem: str = f"{type(err).__name__}: {err}"
                cause: Exception | None = err
            else:
                if response.status_code == 204 and "Upload-Offset" in response.headers:
                    offset, declared = int(response.headers["Upload-Offset"]), last
                    continue
                status, detail = read_error(response)
                if status != 409 or _OFFSET_CONFLICT not in detail.lower():
                    raise self._error(response, bucket, key)
                problem, cause = f"HTTP 409: {detail}", None
            if failures >= len(self.pauses):
                raise StorageError(
                    f"Supabase Storage: the upload of {bucket}/{key} could not go on at byte "
                    f"{offset:,} after {failures + 1} tries ({problem}); will retry."
                ) from cause
            await asyncio.sleep(self.pauses[failures])
            failures += 1
            offset, declared = await self._offset(url, start, end, bucket, key)
        return offset

    async def _offset(
        self, url: str, start: int, end: int, bucket: str, key: str
    ) -> tuple[int, bool]:
        """The server's offset (``HEAD``), and whether it already knows the total length."""
        try:
            response = await self.http.head(url, headers=self._headers())
        except httpx.TransportError as err:
            raise unreachable(f"resuming the upload of {bucket}/{key}", err) from err
        if response.status_code != 200 or "Upload-Offset" not in response.headers:
            raise self._error(response, bucket, key)
        offset = int(response.headers["Upload-Offset"])
        if not start <= offset <= end:
            raise StorageError(
                f"cannot resume the upload of {bucket}/{key}: the server holds {offset:,} "
                f"bytes, but only bytes {start:,} to {end:,} are still at hand; the upload "
                "starts over on the next attempt; will retry."
            )
        return offset, "Upload-Length" in response.headers

    def _error(self, response: httpx.Response, bucket: str, key: str) -> StorageError:
        return self.errors.response(response, f"uploading {bucket}/{key}", bucket)


async def _once(body: memoryview) -> AsyncIterator[bytes]:
    """``body`` as a request stream that lets go of it once sent."""
    yield bytes(body)
