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
  "Duplicate"; PUT always overwrites.

One deliberate difference: upstream checks a raw body's size only through its
``Content-Length`` (commit 3e22a427), so a chunked body over the limit is accepted
there. This fake stops any body at the limit, as upstream does for multipart forms,
so that an oversized upload can be tested at all; ``SupabaseStore`` enforces the
bucket limit itself and does not rely on either behaviour.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    data: bytes
    content_type: str
    cache_control: str


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
        self.service_key = f"fake-service-role-{secrets.token_hex(12)}"
        self.anon_key = f"fake-anon-{secrets.token_hex(12)}"
        self.global_file_size_limit = global_file_size_limit
        self.gateway_key_auth = True
        self.buckets: dict[str, FakeBucket] = {}
        self.objects: dict[str, FakeObject] = {}  # by "bucket/path", the API's "Key"
        self.uploads: list[UploadRecord] = []
        self._failures: list[_Failure] = []

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
        app.add_routes(
            [
                web.get(f"{STORAGE}/bucket", self._list_buckets),
                web.post(f"{STORAGE}/bucket", self._create_bucket),
                web.get(f"{STORAGE}/bucket/{{bucket}}", self._get_bucket),
                web.put(f"{STORAGE}/bucket/{{bucket}}", self._update_bucket),
                web.get(f"{STORAGE}/object/public/{{bucket}}/{{path:.+}}", self._get_public),
                web.post(f"{STORAGE}/object/{{bucket}}/{{path:.+}}", self._upload),
                web.put(f"{STORAGE}/object/{{bucket}}/{{path:.+}}", self._upload),
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

    async def _get_public(self, request: web.Request) -> web.Response:
        bucket = self.buckets.get(request.match_info["bucket"])
        if bucket is None or not bucket.public:
            raise no_such_bucket()
        found = self.objects.get(f"{bucket.id}/{request.match_info['path']}")
        if found is None:
            raise storage_error(404, "NoSuchKey", "Object not found", "not_found")
        return web.Response(
            body=found.data,
            headers={"Content-Type": found.content_type, "Cache-Control": found.cache_control},
        )

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
            raise storage_error(
                409, "ResourceAlreadyExists", "The resource already exists", "Duplicate"
            )


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


@web.middleware
async def _render_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
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
