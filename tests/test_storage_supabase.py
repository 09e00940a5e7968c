"""Supabase Storage: the official client and ``SupabaseStore`` against a Storage server.

The server is our fake by default and a real supabase/storage when
``SORA_TEST_SUPABASE_URL`` is set (``tests/storage_server.py``): the tests taking the
``server`` fixture run against whichever it is, so what passes against the fake passes
against the real thing. The first tests drive ``storage3`` (unchanged, default settings),
so that the answers are the ones real clients get; the rest exercise ``SupabaseStore``
end to end over HTTP: bucket setup, streamed and resumable uploads, overwrites, reading
back, and how every kind of refusal is classified for the worker's retry policy. Tests
that break the server on purpose (cut connections, injected refusals) take ``fake``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from storage3.exceptions import StorageApiError

from service.storage.base import MissingObject, StorageError, measure
from service.storage.supabase import (
    IMAGE_MIME_TYPES,
    TUS_CHUNK,
    VIDEO_MIME_TYPES,
    BucketSpec,
    SupabaseStore,
    default_bucket_specs,
)
from tests.fakes.supabase_storage import FakeObject, FakeSupabaseStorage, started
from tests.storage_server import StorageServer, storage_server

VIDEOS, IMAGES = "hug-videos", "hug-images"
CHUNK = 256 * 1024
NO_PAUSES = (0.0,) * 5
"""Resume at once in tests: the fake has nothing left to finish when it answers."""


@pytest.fixture
async def server() -> AsyncIterator[StorageServer]:
    async with storage_server() as server:
        yield server


async def store_on(url: str, key: str) -> AsyncIterator[SupabaseStore]:
    store = SupabaseStore(url, key, tus_pauses=NO_PAUSES)
    yield store
    await store.aclose()


@pytest.fixture
async def store(server: StorageServer) -> AsyncIterator[SupabaseStore]:
    async for store in store_on(server.url, server.service_key):
        yield store


@pytest.fixture
async def fake() -> AsyncIterator[FakeSupabaseStorage]:
    async with started() as fake:
        yield fake


@pytest.fixture
async def fake_store(fake: FakeSupabaseStorage) -> AsyncIterator[SupabaseStore]:
    async for store in store_on(fake.url, fake.service_key):
        yield store


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def pattern(index: int, salt: str = "") -> bytes:
    """A distinct 256 KiB chunk, made only when asked for."""
    return hashlib.sha256(f"{salt}{index}".encode()).digest() * (CHUNK // 32)


def video(count: int, salt: str = "") -> list[bytes]:
    return [pattern(i, salt) for i in range(count)]


OVER_ONE_CHUNK = TUS_CHUNK // CHUNK + 4  # 7 MiB: a resumable upload of two PATCHes


class Recording(httpx.AsyncBaseTransport):
    """Counts the uploads a store creates; can send one PATCH twice, as a client whose
    first try landed but whose answer was lost (the server then sees a stale offset)."""

    def __init__(self, twice: int | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.twice = twice
        self.creates = 0
        self.patches = 0
        self.statuses: list[tuple[str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/upload/resumable"):
            self.creates += 1
        if request.method == "PATCH":
            self.patches += 1
            if self.patches == self.twice:
                body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
                first = httpx.Request("PATCH", request.url, headers=request.headers, content=body)
                landed = await self.inner.handle_async_request(first)
                await landed.aread()
                self.statuses.append(("PATCH (answer lost)", landed.status_code))
                request = httpx.Request("PATCH", request.url, headers=request.headers, content=body)
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.statuses.append((request.method, 0))
            raise
        self.statuses.append((request.method, response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# ------------------------------------------------------- the server, via storage3


async def test_official_client_works_against_the_server(server: StorageServer) -> None:
    avatars = server.bucket("avatars")
    server.created(avatars)
    async with server.client() as client:
        created = await client.create_bucket(
            avatars,
            options={"public": True, "allowed_mime_types": ["image/png"], "file_size_limit": 1000},
        )
        assert created == {"name": avatars}
        bucket = await client.get_bucket(avatars)
        assert (bucket.id, bucket.public, bucket.file_size_limit) == (avatars, True, 1000)
        assert bucket.allowed_mime_types == ["image/png"]
        assert avatars in [b.id for b in await client.list_buckets()]

        files = client.from_(avatars)
        uploaded = await files.upload("cats/tom.png", b"png-1", {"content-type": "image/png"})
        assert uploaded.full_path == f"{avatars}/cats/tom.png"
        with pytest.raises(StorageApiError) as duplicate:
            await files.upload("cats/tom.png", b"png-2", {"content-type": "image/png"})
        assert (duplicate.value.status, duplicate.value.code) == ("409", "Duplicate")
        await files.upload(
            "cats/tom.png", b"png-2", {"content-type": "image/png", "upsert": "true"}
        )

        url = await files.get_public_url("cats/tom.png")
        assert url == f"{server.url}/storage/v1/object/public/{avatars}/cats/tom.png"
        async with httpx.AsyncClient() as http:
            served = await http.get(url)  # public: no key needed
        assert served.content == b"png-2"
        assert served.headers["content-type"] == "image/png"
        assert served.headers["cache-control"] == "max-age=3600"  # storage3's default

        with pytest.raises(StorageApiError) as wrong_type:
            await files.upload("notes.txt", b"text")  # storage3 defaults to text/plain
        assert (wrong_type.value.status, wrong_type.value.code) == ("415", "invalid_mime_type")
        with pytest.raises(StorageApiError) as too_big:
            await files.upload("big.png", b"x" * 1001, {"content-type": "image/png"})
        assert (too_big.value.status, too_big.value.code) == ("413", "Payload too large")
        with pytest.raises(StorageApiError) as missing:
            await client.get_bucket(server.bucket("nope"))
        assert (missing.value.status, missing.value.message) == ("404", "Bucket not found")

        await client.update_bucket(avatars, {"public": False})
        async with httpx.AsyncClient() as http:
            private = await http.get(url)
        assert private.status_code == 400 and private.json()["statusCode"] == "404"
    if server.fake is not None:
        assert all(u.multipart and not u.chunked for u in server.fake.uploads)


async def test_anon_key_reads_public_objects_but_cannot_write(server: StorageServer) -> None:
    videos = server.videos
    await server.add_bucket(videos, public=True)
    async with server.client() as admin:
        await admin.from_(videos).upload("a.mp4", b"mp4", {"content-type": "video/mp4"})
    mine = server.bucket("mine")
    async with server.client(server.anon_key) as anon:
        with pytest.raises(StorageApiError) as upload:
            await anon.from_(videos).upload("b.mp4", b"mp4", {"content-type": "video/mp4"})
        assert upload.value.status == "403"
        assert upload.value.message == "new row violates row-level security policy"
        with pytest.raises(StorageApiError) as create:
            await anon.create_bucket(mine, options={"public": True})
        assert create.value.status == "403"
        assert mine not in [b.id for b in await anon.list_buckets()]
    async with httpx.AsyncClient() as http:
        served = await http.get(f"{server.url}/storage/v1/object/public/{videos}/a.mp4")
    assert served.content == b"mp4"
    assert await server.object_bytes(videos, "b.mp4") is None

    anon_store = SupabaseStore(server.url, server.anon_key)
    try:
        with pytest.raises(StorageError) as refused:
            await anon_store.put(videos, "c.mp4", chunks(b"mp4"), "video/mp4")
        with pytest.raises(StorageError) as refused_tus:
            await anon_store.put(videos, "d.mp4", chunks(*video(OVER_ONE_CHUNK)), "video/mp4")
    finally:
        await anon_store.aclose()
    for error in (refused.value, refused_tus.value):
        assert "will retry" in str(error)  # a configuration problem: fix the key, then retry
        assert "SUPABASE_SERVICE_ROLE_KEY" in str(error)
        assert "row-level security" in str(error)


# ------------------------------------------------------------------ buckets


async def test_ensure_buckets_creates_public_buckets_once(
    server: StorageServer, store: SupabaseStore
) -> None:
    server.created(server.videos)
    server.created(server.images)
    specs = default_bucket_specs(server.videos, server.images, video_size_limit=40_000_000)
    await store.ensure_buckets(specs)
    async with server.client() as client:
        videos = await client.get_bucket(server.videos)
        images = await client.get_bucket(server.images)
        assert videos.public and images.public
        assert videos.allowed_mime_types == list(VIDEO_MIME_TYPES) == ["video/mp4", "image/webp"]
        assert images.allowed_mime_types == list(IMAGE_MIME_TYPES)
        assert (videos.file_size_limit, images.file_size_limit) == (40_000_000, None)

        await store.ensure_buckets(specs)
        again = await client.get_bucket(server.videos)
        assert (again.created_at, again.updated_at) == (videos.created_at, videos.updated_at)


async def test_ensure_buckets_accepts_existing_public_buckets_with_wildcards(
    server: StorageServer, store: SupabaseStore
) -> None:
    await server.add_bucket(server.videos, public=True, allowed_mime_types=["video/*", "image/*"])
    await server.add_bucket(server.images, public=True)  # no list: everything allowed
    await store.ensure_buckets(default_bucket_specs(server.videos, server.images))


async def test_ensure_buckets_refuses_a_private_bucket_without_changing_it(
    server: StorageServer, store: SupabaseStore
) -> None:
    videos = server.videos
    await server.add_bucket(videos, public=False)
    with pytest.raises(StorageError) as refused:
        await store.ensure_buckets({videos: BucketSpec(VIDEO_MIME_TYPES)})
    message = str(refused.value)
    assert f"{videos!r} exists but is private" in message
    assert f"update storage.buckets set public = true where id = '{videos}'" in message
    async with server.client() as client:
        assert not (await client.get_bucket(videos)).public


async def test_ensure_buckets_refuses_a_bucket_that_rejects_our_types(
    server: StorageServer, store: SupabaseStore
) -> None:
    await server.add_bucket(server.videos, public=True, allowed_mime_types=["video/mp4"])
    with pytest.raises(StorageError) as refused:
        await store.ensure_buckets({server.videos: BucketSpec(VIDEO_MIME_TYPES)})
    assert "does not accept image/webp" in str(refused.value)


async def test_ensure_buckets_names_the_global_limit_when_a_bucket_limit_exceeds_it(
    server: StorageServer, store: SupabaseStore
) -> None:
    server.created(server.videos)
    too_big = BucketSpec(VIDEO_MIME_TYPES, server.global_limit + 1)
    with pytest.raises(StorageError) as refused:
        await store.ensure_buckets({server.videos: too_big})
    assert "global upload limit" in str(refused.value)


# ------------------------------------------------------------------ uploads


async def test_put_sends_a_small_object_in_one_standard_upload(
    server: StorageServer, store: SupabaseStore
) -> None:
    server.created(server.videos)
    server.created(server.images)
    await store.ensure_buckets(default_bucket_specs(server.videos, server.images))
    count = TUS_CHUNK // CHUNK  # exactly one chunk: still the standard upload
    stored = await store.put(server.videos, "rows/clip.mp4", chunks(*video(count)), "video/mp4")

    body = b"".join(video(count))
    assert stored.size == len(body) == TUS_CHUNK
    assert stored.sha256 == hashlib.sha256(body).hexdigest()
    assert stored.url == f"{server.url}/storage/v1/object/public/{server.videos}/rows/clip.mp4"
    if server.fake is not None:
        [upload] = server.fake.uploads
        assert upload.content_length == len(body) and not upload.multipart
        assert upload.method == "POST" and upload.upsert
        assert server.fake.tus == {}
    async with httpx.AsyncClient() as http:
        served = await http.get(stored.url)
    assert served.status_code == 200 and served.content == body
    assert served.headers["content-type"] == "video/mp4"
    assert served.headers["cache-control"] == "max-age=31536000"


async def test_put_streams_a_large_object_through_tus_chunk_by_chunk(
    server: StorageServer,
) -> None:
    await server.add_bucket(server.videos, public=True)
    count = TUS_CHUNK // CHUNK + 6
    transport = Recording()
    http = httpx.AsyncClient(transport=transport)
    store = SupabaseStore(server.url, server.service_key, http)
    fake = server.fake

    async def lazily() -> AsyncIterator[bytes]:
        for index in range(count - 1):
            yield pattern(index)
        # The first 6 MiB chunk must already be on the server: nothing waits for the end.
        assert await _eventually(lambda: ("PATCH", 204) in transport.statuses)
        if fake is not None:
            assert fake.tus_received == TUS_CHUNK
        yield pattern(count - 1)

    try:
        stored = await store.put(server.videos, "rows/clip.mp4", lazily(), "video/mp4")
    finally:
        await http.aclose()

    body = b"".join(pattern(i) for i in range(count))
    assert stored.size == len(body) and stored.sha256 == hashlib.sha256(body).hexdigest()
    assert transport.statuses == [("POST", 201), ("PATCH", 204), ("PATCH", 204)]
    if fake is not None:
        assert fake.uploads == []
        [upload] = fake.tus.values()
        assert (upload.size, upload.offset, upload.patches) == (len(body), len(body), 2)
        assert upload.upsert and upload.content_type == "video/mp4"
    async with httpx.AsyncClient() as http:
        served = await http.get(stored.url)
    assert served.content == body
    assert served.headers["cache-control"] == "max-age=31536000"


async def test_an_object_over_one_chunk_is_replaced_by_the_next_put(
    server: StorageServer, store: SupabaseStore
) -> None:
    """Issue 28, finding 1: the server reads x-upsert on every TUS request; sent on the
    create alone, every PATCH to a key that exists answered 409 "The resource already
    exists", so a re-archive (or a retry after a crash) of a video over 6 MiB failed for
    ever."""
    await server.add_bucket(server.videos, public=True)
    first = await store.put(server.videos, "r/v.mp4", chunks(*video(OVER_ONE_CHUNK)), "video/mp4")
    second = await store.put(
        server.videos, "r/v.mp4", chunks(*video(OVER_ONE_CHUNK, "again")), "video/mp4"
    )
    assert first.sha256 != second.sha256 and first.url == second.url
    held = await server.object_bytes(server.videos, "r/v.mp4")
    assert held is not None and hashlib.sha256(held).hexdigest() == second.sha256


async def test_two_uploads_to_one_key_at_once_both_finish_and_the_last_wins(
    server: StorageServer,
) -> None:
    """The server locks per upload, not per object path: no 409 for the second writer."""
    await server.add_bucket(server.videos, public=True)
    stores = [SupabaseStore(server.url, server.service_key) for _ in range(2)]
    try:
        results = await asyncio.gather(
            *(
                store.put(
                    server.videos, "r/race.mp4", chunks(*video(OVER_ONE_CHUNK, salt)), "video/mp4"
                )
                for store, salt in zip(stores, "ab", strict=True)
            )
        )
    finally:
        for store in stores:
            await store.aclose()
    held = await server.object_bytes(server.videos, "r/race.mp4")
    assert held is not None
    assert hashlib.sha256(held).hexdigest() in {r.sha256 for r in results}


async def test_an_answer_lost_after_the_patch_landed_resumes_instead_of_restarting(
    server: StorageServer,
) -> None:
    """Issue 28, finding 3: a PATCH whose offset is no longer the server's answers 409
    "Upload-Offset conflict"; the store asks for the offset again (HEAD) and goes on,
    where it used to give up and start the whole upload over on the next attempt."""
    await server.add_bucket(server.videos, public=True)
    transport = Recording(twice=2)  # the second PATCH lands, its answer is lost, it is resent
    http = httpx.AsyncClient(transport=transport)
    store = SupabaseStore(server.url, server.service_key, http, tus_pauses=NO_PAUSES)
    parts = video(2 * TUS_CHUNK // CHUNK + 3)
    try:
        stored = await store.put(server.videos, "r/lost.mp4", chunks(*parts), "video/mp4")
    finally:
        await http.aclose()
    body = b"".join(parts)
    assert stored.sha256 == hashlib.sha256(body).hexdigest()
    assert await server.object_bytes(server.videos, "r/lost.mp4") == body
    assert transport.creates == 1  # one upload: never started over
    assert ("PATCH", 409) in transport.statuses and ("HEAD", 200) in transport.statuses


async def test_an_answer_lost_on_a_direct_connection_resumes_too(fake: FakeSupabaseStorage) -> None:
    """Without a gateway, an asyncio client sees a dropped connection where the server
    sent its early 409: a transport error on PATCH is a resume, never a restart."""
    fake.add_bucket(VIDEOS, public=True)
    fake.early_answers = "reset"
    transport = Recording(twice=2)
    http = httpx.AsyncClient(transport=transport)
    store = SupabaseStore(fake.url, fake.service_key, http, tus_pauses=NO_PAUSES)
    parts = video(2 * TUS_CHUNK // CHUNK + 3)
    try:
        stored = await store.put(VIDEOS, "r/lost.mp4", chunks(*parts), "video/mp4")
    finally:
        await http.aclose()
    assert stored.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert transport.creates == 1 and ("PATCH", 0) in transport.statuses
    assert ("PATCH", 409, "Upload-Offset conflict\n") in fake.tus_refusals


async def test_without_the_gateway_early_answers_are_dropped_and_the_store_resumes(
    server: StorageServer,
) -> None:
    """The same, against the storage API without its gateway: a real server's direct
    URL when one is given (only it shows the dropped connection for real), else the fake
    playing it."""
    if server.fake is not None:
        server.fake.early_answers = "reset"
    elif server.direct_url is None:
        pytest.skip("needs SORA_TEST_STORAGE_DIRECT_URL (a real server without its gateway)")
    await server.add_bucket(server.videos, public=True)
    transport = Recording(twice=2)
    http = httpx.AsyncClient(transport=transport)
    store = SupabaseStore(
        server.url, server.service_key, http, storage_url=server.direct_url, tus_pauses=NO_PAUSES
    )
    parts = video(2 * TUS_CHUNK // CHUNK + 3)
    try:
        stored = await store.put(server.videos, "r/direct.mp4", chunks(*parts), "video/mp4")
    finally:
        await http.aclose()
    assert stored.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert await server.object_bytes(server.videos, "r/direct.mp4") == b"".join(parts)
    assert transport.creates == 1


async def test_a_stale_offset_after_a_cut_is_asked_again(
    fake: FakeSupabaseStorage, fake_store: SupabaseStore
) -> None:
    """After a cut the server may still report the old offset on HEAD (it is finishing
    the cut request): the resumed PATCH gets 409 "Upload-Offset conflict", and a second
    HEAD the real offset. Issue 28: 2 of 28 cuts restarted the upload from byte 0."""
    fake.add_bucket(VIDEOS, public=True)
    parts = video(2 * TUS_CHUNK // CHUNK + 3)

    async def source() -> AsyncIterator[bytes]:
        for index, part in enumerate(parts):
            if index == TUS_CHUNK // CHUNK + 1:  # the second block is in flight
                fake.cut_next_patch(CHUNK + 999, stale_head=True)
            yield part

    stored = await fake_store.put(VIDEOS, "r/cut.mp4", source(), "video/mp4")
    assert stored.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    [upload] = fake.tus.values()
    assert fake.tus_received == len(b"".join(parts))  # no byte sent twice, none from 0
    assert ("PATCH", 409, "Upload-Offset conflict\n") in fake.tus_refusals
    assert upload.offset == upload.size


async def test_a_200_mb_upload_resumes_after_a_cut_connection() -> None:
    size = 200 * 1024 * 1024
    async with started(global_file_size_limit=2 * size) as fake:
        store = SupabaseStore(fake.url, fake.service_key, tus_pauses=NO_PAUSES)
        await store.ensure_buckets(default_bucket_specs(VIDEOS, IMAGES))
        expected = hashlib.sha256()

        async def generated() -> AsyncIterator[bytes]:
            for index in range(size // CHUNK):
                if index == (size // CHUNK) // 2:
                    fake.cut_next_patch(TUS_CHUNK // 3 + 12345)  # mid-chunk, mid-upload
                piece = pattern(index)
                expected.update(piece)
                yield piece

        try:
            stored = await store.put(VIDEOS, "rows/big.mp4", generated(), "video/mp4")
        finally:
            await store.aclose()

        assert stored.size == size and stored.sha256 == expected.hexdigest()
        assert fake.objects[f"{VIDEOS}/rows/big.mp4"].sha256() == expected.hexdigest()
        [upload] = fake.tus.values()
        chunks_needed = -(-size // TUS_CHUNK)
        assert upload.patches == chunks_needed + 1  # one PATCH re-sent after the cut
        # The resume sent only what the server lacked: no byte arrived twice.
        assert fake.tus_received == size < 2 * size
        assert fake.uploads == []


async def test_the_key_never_follows_an_upload_url_to_another_host(
    fake: FakeSupabaseStorage, fake_store: SupabaseStore
) -> None:
    fake.add_bucket(VIDEOS, public=True)
    fake.tus_location_base = "http://127.0.0.2:9"  # nothing listens: a send would fail
    with pytest.raises(StorageError, match="refusing to send the key there"):
        await fake_store.put(VIDEOS, "a.mp4", chunks(*video(OVER_ONE_CHUNK)), "video/mp4")


async def test_an_upload_url_without_the_gateway_prefix_still_reaches_the_server(
    fake: FakeSupabaseStorage, fake_store: SupabaseStore
) -> None:
    """Issue 28, finding 4: a self-hosted server without REQUEST_ALLOW_X_FORWARDED_PATH
    hands out upload URLs without /storage/v1, where the gateway answers 404; the store
    reported "Bucket 'hug-videos' does not exist". The upload id is the URL's last part:
    the store sends it under its own endpoint (and says so once)."""
    fake.add_bucket(VIDEOS, public=True)
    fake.forwarded_prefix = False
    parts = video(OVER_ONE_CHUNK)
    stored = await fake_store.put(VIDEOS, "r/p.mp4", chunks(*parts), "video/mp4")
    assert fake.objects[f"{VIDEOS}/r/p.mp4"].sha256() == stored.sha256


async def test_an_upload_the_server_lost_is_not_called_a_missing_bucket(
    fake: FakeSupabaseStorage, fake_store: SupabaseStore
) -> None:
    """A 404 from an upload URL ("The file for this url was not found") is a lost upload,
    to start again, not a bucket to create."""
    fake.add_bucket(VIDEOS, public=True)

    async def source() -> AsyncIterator[bytes]:
        for index, part in enumerate(video(OVER_ONE_CHUNK)):
            if index == TUS_CHUNK // CHUNK + 1:
                fake.tus.clear()  # the server forgot the upload (expired, cleaned up)
            yield part

    with pytest.raises(StorageError) as lost:
        await fake_store.put(VIDEOS, "r/l.mp4", source(), "video/mp4")
    assert "The file for this url was not found" in str(lost.value)
    assert "does not exist" not in str(lost.value) and str(lost.value).endswith("will retry.")


async def test_tus_refusals_are_clear_storage_errors(server: StorageServer) -> None:
    # The store does not know this bucket's limit (no ensure_buckets): the server's 413.
    await server.add_bucket(server.videos, public=True, file_size_limit=TUS_CHUNK + CHUNK)
    store = SupabaseStore(server.url, server.service_key)
    try:
        with pytest.raises(StorageError) as too_large:
            await store.put(server.videos, "a.mp4", chunks(*video(OVER_ONE_CHUNK)), "video/mp4")
    finally:
        await store.aclose()
    message = str(too_large.value)
    assert "HTTP 413" in message and "Maximum size exceeded" in message
    assert f"file_size_limit of bucket {server.videos!r}" in message
    assert "will retry" not in message and server.service_key not in message


async def test_a_server_that_lost_data_is_not_resumed_past_what_is_at_hand(
    fake: FakeSupabaseStorage, fake_store: SupabaseStore
) -> None:
    fake.add_bucket(VIDEOS, public=True)
    late = video(2 * TUS_CHUNK // CHUNK + 1)

    async def rewound() -> AsyncIterator[bytes]:
        for index, piece in enumerate(late):
            if index == TUS_CHUNK // CHUNK + 1:
                # The server comes back from a cut holding less than the chunk at hand.
                fake.cut_next_patch(CHUNK, rewind_to=0)
            yield piece

    with pytest.raises(StorageError) as behind:
        await fake_store.put(VIDEOS, "c.mp4", rewound(), "video/mp4")
    assert "the server holds 0 bytes" in str(behind.value)
    assert fake.service_key not in str(behind.value)


async def test_put_overwrites(server: StorageServer, store: SupabaseStore) -> None:
    await server.add_bucket(server.videos, public=True)
    await store.put(server.videos, "a.mp4", chunks(b"first"), "video/mp4")
    second = await store.put(server.videos, "a.mp4", chunks(b"sec", b"ond"), "video/mp4")
    assert await server.object_bytes(server.videos, "a.mp4") == b"second"
    assert (second.size, second.sha256) == (6, hashlib.sha256(b"second").hexdigest())


async def test_read_gives_the_object_back_and_missing_is_an_answer(
    server: StorageServer, store: SupabaseStore
) -> None:
    """What a retried archive asks before it gives up on a video: is it stored already?"""
    await server.add_bucket(server.videos, public=True)
    parts = video(OVER_ONE_CHUNK)
    stored = await store.put(server.videos, "r/v.mp4", chunks(*parts), "video/mp4")
    assert await measure(store, server.videos, "r/v.mp4") == stored
    async with store.read(server.videos, "r/v.mp4") as body:
        assert b"".join([part async for part in body]) == b"".join(parts)
    assert await measure(store, server.videos, "r/none.mp4") is None
    with pytest.raises(MissingObject):
        async with store.read(server.bucket("no-such-bucket"), "r/v.mp4"):
            pass
    wrong = SupabaseStore(server.url, "sb-wrong-key-4f1c9a")
    try:
        with pytest.raises(StorageError) as refused:  # cannot say: not "missing"
            await measure(wrong, server.videos, "r/v.mp4")
    finally:
        await wrong.aclose()
    assert not isinstance(refused.value, MissingObject)


async def test_delete_removes_the_object_and_a_missing_one_is_no_error(
    server: StorageServer, store: SupabaseStore
) -> None:
    """What `prune --apply` does to a Supabase bucket, through storage3's remove()."""
    await server.add_bucket(server.videos, public=True)
    await store.put(server.videos, "old.mp4", chunks(b"old"), "video/mp4")
    await store.put(server.videos, "new.mp4", chunks(b"new"), "video/mp4")
    await store.delete(server.videos, "old.mp4")
    await store.delete(server.videos, "old.mp4")  # already gone: prune may run twice
    assert await server.object_bytes(server.videos, "old.mp4") is None
    assert await server.object_bytes(server.videos, "new.mp4") == b"new"
    await store.delete(server.bucket("no-such-bucket"), "a.mp4")  # the server says nothing


