"""An in-memory stand-in for Supabase Storage's HTTP API, for tests.

It speaks enough of the real API for the official ``storage3`` client and
``SupabaseStore``'s raw upload to run against it unchanged, and copies the real
server (supabase/storage, ``src/``) wherever our code looks at the answer:

- Errors: ``{"statusCode": "<code>", "code", "error", "message"}`` sent with HTTP 400,
  or 500 when the code is 500 (``http/error-handler.ts``). Messages and codes come
  from ``internal/errors/codes.ts``; a row-level-security refusal is code 403
  ``AccessDenied`` "new row violates row-level security policy"
  (``storage/database/errors.ts``).
- Keys: the API gateway answers an unknown ``apikey`` with HTTP 401 ``{"message":
  "Invalid API key"}`` (turn ``gateway_key_auth`` off to model deployments whose
  gateway leaves storage alone); the storage server checks the Bearer token itself
  and refuses a bad one as 403 ``AccessDenied``. The anon role may read public
  objects; the RLS policies this fake models grant it nothing else: its uploads and
  bucket creations are refused, and buckets are invisible to it.
- Uploads (``http/routes/object/createObject.ts``, ``storage/uploader.ts``): a raw
  body (type from ``Content-Type``, ``cache-control`` header) or a multipart form
  with the field ``file`` (and ``cacheControl``); the bucket's
  ``allowed_mime_types`` (415) and size limit (the smaller of the bucket's and the
  project's, 413) apply; POST without ``x-upsert: true`` on an existing key is 409
  "Duplicate" (code ``KeyAlreadyExists``); PUT always overwrites.

Resumable uploads (``http/routes/tus/``, ``@tus/server`` 2.4 on a store with the
``creation-defer-length`` extension), checked against the real server (supabase/storage
v1.11.2, ``tests/test_storage_wire.py`` runs the same requests against both):

- ``POST /upload/resumable`` with ``Tus-Resumable: 1.0.0``, exactly one of
  ``Upload-Length`` / ``Upload-Defer-Length`` (else 400), ``Upload-Metadata`` base64
  pairs (``bucketName``, ``objectName``, ``contentType``, ``cacheControl`` in seconds,
  stored as ``max-age=N``, else ``no-cache``) answers 201 with a ``Location`` ending in
  the base64url upload id. The ``Location`` carries ``/storage/v1`` only because the
  gateway sends ``X-Forwarded-Prefix`` and the server trusts it
  (``REQUEST_ALLOW_X_FORWARDED_PATH=true``); ``forwarded_prefix = False`` plays a
  server without that setting: the URL lacks the prefix, and the gateway answers 404
  there (``{"message": "no Route matched with those values"}``, as Kong does).
- ``HEAD`` gives ``Upload-Offset`` and ``Upload-Length`` or ``Upload-Defer-Length: 1``;
  it checks no permission. An unknown upload is 404 "The file for this url was not
  found".
- ``PATCH``, in the server's order: ``Tus-Resumable`` (412 "Tus-Resumable Required"),
  the upload (404), ``Upload-Offset`` and ``Content-Type`` (403), then the checks
  storage-api makes on *every* request (``onIncomingRequest`` -> ``canUpload``): the
  bucket (404 "Bucket not found"), row-level security (403 "new row violates
  row-level security policy") and, unless this very request says ``x-upsert: true``,
  an existing object (409 "The resource already exists"). ``x-upsert`` sent only on
  the create does not carry over. Then the upload's own lock: locking is per upload,
  never per object path (two uploads to one key both finish, the last one wins); a
  second PATCH on a busy upload waits for the first, then finds the offset moved: 409
  "Upload-Offset conflict". A deferred ``Upload-Length`` may be declared
  once (again: 400; above the limit: 413 "Maximum size exceeded"); a body longer than
  the room left is 413 "upload's size exceeded". 204 with the new offset, and
  ``Tus-Complete: 1`` when the object is stored (always an upsert).
- Every refusal before the body is read is an *early answer*: the server writes it and
  closes the connection without reading the body. Through a gateway the client reads
  the answer (``early_answers = "answered"``, the default); an asyncio client talking
  to the server directly gets a transport error instead (``"reset"``).
- Bytes received before a dropped connection are kept, as the file and S3 stores keep
  them. ``cut_next_patch`` drops the connection of the next PATCH after a given number
  of body bytes, optionally rewinding the offset (a server that lost data) or leaving
  the next ``HEAD`` one answer behind (the server still finishing the cut request:
  the resumed PATCH then gets 409 "Upload-Offset conflict", and a second HEAD the
  right offset).

tus errors are plain text with the real HTTP status, not the JSON of the REST routes.
Reading an object back (``GET /object/{bucket}/{path}``, also under ``authenticated/``)
needs the service role; a missing one is HTTP 400 with ``"statusCode": "404"``,
``NoSuchKey``.

One deliberate difference: upstream checks a raw body's size only through its
``Content-Length`` (commit 3e22a427), so a chunked body over the limit is accepted
there. This fake stops any body at the limit, as upstream does for multipart forms,
so that an oversized upload can be tested at all; ``SupabaseStore`` enforces the
bucket limit itself and does not rely on either behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web

STORAGE = "/storage/v1"
FREE_PLAN_LIMIT = 50 * 1024 * 1024
GATEWAY_REFUSAL = {
    "message": "Invalid API key",
    "hint": "Double check your Supabase `anon` or `service_role` API key.",
}
RLS_REFUSAL = "new row violates row-level security policy"
NO_ROUTE = {"message": "no Route matched with those values"}
"""What Supabase's gateway (Kong) answers, with 404, for a path it does not route."""
EarlyAnswers = Literal["answered", "reset"]
_BEARER = re.compile(r"^Bearer\s+", re.I)
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_!.*'() &$=@;:+,?-]{1,100}$")
_OBJECT_KEY = re.compile(r"^[A-Za-z0-9_/!.*'() &$=@;:+,?-]+$")
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(gb|mb|kb|b)$", re.I)
_UNITS = {"gb": 10**9, "mb": 10**6, "kb": 10**3, "b": 1}

