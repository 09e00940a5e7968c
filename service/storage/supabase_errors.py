"""Supabase Storage's refusals, read as the server means them and said as one line.

What the server sends (supabase/storage v1.11.2, measured; ``docs/supabase.md``):

- REST routes (``/object``, ``/bucket``) answer **HTTP 400** for every error but 500,
  with the real status as a string in the body: ``{"statusCode": "404", "error":
  "Bucket not found", "message": "Bucket not found", "code": "NoSuchBucket"}``
  (``http/error-handler.ts``). Codes seen: ``NoSuchBucket``, ``NoSuchKey``,
  ``EntityTooLarge``, ``AccessDenied``, ``KeyAlreadyExists`` (error "Duplicate").
- TUS routes answer plain text with the real status: 404 "Bucket not found" (our
  bucket) or "The file for this url was not found" (the upload), 403 "new row violates
  row-level security policy", 409 "Upload-Offset conflict" or "The resource already
  exists", 412 "Tus-Resumable Required", 413 "Maximum size exceeded" / "upload's size
  exceeded".
- The API gateway in front answers a bad ``apikey`` itself, with HTTP 401 and
  ``{"message": "Invalid API key"}``, and a path it does not route with 404.

"will retry" ends a message only where waiting alone can help; no message ever holds
the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import httpx

from service.storage.base import StorageError

KEY_SETTING = "SUPABASE_SERVICE_ROLE_KEY"

_TOO_LARGE = re.compile(
    r"payload too large|exceeded the maximum|entity ?too ?large|size exceeded", re.I
)
_NO_BUCKET = re.compile(r"bucket not found|nosuchbucket", re.I)
_TRANSIENT = frozenset({408, 409, 423, 425, 429})


def status_of(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def read_error(response: httpx.Response) -> tuple[int, str]:
    """The status that counts (the body's ``statusCode`` if any) and a short detail."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        status = status_of(body.get("statusCode")) or response.status_code
        parts = [str(body[k]) for k in ("error", "message", "code") if body.get(k)]
        detail = ": ".join(dict.fromkeys(parts)) or response.text[:200]
    else:
        status = response.status_code
        detail = response.text[:200].strip() or response.reason_phrase
    return status, detail


def unreachable(doing: str, err: httpx.TransportError) -> StorageError:
    return StorageError(
        f"Supabase Storage unreachable while {doing}: {type(err).__name__}: {err}; will retry."
    )


class Errors:
    """Turns a refusal into one readable, key-free ``StorageError``.

    ``size_limits`` is the store's view of each bucket's ``file_size_limit`` (it is
    named in the message for a 413).
    """

    def __init__(self, key: str, size_limits: Mapping[str, int]) -> None:
        self._key = key
        self._size_limits = size_limits

    def response(self, response: httpx.Response, doing: str, bucket: str) -> StorageError:
        status, detail = read_error(response)
        return self.classify(status, detail, doing, bucket, response)

    def classify(
        self,
        status: int,
        detail: str,
        doing: str,
        bucket: str,
        response: httpx.Response | None = None,
    ) -> StorageError:
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
        if status == 404 and _NO_BUCKET.search(detail):
            return StorageError(
                f"{said}. Bucket {bucket!r} does not exist (create it, or let ensure_buckets "
                "do it at startup)."
            )
        if status == 404:
            return StorageError(
                f"{said}. Nothing answers at that address: SUPABASE_URL must be the project "
                "URL (https://<ref>.supabase.co), and a resumable upload the server no "
                "longer knows starts over; will retry."
            )
        if status == 409 and "already exists" in detail.lower():
            return StorageError(
                f"{said}. The server would not replace the object (it reads x-upsert on "
                "every request, and this one was refused); will retry."
            )
        if status == 415:
            return StorageError(f"{said}. Add the type to bucket {bucket!r}'s allowed MIME types.")
        if 400 <= status < 500 and status not in _TRANSIENT:
            return StorageError(said)
        return StorageError(f"{said}; will retry.")