@pytest.mark.parametrize(
    ("status", "http_status", "permanent"),
    [
        (500, None, False),
        (503, None, False),  # the real server sends it as HTTP 400 with "503" in the body
        (544, 544, False),  # database timeout
        (409, None, False),  # a conflict
        (429, None, False),
        (502, 502, False),  # a proxy in front
        (400, None, True),
        (415, None, True),
    ],
)
async def test_put_classifies_refusals(
    fake: FakeSupabaseStorage,
    fake_store: SupabaseStore,
    status: int,
    http_status: int | None,
    permanent: bool,
) -> None:
    fake.add_bucket(VIDEOS, public=True)
    fake.fail_uploads(2, status, http_status=http_status, message="try me")
    for _ in range(2):
        with pytest.raises(StorageError) as refused:
            await fake_store.put(VIDEOS, "a.mp4", chunks(b"mp4"), "video/mp4")
        assert ("will retry" in str(refused.value)) is not permanent
        assert f"status {status}" in str(refused.value) and "try me" in str(refused.value)
    await fake_store.put(VIDEOS, "a.mp4", chunks(b"mp4"), "video/mp4")  # the retry that works
    assert fake.objects[f"{VIDEOS}/a.mp4"].data == b"mp4"


async def test_put_into_a_missing_bucket_is_permanent(
    server: StorageServer, store: SupabaseStore
) -> None:
    nowhere = server.bucket("nowhere")
    for parts in ([b"mp4"], video(OVER_ONE_CHUNK)):  # standard and resumable
        with pytest.raises(StorageError) as refused:
            await store.put(nowhere, "a.mp4", chunks(*parts), "video/mp4")
        message = str(refused.value)
        assert "Bucket not found" in message and f"Bucket {nowhere!r} does not exist" in message
        assert "will retry" not in message