Role = Literal["service_role", "anon"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class FakeBucket:
    id: str
    public: bool = False
    file_size_limit: int | None = None
    allowed_mime_types: list[str] | None = None
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def as_json(self) -> dict[str, Any]:
        # The real response schema turns a null owner into "" (service-role creations).
        return {
            "id": self.id,
            "name": self.id,
            "owner": "",
            "public": self.public,
            "file_size_limit": self.file_size_limit,
            "allowed_mime_types": self.allowed_mime_types,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class FakeObject:
    """A stored object: in memory, or (resumable uploads, which may be huge) on disk."""

    data: bytes
    content_type: str
    cache_control: str
    file: Path | None = None

    def read(self) -> bytes:
        return self.file.read_bytes() if self.file is not None else self.data

    def size(self) -> int:
        return self.file.stat().st_size if self.file is not None else len(self.data)

    async def blocks(self) -> AsyncIterator[bytes]:
        """The bytes in 1 MiB pieces (a resumable upload's file is never read whole)."""
        if self.file is None:
            yield self.data
            return
        with self.file.open("rb") as source:
            while block := source.read(1 << 20):
                yield block

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.file is None:
            digest.update(self.data)
        else:
            with self.file.open("rb") as source:
                while block := source.read(1 << 20):
                    digest.update(block)
        return digest.hexdigest()


@dataclass
class TusUpload:
    """One resumable upload: where it goes, how far it got, its bytes on disk."""

    id: str
    bucket: str
    path: str
    content_type: str
    cache_control: str
    upsert: bool
    file: Path
    size: int | None = None
    offset: int = 0
    patches: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """The upload's own lock (storage-api's, in PostgreSQL): per upload, not per path."""
    stale_offset: int | None = None
    """What the next HEAD reports instead of ``offset`` (then cleared): the answer of a
    server still finishing a request the client already gave up on."""


@dataclass
class UploadRecord:
    """How one upload request arrived (filled in as far as it got)."""

    method: str
    bucket: str
    path: str
    chunked: bool
    content_length: int | None
    multipart: bool
    upsert: bool
    received: int = 0
    aborted: bool = False  # the client hung up before the body ended


UPLOAD_RECORD = web.RequestKey("upload_record", UploadRecord)
FAKE: web.AppKey[FakeSupabaseStorage] = web.AppKey("fake")


class TusRefusal(Exception):
    """A tus error answer: plain text with the real HTTP status (``@tus/server``).

    ``early``: sent before any of the body was read (the server then closes the
    connection without reading it)."""

    def __init__(self, http_status: int, body: str, *, early: bool = True) -> None:
        super().__init__(body)
        self.http_status = http_status
        self.body = body
        self.early = early


class Refusal(Exception):
    """An error answer: raised anywhere in a handler, rendered by the middleware."""

    def __init__(self, http_status: int, body: dict[str, str]) -> None:
        super().__init__(body.get("message", ""))
        self.http_status = http_status
        self.body = body


def storage_error(status: int, code: str, message: str, error: str | None = None) -> Refusal:
    """A StorageBackendError as the real error handler renders it."""
    body = {"statusCode": str(status), "code": code, "error": error or code, "message": message}
    return Refusal(500 if status == 500 else 400, body)


def too_large() -> Refusal:
    return storage_error(
        413, "EntityTooLarge", "The object exceeded the maximum allowed size", "Payload too large"
    )


def no_such_bucket() -> Refusal:
    return storage_error(404, "NoSuchBucket", "Bucket not found", "Bucket not found")


@dataclass
class _Failure:
    remaining: int
    refusal: Refusal


class FakeSupabaseStorage:
    """The fake project: its keys, buckets, objects and a log of upload requests."""

    def __init__(self, global_file_size_limit: int = FREE_PLAN_LIMIT) -> None:
        self.url = ""
        self.tus_location_base: str | None = None
        """Set to hand out upload URLs on another host (a hostile or misrouted server)."""
        self.service_key = f"fake-service-role-{secrets.token_hex(12)}"
        self.anon_key = f"fake-anon-{secrets.token_hex(12)}"
        self.global_file_size_limit = global_file_size_limit
        self.gateway_key_auth = True
        self.buckets: dict[str, FakeBucket] = {}
        self.objects: dict[str, FakeObject] = {}  # by "bucket/path", the API's "Key"
        self.uploads: list[UploadRecord] = []
        self._failures: list[_Failure] = []
        self.tus: dict[str, TusUpload] = {}  # by upload id
        self.tus_received = 0  # PATCH body bytes received, cut connections included
        self.tus_refusals: list[tuple[str, int, str]] = []  # (method, status, body) sent
        self.forwarded_prefix = True
        """Whether upload URLs carry ``/storage/v1`` (the server trusts the gateway's
        ``X-Forwarded-Prefix``: ``REQUEST_ALLOW_X_FORWARDED_PATH=true``)."""
        self.early_answers: EarlyAnswers = "answered"
        """What a client sees of a refusal sent before the body was read: the answer
        (through a gateway), or a dropped connection (an asyncio client, directly)."""
        self._cut_after: int | None = None
        self._rewind_to: int | None = None
        self._stale_head = False
        self._dir = Path(tempfile.mkdtemp(prefix="fake-supabase-"))

    def cut_next_patch(
        self, after: int, *, rewind_to: int | None = None, stale_head: bool = False
    ) -> None:
        """Drop the connection of the next PATCH once ``after`` body bytes are stored.

        ``rewind_to`` then also sets the upload's offset back, as a server that lost
        data would report it. ``stale_head``: the next HEAD still reports the offset
        from before that PATCH, as the real server may while it finishes the cut
        request; the PATCH resumed from there gets 409 "Upload-Offset conflict".
        """
        self._cut_after = after
        self._rewind_to = rewind_to
        self._stale_head = stale_head

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def add_bucket(
        self,
        bucket_id: str,
        *,
        public: bool = False,
        file_size_limit: int | None = None,
        allowed_mime_types: list[str] | None = None,
    ) -> FakeBucket:
        """Seed a bucket directly, as if made in the dashboard."""
        bucket = FakeBucket(bucket_id, public, file_size_limit, allowed_mime_types)
        self.buckets[bucket_id] = bucket
        return bucket

    def fail_uploads(
        self,
        count: int,
        status: int,
        *,
        message: str = "injected failure",
        http_status: int | None = None,
    ) -> None:
        """Make the next ``count`` uploads fail with ``status`` after reading the body.

        The answer is rendered like the real server's (HTTP 400 unless 500); pass
        ``http_status`` to play something in front of it instead, such as a 502 proxy.
        """
        refusal = storage_error(status, "InjectedFailure", message, "injected")
        if http_status is not None:
            refusal.http_status = http_status
        self._failures.append(_Failure(count, refusal))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_render_refusals])
        app[FAKE] = self
        app.add_routes(
            [
                web.get(f"{STORAGE}/bucket", self._list_buckets),
                web.post(f"{STORAGE}/bucket", self._create_bucket),
                web.get(f"{STORAGE}/bucket/{{bucket}}", self._get_bucket),
                web.put(f"{STORAGE}/bucket/{{bucket}}", self._update_bucket),
                web.get(f"{STORAGE}/object/public/{{bucket}}/{{path:.+}}", self._get_public),
                web.post(f"{STORAGE}/object/{{bucket}}/{{path:.+}}", self._upload),
                web.put(f"{STORAGE}/object/{{bucket}}/{{path:.+}}", self._upload),
                web.delete(f"{STORAGE}/object/{{bucket}}", self._delete_objects),
                web.get(f"{STORAGE}/object/authenticated/{{bucket}}/{{path:.+}}", self._get),
                web.get(f"{STORAGE}/object/{{bucket}}/{{path:.+}}", self._get),
                web.post(f"{STORAGE}/upload/resumable", self._tus_create),
                web.head(f"{STORAGE}/upload/resumable/{{id}}", self._tus_head),
                web.patch(f"{STORAGE}/upload/resumable/{{id}}", self._tus_patch),
                web.route("*", "/{tail:.*}", _no_route),
            ]
        )
        return app

    # ---------------------------------------------------------------- auth

    def _role(self, request: web.Request) -> Role:
        if self.gateway_key_auth and request.headers.get("apikey") not in (
            self.service_key,
            self.anon_key,
        ):
            raise Refusal(401, dict(GATEWAY_REFUSAL))
        token = _BEARER.sub("", request.headers.get("Authorization", ""))
        if token == self.service_key:
            return "service_role"
        if token == self.anon_key:
            return "anon"
        raise storage_error(403, "AccessDenied", "Invalid Compact JWS", "Unauthorized")

    # ------------------------------------------------------------- buckets

    async def _list_buckets(self, request: web.Request) -> web.Response:
        if self._role(request) == "anon":
            return web.json_response([])
        return web.json_response(
            [{**b.as_json(), "type": "STANDARD"} for b in self.buckets.values()]
        )

    async def _get_bucket(self, request: web.Request) -> web.Response:
        role = self._role(request)
        bucket = self.buckets.get(request.match_info["bucket"])
        if bucket is None or role == "anon":
            raise no_such_bucket()
        return web.json_response(bucket.as_json())

    async def _create_bucket(self, request: web.Request) -> web.Response:
        role = self._role(request)
        body = await request.json()
        if "name" not in body:
            raise storage_error(400, "InvalidRequest", "body must have required property 'name'")
        bucket_id = body.get("id") or body["name"]
        if not _BUCKET_NAME.match(bucket_id):
            raise storage_error(400, "InvalidBucketName", "Bucket name invalid", "Invalid Input")
        limit = self._parse_limit(body.get("file_size_limit"))
        mime_types = body.get("allowed_mime_types")
        if role == "anon":
            raise storage_error(403, "AccessDenied", RLS_REFUSAL, "Unauthorized")
        if bucket_id in self.buckets:
            raise storage_error(
                409, "BucketAlreadyExists", "The resource already exists", "Duplicate"
            )
        self.add_bucket(
            bucket_id,
            public=bool(body.get("public", False)),
            file_size_limit=limit,
            allowed_mime_types=mime_types,
        )
        return web.json_response({"name": body["name"]})

    async def _update_bucket(self, request: web.Request) -> web.Response:
        role = self._role(request)
        bucket = self.buckets.get(request.match_info["bucket"])
        if bucket is None or role == "anon":  # RLS: the update matches no row
            raise no_such_bucket()
        body = await request.json()
        if "public" in body:
            bucket.public = bool(body["public"])
        if "file_size_limit" in body:
            bucket.file_size_limit = self._parse_limit(body["file_size_limit"])
        if "allowed_mime_types" in body:
            bucket.allowed_mime_types = body["allowed_mime_types"]
        bucket.updated_at = _now()
        return web.json_response({"message": "Successfully updated"})

    def _parse_limit(self, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, str) and (match := _SIZE.match(value)):
            value = int(float(match[1]) * _UNITS[match[2].lower()])
        if not isinstance(value, int) or value < 0:
            raise storage_error(
                400,
                "InvalidRequest",
                "Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B",
            )
        if value > self.global_file_size_limit:
            raise too_large()
        return value

    # ------------------------------------------------------------- objects

    async def _get_public(self, request: web.Request) -> web.StreamResponse:
        bucket = self.buckets.get(request.match_info["bucket"])
        if bucket is None or not bucket.public:
            raise no_such_bucket()
        found = self.objects.get(f"{bucket.id}/{request.match_info['path']}")
        if found is None:
            raise storage_error(404, "NoSuchKey", "Object not found", "not_found")
        return await _serve(request, found)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        """``GET /object/[authenticated/]{bucket}/{path}``: any object, for the service
        role (row-level security shows anon none of them here)."""
        role = self._role(request)
        bucket = self.buckets.get(request.match_info["bucket"])
        if bucket is None:
            raise no_such_bucket()
        found = self.objects.get(f"{bucket.id}/{request.match_info['path']}")
        if found is None or role == "anon":
            raise storage_error(404, "NoSuchKey", "Object not found", "not_found")
        return await _serve(request, found)

    async def _delete_objects(self, request: web.Request) -> web.Response:
        """``DELETE /object/{bucket}`` with ``{"prefixes": [...]}`` (1 to 1,000 names, as
        ``deleteObjects.ts`` validates them): the objects deleted, as a list. Names that
        do not exist are skipped, and so is a bucket that does not exist (the real server
        answers 200 ``[]``); so is everything for anon, whom row-level security lets
        delete nothing (the list comes back empty, not refused)."""
        role = self._role(request)
        body = await request.json()
        prefixes = body.get("prefixes") if isinstance(body, dict) else None
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise storage_error(
                400, "InvalidRequest", "body must have required property 'prefixes'"
            )
        if not 1 <= len(prefixes) <= 1000:
            raise storage_error(
                400,
                "InvalidRequest",
                "body/prefixes must NOT have fewer than 1 items"
                if not prefixes
                else "body/prefixes must NOT have more than 1000 items",
            )
        bucket = self.buckets.get(request.match_info["bucket"])
        if bucket is None:
            return web.json_response([])  # no error: nothing there was deleted
        deleted = []
        for name in prefixes if role == "service_role" else []:
            if self.objects.pop(f"{bucket.id}/{name}", None) is not None:
                deleted.append({"name": name, "bucket_id": bucket.id, "id": str(uuid.uuid4())})
        return web.json_response(deleted)

    async def _upload(self, request: web.Request) -> web.Response:
        bucket_id, path = request.match_info["bucket"], request.match_info["path"]
        multipart = request.content_type.startswith("multipart/form-data")
        record = UploadRecord(
            method=request.method,
            bucket=bucket_id,
            path=path,
            chunked="chunked" in request.headers.get("Transfer-Encoding", "").lower(),
            content_length=request.content_length,
            multipart=multipart,
            upsert=request.method == "PUT" or request.headers.get("x-upsert") == "true",
        )
        self.uploads.append(record)
        request[UPLOAD_RECORD] = record
        role = self._role(request)
        if self._failures:
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.pop(0)
            record.received = len(await request.read())
            raise failure.refusal
        bucket = self.buckets.get(bucket_id)
        if bucket is None:
            raise no_such_bucket()
        limit = min(
            bucket.file_size_limit or self.global_file_size_limit, self.global_file_size_limit
        )
        if multipart:
            data, mime, cache_control = await self._read_form(request, bucket, limit, role, record)
        else:
            mime = request.headers.get("Content-Type", "application/octet-stream")
            cache_control = request.headers.get("Cache-Control", "no-cache")
            _check_mime(mime, bucket)
            if request.content_length is not None and request.content_length > limit:
                raise too_large()
            self._may_write(role, bucket, path, record.upsert)
            data = await _read_limited(request.content, limit, record)
        self.objects[f"{bucket.id}/{path}"] = FakeObject(data, mime, cache_control)
        return web.json_response({"Id": str(uuid.uuid4()), "Key": f"{bucket.id}/{path}"})

    async def _read_form(
        self,
        request: web.Request,
        bucket: FakeBucket,
        limit: int,
        role: Role,
        record: UploadRecord,
    ) -> tuple[bytes, str, str]:
        fields: dict[str, str] = {}
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name != "file":
                fields[part.name or ""] = await part.text()
                continue
            mime = fields.get("contentType") or part.headers.get("Content-Type") or "text/plain"
            _check_mime(mime, bucket)
            self._may_write(role, bucket, record.path, record.upsert)
            data = await _read_limited(part, limit, record)
            cache = fields.get("cacheControl")
            return data, mime, f"max-age={cache}" if cache else "no-cache"
        raise storage_error(400, "InvalidRequest", "No content provided")

    def _may_write(self, role: Role, bucket: FakeBucket, path: str, upsert: bool) -> None:
        """The checks ``canUpload`` makes: the key, RLS, and an existing object."""
        if not _OBJECT_KEY.match(path):
            raise storage_error(400, "InvalidKey", f"Invalid key: {path}")
        if role == "anon":
            raise storage_error(403, "AccessDenied", RLS_REFUSAL, "Unauthorized")
        if not upsert and f"{bucket.id}/{path}" in self.objects:
            raise storage_error(409, "KeyAlreadyExists", "The resource already exists", "Duplicate")

    # ------------------------------------------------------- resumable (tus)

    def _limit(self, bucket: FakeBucket) -> int:
        return min(
            bucket.file_size_limit or self.global_file_size_limit, self.global_file_size_limit
        )

    def _tus_upload(self, request: web.Request) -> TusUpload:
        upload = self.tus.get(request.match_info["id"])
        if upload is None:
            raise TusRefusal(404, "The file for this url was not found\n")
        return upload

    async def _tus_create(self, request: web.Request) -> web.Response:
        _tus_version(request)
        role = self._role(request)
        length = request.headers.get("Upload-Length")
        deferred = request.headers.get("Upload-Defer-Length")
        if (length is None) == (deferred is None):
            raise TusRefusal(400, "Upload-Length or Upload-Defer-Length header required\n")
        metadata = _tus_metadata(request.headers.get("Upload-Metadata", ""))
        bucket_id, path = metadata.get("bucketName", ""), metadata.get("objectName", "")
        mime = metadata.get("contentType", "")
        bucket = self._tus_may_write(role, bucket_id, path, _upsert(request), mime)
        if length is not None and int(length) > self._limit(bucket):
            raise TusRefusal(413, "Maximum size exceeded\n")
        cache = metadata.get("cacheControl", "")
        name = f"{bucket_id}/{path}/{uuid.uuid4()}".encode()
        upload_id = base64.urlsafe_b64encode(name).decode().rstrip("=")
        self.tus[upload_id] = TusUpload(
            upload_id,
            bucket_id,
            path,
            mime,
            f"max-age={cache}" if cache.isdigit() else "no-cache",
            _upsert(request),
            self._dir / f"{len(self.tus)}.part",
            int(length) if length is not None else None,
        )
        self.tus[upload_id].file.touch()
        prefix = STORAGE if self.forwarded_prefix else ""
        base = self.tus_location_base or self.url
        return web.Response(
            status=201,
            headers={
                "Location": f"{base}{prefix}/upload/resumable/{upload_id}",
                "Tus-Resumable": "1.0.0",
            },
        )

    def _tus_may_write(
        self, role: Role, bucket_id: str, path: str, upsert: bool, mime: str | None = None
    ) -> FakeBucket:
        """``onIncomingRequest``: the checks storage-api makes on every POST and PATCH."""
        bucket = self.buckets.get(bucket_id)
        if bucket is None:
            raise TusRefusal(404, "Bucket not found")
        try:
            if mime is not None:
                _check_mime(mime, bucket)
            self._may_write(role, bucket, path, upsert)
        except Refusal as refusal:
            raise TusRefusal(int(refusal.body["statusCode"]), refusal.body["message"]) from None
        return bucket

    async def _tus_head(self, request: web.Request) -> web.Response:
        _tus_version(request)
        upload = self._tus_upload(request)
        offset = upload.offset if upload.stale_offset is None else upload.stale_offset
        upload.stale_offset = None
        headers = {"Tus-Resumable": "1.0.0", "Cache-Control": "no-store"}
        headers["Upload-Offset"] = str(offset)
        if upload.size is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(upload.size)
        return web.Response(status=200, headers=headers)

    async def _tus_patch(self, request: web.Request) -> web.StreamResponse:
        _tus_version(request)
        role = self._role(request)
        upload = self._tus_upload(request)
        upload.patches += 1
        if request.headers.get("Upload-Offset") is None:
            raise TusRefusal(403, "Upload-Offset header required\n")
        if request.headers.get("Content-Type") is None:
            raise TusRefusal(403, "Content-Type header required\n")
        bucket = self._tus_may_write(role, upload.bucket, upload.path, _upsert(request))
        async with upload.lock:  # a second PATCH waits, then finds the offset moved
            room = self._tus_check_patch(request, upload, bucket)
            await self._tus_write(request, upload, room)
        headers = {"Tus-Resumable": "1.0.0", "Upload-Offset": str(upload.offset)}
        if upload.offset == upload.size:
            # completeUpload always upserts: the last upload to finish wins the key.
            self.objects[f"{upload.bucket}/{upload.path}"] = FakeObject(
                b"", upload.content_type, upload.cache_control, upload.file
            )
            headers["Tus-Complete"] = "1"
        return web.Response(status=204, headers=headers)

    def _tus_check_patch(self, request: web.Request, upload: TusUpload, bucket: FakeBucket) -> int:
        """The PatchHandler's checks under the lock, in its order; the body's room."""
        if int(request.headers["Upload-Offset"]) != upload.offset:
            raise TusRefusal(409, "Upload-Offset conflict\n")
        limit = self._limit(bucket)
        if (declared := request.headers.get("Upload-Length")) is not None:
            size = int(declared)
            if upload.size is not None or size < upload.offset:
                raise TusRefusal(400, "Upload-Length or Upload-Defer-Length header required\n")
            if size > limit:
                raise TusRefusal(413, "Maximum size exceeded\n")
            upload.size = size
        room = (upload.size if upload.size is not None else limit) - upload.offset
        if (request.content_length or 0) > room:
            raise TusRefusal(413, "upload's size exceeded\n")
        return room

    async def _tus_write(self, request: web.Request, upload: TusUpload, room: int) -> None:
        """Append the body as it arrives; a cut keeps what came before it."""
        cut, self._cut_after = self._cut_after, None
        before = upload.offset
        with upload.file.open("ab") as out:
            while piece := await request.content.readany():
                if cut is not None and len(piece) >= cut:
                    piece = piece[:cut]
                if len(piece) > room:
                    raise TusRefusal(413, "upload's size exceeded\n", early=False)
                out.write(piece)
                room -= len(piece)
                upload.offset += len(piece)
                self.tus_received += len(piece)
                if cut is not None:
                    cut -= len(piece)
                    if cut == 0:
                        out.flush()
                        assert request.transport is not None
                        request.transport.abort()
                        if self._rewind_to is not None:
                            upload.offset = self._rewind_to
                        if self._stale_head:
                            upload.stale_offset = before
                        raise ConnectionResetError("cut by the test")


