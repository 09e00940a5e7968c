"""What a Storage server answers on the wire, request by request: our fake must answer
as supabase/storage does, or the tests built on it prove nothing.

Issue 28, finding 4: the fake was kinder than the server (a per-path lock the server
does not have, a PATCH without ``x-upsert`` accepted on a key that exists, other
statuses and bodies), so 34 storage tests passed while the worker failed against the
real thing. Each answer asserted here was measured on supabase/storage v1.11.2 behind
a prefix-stripping gateway (``/work/ext/logs/prove.md``), and these tests run against
it too: ``SORA_TEST_SUPABASE_URL`` (``tests/storage_server.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.storage_server import StorageServer, storage_server

MIB = 1024 * 1024
CHUNK = 6 * MIB


@pytest.fixture
async def server() -> AsyncIterator[StorageServer]:
    async with storage_server() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as http:
        yield http


def body(size: int, byte: int = 1) -> bytes:
    return bytes([byte]) * size


class Tus:
    """Raw TUS requests, exactly as written (no client library in between)."""

    def __init__(self, http: httpx.AsyncClient, server: StorageServer, key: str | None = None):
        self.http = http
        self.server = server
        self.base = f"{server.url}/storage/v1"
        self.key = key or server.service_key

    def auth(self, *, upsert: bool = False, tus: bool = True) -> dict[str, str]:
        headers = {"apikey": self.key, "Authorization": f"Bearer {self.key}"}
        if tus:
            headers["Tus-Resumable"] = "1.0.0"
        if upsert:
            headers["x-upsert"] = "true"
        return headers

    async def create(
        self,
        bucket: str,
        name: str,
        *,
        length: int | None = None,
        upsert: bool = False,
        tus: bool = True,
    ) -> httpx.Response:
        metadata = {"bucketName": bucket, "objectName": name, "contentType": "video/mp4"}
        headers = self.auth(upsert=upsert, tus=tus)
        headers["Upload-Metadata"] = ",".join(
            f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items()
        )
        if length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(length)
        return await self.http.post(f"{self.base}/upload/resumable", headers=headers)

    async def patch(
        self,
        url: str,
        offset: int,
        data: bytes,
        *,
        upsert: bool = False,
        length: int | None = None,
        tus: bool = True,
    ) -> httpx.Response:
        headers = self.auth(upsert=upsert, tus=tus)
        headers["Upload-Offset"] = str(offset)
        headers["Content-Type"] = "application/offset+octet-stream"
        if length is not None:
            headers["Upload-Length"] = str(length)
        return await self.http.patch(url, content=data, headers=headers)

    async def head(self, url: str, *, tus: bool = True) -> httpx.Response:
        return await self.http.head(url, headers=self.auth(tus=tus))

    async def upload_url(self, bucket: str, name: str, **kwargs: object) -> str:
        created = await self.create(bucket, name, **kwargs)  # type: ignore[arg-type]
        assert created.status_code == 201, created.text
        return created.headers["Location"]


async def put_rest(
    http: httpx.AsyncClient, server: StorageServer, bucket: str, name: str, data: bytes, **h: str
) -> httpx.Response:
    key = h.pop("key", server.service_key)
    headers = {"apikey": key, "Authorization": f"Bearer {key}", "Content-Type": "video/mp4", **h}
    return await http.post(
        f"{server.url}/storage/v1/object/{bucket}/{name}", content=data, headers=headers
    )


def as_json(response: httpx.Response) -> dict[str, str]:
    parsed = json.loads(response.text)
    assert isinstance(parsed, dict)
    return parsed


async def test_the_upload_url_goes_through_the_gateway(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    await server.add_bucket(server.videos, public=True)
    tus = Tus(http, server)
    created = await tus.create(server.videos, "a.mp4", length=10)
    assert created.status_code == 201
    assert created.headers["Location"].startswith(f"{server.url}/storage/v1/upload/resumable/")
    assert created.headers["Tus-Resumable"] == "1.0.0"
    head = await tus.head(created.headers["Location"])
    assert (head.status_code, head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (
        200,
        "0",
        "10",
    )
    deferred = await tus.upload_url(server.videos, "b.mp4")
    assert (await tus.head(deferred)).headers["Upload-Defer-Length"] == "1"


async def test_every_tus_request_needs_its_version_header(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    await server.add_bucket(server.videos, public=True)
    tus = Tus(http, server)
    url = await tus.upload_url(server.videos, "a.mp4")
    created = await tus.create(server.videos, "b.mp4", tus=False)
    patched = await tus.patch(url, 0, b"abc", tus=False)
    headed = await tus.head(url, tus=False)
    assert (created.status_code, created.text) == (412, "Tus-Resumable Required\n")
    assert (patched.status_code, patched.text) == (412, "Tus-Resumable Required\n")
    assert headed.status_code == 412


async def test_tus_refusals_have_the_real_statuses_and_bodies(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    await server.add_bucket(server.videos, public=True, file_size_limit=MIB)
    tus = Tus(http, server)
    nowhere = await tus.create(server.bucket("no-such-bucket"), "a.mp4")
    assert (nowhere.status_code, nowhere.text) == (404, "Bucket not found")
    anon = await Tus(http, server, server.anon_key).create(server.videos, "a.mp4")
    assert (anon.status_code, anon.text) == (403, "new row violates row-level security policy")
    too_long = await tus.create(server.videos, "a.mp4", length=2 * MIB)
    assert (too_long.status_code, too_long.text) == (413, "Maximum size exceeded\n")
    assert (await tus.create(server.videos, "a.mp4", length=MIB)).status_code == 201

    url = await tus.upload_url(server.videos, "b.mp4")
    over = await tus.patch(url, 0, body(2 * MIB))
    assert (over.status_code, over.text) == (413, "upload's size exceeded\n")
    assert (await tus.patch(url, 0, body(600 * 1024))).status_code == 204
    past = await tus.patch(url, 600 * 1024, body(600 * 1024))
    assert (past.status_code, past.text) == (413, "upload's size exceeded\n")
    assert (await tus.head(url)).headers["Upload-Offset"] == str(600 * 1024)

    lost = (
        url.rsplit("/", 1)[0]
        + "/"
        + base64.urlsafe_b64encode(
            f"{server.videos}/nothing.mp4/0581ff64-fbf8-49bd-8c9b-884c46bf6f7f".encode()
        )
        .decode()
        .rstrip("=")
    )
    unknown = await tus.patch(lost, 0, b"abc")
    assert (unknown.status_code, unknown.text) == (404, "The file for this url was not found\n")


async def test_x_upsert_is_read_on_every_tus_request(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    """Issue 28, finding 1, on the wire: an upsert on the create alone does not carry
    over; each PATCH to a key that exists is refused unless it says so itself."""
    videos = server.videos
    await server.add_bucket(videos, public=True)
    assert (await put_rest(http, server, videos, "v.mp4", b"old")).status_code == 200
    tus = Tus(http, server)
    refused = await tus.create(videos, "v.mp4", length=CHUNK + 10)
    assert (refused.status_code, refused.text) == (409, "The resource already exists")

    url = await tus.upload_url(videos, "v.mp4", length=CHUNK + 10, upsert=True)
    plain = await tus.patch(url, 0, body(CHUNK))
    assert (plain.status_code, plain.text) == (409, "The resource already exists")
    assert (await tus.head(url)).headers["Upload-Offset"] == "0"
    first = await tus.patch(url, 0, body(CHUNK), upsert=True)
    assert (first.status_code, first.headers["Upload-Offset"]) == (204, str(CHUNK))
    last = await tus.patch(url, CHUNK, body(10), upsert=True)
    assert (last.status_code, last.headers["Tus-Complete"]) == (204, "1")
    assert await server.object_bytes(videos, "v.mp4") == body(CHUNK + 10)


async def test_a_stale_offset_is_a_conflict_and_head_tells_the_real_one(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    await server.add_bucket(server.videos, public=True)
    tus = Tus(http, server)
    url = await tus.upload_url(server.videos, "s.mp4", length=CHUNK + 100)
    assert (await tus.patch(url, 0, body(CHUNK))).status_code == 204
    for offset in (0, CHUNK + 100 - 1):  # behind, and ahead
        stale = await tus.patch(url, offset, body(100))
        assert (stale.status_code, stale.text) == (409, "Upload-Offset conflict\n")
    head = await tus.head(url)
    assert head.headers["Upload-Offset"] == str(CHUNK)
    done = await tus.patch(url, CHUNK, body(100))
    assert (done.status_code, done.headers["Tus-Complete"]) == (204, "1")
    again = await tus.patch(url, CHUNK + 100, b"x")
    assert (again.status_code, again.text) == (409, "The resource already exists")


async def test_two_uploads_to_one_key_both_finish_and_the_last_wins(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    """Locking is per upload, never per object path: no 409 "The resource is locked"."""
    videos = server.videos
    await server.add_bucket(videos, public=True)
    tus = Tus(http, server)
    a = await tus.upload_url(videos, "race.mp4", length=CHUNK + 5, upsert=True)
    b = await tus.upload_url(videos, "race.mp4", length=CHUNK + 5, upsert=True)
    for url, byte in ((a, 1), (b, 2)):
        assert (await tus.patch(url, 0, body(CHUNK, byte), upsert=True)).status_code == 204
    for url, byte in ((a, 1), (b, 2)):
        finished = await tus.patch(url, CHUNK, body(5, byte), upsert=True)
        assert (finished.status_code, finished.headers["Tus-Complete"]) == (204, "1")
    assert await server.object_bytes(videos, "race.mp4") == body(CHUNK + 5, 2)

    # Without x-upsert, the upload that finishes second is refused at its last PATCH.
    c = await tus.upload_url(videos, "race2.mp4", length=CHUNK + 5)
    d = await tus.upload_url(videos, "race2.mp4", length=CHUNK + 5)
    for url, byte in ((c, 3), (d, 4)):
        assert (await tus.patch(url, 0, body(CHUNK, byte))).status_code == 204
    assert (await tus.patch(c, CHUNK, body(5, 3))).status_code == 204
    second = await tus.patch(d, CHUNK, body(5, 4))
    assert (second.status_code, second.text) == (409, "The resource already exists")
    assert await server.object_bytes(videos, "race2.mp4") == body(CHUNK + 5, 3)


async def test_two_patches_on_one_upload_at_once_one_wins_one_conflicts(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    await server.add_bucket(server.videos, public=True)
    tus = Tus(http, server)
    url = await tus.upload_url(server.videos, "twice.mp4", length=2 * CHUNK)
    answers = await asyncio.gather(tus.patch(url, 0, body(CHUNK)), tus.patch(url, 0, body(CHUNK)))
    assert sorted(a.status_code for a in answers) == [204, 409]
    assert "Upload-Offset conflict\n" in [a.text for a in answers]
    assert (await tus.head(url)).headers["Upload-Offset"] == str(CHUNK)


async def test_rest_errors_are_http_400_with_the_status_in_the_body(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    videos = server.videos
    await server.add_bucket(videos, public=True, file_size_limit=MIB)
    assert (await put_rest(http, server, videos, "a.mp4", b"x")).status_code == 200

    def answer(response: httpx.Response) -> tuple[int, str, str, str]:
        shown = as_json(response)
        return response.status_code, shown["statusCode"], shown["code"], shown["error"]

    nowhere = await put_rest(http, server, server.bucket("no-such-bucket"), "a.mp4", b"x")
    assert answer(nowhere) == (400, "404", "NoSuchBucket", "Bucket not found")
    duplicate = await put_rest(http, server, videos, "a.mp4", b"y")
    assert answer(duplicate) == (400, "409", "KeyAlreadyExists", "Duplicate")
    assert as_json(duplicate)["message"] == "The resource already exists"
    large = await put_rest(http, server, videos, "big.mp4", body(2 * MIB))
    assert answer(large) == (400, "413", "EntityTooLarge", "Payload too large")
    anon = await put_rest(http, server, videos, "anon.mp4", b"x", key=server.anon_key)
    assert answer(anon) == (400, "403", "AccessDenied", "Unauthorized")
    assert as_json(anon)["message"] == "new row violates row-level security policy"

    key = {"apikey": server.service_key, "Authorization": f"Bearer {server.service_key}"}
    base = f"{server.url}/storage/v1/object"
    for route in (f"{base}/authenticated/{videos}/none.mp4", f"{base}/public/{videos}/none.mp4"):
        missing = await http.get(route, headers=key)
        assert answer(missing) == (400, "404", "NoSuchKey", "not_found")
    found = await http.get(f"{base}/authenticated/{videos}/a.mp4", headers=key)
    assert (found.status_code, found.content) == (200, b"x")


async def test_an_early_refusal_reaches_the_client_only_through_the_gateway(
    server: StorageServer, http: httpx.AsyncClient
) -> None:
    """The server refuses a PATCH before reading its body and closes the connection.
    Through the gateway an httpx.AsyncClient reads the 409; talking to the server
    directly it sees the connection drop (the fake plays that as ``early_answers =
    "reset"``): the store must treat both the same way."""
    await server.add_bucket(server.videos, public=True)
    tus = Tus(http, server)
    url = await tus.upload_url(server.videos, "e.mp4", length=2 * CHUNK)
    assert (await tus.patch(url, 0, body(CHUNK))).status_code == 204
    through = await tus.patch(url, 0, body(CHUNK))
    assert (through.status_code, through.text) == (409, "Upload-Offset conflict\n")

    if server.fake is not None:
        server.fake.early_answers = "reset"
        direct = url
    elif server.direct_url is not None:
        direct = f"{server.direct_url}/upload/resumable/{url.rsplit('/', 1)[1]}"
    else:
        pytest.skip("needs SORA_TEST_STORAGE_DIRECT_URL (a real server without its gateway)")
    with pytest.raises(httpx.TransportError):
        await tus.patch(direct, 0, body(CHUNK))
    assert (await tus.head(url)).headers["Upload-Offset"] == str(CHUNK)