async def test_too_large_for_the_bucket_is_permanent_and_names_the_limit(
    server: StorageServer, store: SupabaseStore
) -> None:
    # Unknown to the store (no ensure_buckets): the server's refusal is what counts.
    await server.add_bucket(server.videos, public=True, file_size_limit=CHUNK)
    with pytest.raises(StorageError) as refused:
        await store.put(server.videos, "a.mp4", chunks(pattern(0), pattern(1)), "video/mp4")
    message = str(refused.value)
    assert "exceeded the maximum allowed size" in message and "file_size_limit" in message
    assert await server.object_bytes(server.videos, "a.mp4") is None


async def test_put_enforces_a_known_bucket_limit_while_streaming(
    server: StorageServer, store: SupabaseStore
) -> None:
    server.created(server.videos)
    await store.ensure_buckets({server.videos: BucketSpec(VIDEO_MIME_TYPES, 3 * CHUNK)})
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        index = 0
        while True:
            sent.append(index)
            yield pattern(index)
            index += 1

    with pytest.raises(StorageError) as refused:
        await store.put(server.videos, "a.mp4", endless(), "video/mp4")
    assert "(786,432 bytes)" in str(refused.value)
    assert len(sent) == 4  # stopped at the first chunk past the limit
    if server.fake is not None:
        assert server.fake.uploads == []  # refused while still buffering: nothing was sent
    assert await server.object_bytes(server.videos, "a.mp4") is None