async def _serve(request: web.Request, found: FakeObject) -> web.StreamResponse:
    """An object's bytes with its type and cache header, streamed."""
    response = web.StreamResponse(
        headers={"Content-Type": found.content_type, "Cache-Control": found.cache_control}
    )
    response.content_length = found.size()
    await response.prepare(request)
    if request.method != "HEAD":
        async for block in found.blocks():
            await response.write(block)
    return response


async def _read_limited(
    source: aiohttp.StreamReader | aiohttp.BodyPartReader, limit: int, record: UploadRecord
) -> bytes:
    """The body, read as it arrives (``record.received`` counts along); refused past ``limit``."""
    received = bytearray()
    while True:
        if isinstance(source, aiohttp.StreamReader):
            chunk = await source.readany()
        else:
            chunk = await source.read_chunk()
        if not chunk:
            return bytes(received)
        received += chunk
        record.received = len(received)
        if len(received) > limit:
            raise too_large()


def _check_mime(mime: str, bucket: FakeBucket) -> None:
    """The real ``validateMimeType``: exact ``type/sub`` or ``type/*``."""
    if not bucket.allowed_mime_types:
        return
    kind, slash, _ = mime.partition("/")
    if not slash or not any(a in (mime, f"{kind}/*") for a in bucket.allowed_mime_types):
        raise storage_error(
            415, "InvalidMimeType", f"mime type {mime} is not supported", "invalid_mime_type"
        )