@pytest.mark.parametrize("gateway_checks_apikey", [True, False])
async def test_wrong_key_is_transient_and_names_the_setting_not_the_key(
    server: StorageServer, gateway_checks_apikey: bool
) -> None:
    if server.fake is not None:
        server.fake.gateway_key_auth = gateway_checks_apikey
    elif gateway_checks_apikey:
        pytest.skip("the local gateway in front of the real server does not check apikey")
    await server.add_bucket(server.videos, public=True)
    secret = "sb-wrong-key-4f1c9a"
    store = SupabaseStore(server.url, secret)
    try:
        with pytest.raises(StorageError) as on_put:
            await store.put(server.videos, "a.mp4", chunks(b"mp4"), "video/mp4")
        with pytest.raises(StorageError) as on_setup:
            await store.ensure_buckets({server.videos: BucketSpec(VIDEO_MIME_TYPES)})
    finally:
        await store.aclose()
    for refused in (on_put.value, on_setup.value):
        assert "will retry" in str(refused)
        assert "SUPABASE_SERVICE_ROLE_KEY" in str(refused)
        assert secret not in str(refused) and secret not in repr(refused)
    assert secret not in repr(store)
    assert ("Invalid API key" if gateway_checks_apikey else "Invalid Compact JWS") in str(
        on_put.value
    )


async def test_unreachable_server_is_transient() -> None:
    async with started() as fake:
        url = fake.url
    store = SupabaseStore(url, "key")
    try:
        with pytest.raises(StorageError) as refused:
            await store.put(VIDEOS, "a.mp4", chunks(b"mp4"), "video/mp4")
        with pytest.raises(StorageError) as unread:
            await measure(store, VIDEOS, "a.mp4")
    finally:
        await store.aclose()
    for error in (refused.value, unread.value):
        assert "will retry" in str(error) and "unreachable" in str(error)
    assert not isinstance(unread.value, MissingObject)


async def test_a_failing_source_keeps_its_own_error(
    server: StorageServer, store: SupabaseStore
) -> None:
    await server.add_bucket(server.videos, public=True)

    class ProviderBroke(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield b"first part"
        raise ProviderBroke("download interrupted")

    with pytest.raises(ProviderBroke):
        await store.put(server.videos, "a.mp4", broken(), "video/mp4")
    if server.fake is not None:
        assert server.fake.uploads == []  # it broke while still buffering: nothing was sent
    assert await server.object_bytes(server.videos, "a.mp4") is None

    async def broken_later() -> AsyncIterator[bytes]:
        for index in range(TUS_CHUNK // CHUNK + 2):
            yield pattern(index)
        raise ProviderBroke("download interrupted")

    with pytest.raises(ProviderBroke):  # mid-TUS: still the provider's error
        await store.put(server.videos, "a.mp4", broken_later(), "video/mp4")
    if server.fake is not None:
        [upload] = server.fake.tus.values()
        assert upload.offset == TUS_CHUNK
    assert await server.object_bytes(server.videos, "a.mp4") is None


async def test_empty_source_uploads_nothing(
    fake: FakeSupabaseStorage, fake_store: SupabaseStore
) -> None:
    fake.add_bucket(VIDEOS, public=True)
    fake.objects[f"{VIDEOS}/a.mp4"] = FakeObject(b"good", "video/mp4", "no-cache")
    with pytest.raises(StorageError, match="empty object"):
        await fake_store.put(VIDEOS, "a.mp4", chunks(b"", b""), "video/mp4")
    assert fake.uploads == [] and fake.objects[f"{VIDEOS}/a.mp4"].data == b"good"


async def test_public_url_matches_storage3_and_keys_are_validated(
    server: StorageServer, store: SupabaseStore
) -> None:
    async with server.client() as client:
        official = await client.from_(VIDEOS).get_public_url("rows/a-1.mp4")
    assert store.public_url(VIDEOS, "rows/a-1.mp4") == official
    for bucket, key in [(VIDEOS, "../a.mp4"), (VIDEOS, "a b.mp4"), (VIDEOS, ""), ("Bad!", "a")]:
        with pytest.raises(StorageError, match="invalid"):
            store.public_url(bucket, key)


async def _eventually(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within about ten seconds."""
    for _ in range(10_000):
        if condition():
            return True
        await asyncio.sleep(0.001)
    return False