def _tus_version(request: web.Request) -> None:
    if request.headers.get("Tus-Resumable") is None:
        raise TusRefusal(412, "Tus-Resumable Required\n")


def _upsert(request: web.Request) -> bool:
    """storage-api reads ``x-upsert`` on each request (``setTusRequestContext``)."""
    return request.headers.get("x-upsert") == "true"


async def _no_route(request: web.Request) -> web.Response:
    return web.json_response(NO_ROUTE, status=404)


def _tus_metadata(header: str) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs."""
    metadata: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        name, _, value = pair.partition(" ")
        try:
            metadata[name] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise TusRefusal(400, "Upload-Metadata is invalid\n") from None
    return metadata


@web.middleware
async def _render_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TusRefusal as refusal:
        fake = request.app[FAKE]
        fake.tus_refusals.append((request.method, refusal.http_status, refusal.body))
        if (
            refusal.early
            and fake.early_answers == "reset"
            and request.method == "PATCH"
            and request.content_length
        ):
            # Answered and closed before the body was read: an asyncio client still
            # writing the body never reads the answer (it sees the connection drop).
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=refusal.http_status)
        await _drain(request)
        return web.Response(text=refusal.body, status=refusal.http_status)
    except Refusal as refusal:
        await _drain(request)
        return web.json_response(refusal.body, status=refusal.http_status)
    except (ConnectionError, aiohttp.ClientPayloadError):
        # The client gave up mid-body (as an aborted upload does): nothing is stored
        # and nobody is listening for an answer.
        if (record := request.get(UPLOAD_RECORD)) is not None:
            record.aborted = True
        return web.Response(status=400)


async def _drain(request: web.Request) -> None:
    """Read what is left of the body, so the client sees our answer, not a reset."""
    try:
        while await request.content.readany():
            pass
    except (ConnectionError, aiohttp.ClientPayloadError):
        pass


@asynccontextmanager
async def started(
    *, global_file_size_limit: int = FREE_PLAN_LIMIT
) -> AsyncIterator[FakeSupabaseStorage]:
    """Serve a fresh fake project on a free local port; ``.url`` is its project URL."""
    fake = FakeSupabaseStorage(global_file_size_limit)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
        fake.close()
