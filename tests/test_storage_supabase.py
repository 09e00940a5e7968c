"""Supabase Storage: the fake proves itself with the official client, then the store runs on it.

The first tests drive ``storage3`` (unchanged, default settings) against the fake, so
that the fake's answers are the ones the real API gives to real clients. The rest
exercise ``SupabaseStore`` end to end over HTTP: bucket setup, streamed uploads,
and how every kind of refusal is classified for the worker's retry policy.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from service.storage.base import StorageError
from service.storage.supabase import (
    IMAGE_MIME_TYPES,
    TUS_CHUNK,
    VIDEO_MIME_TYPES,
    BucketSpec,
    SupabaseStore,
    default_bucket_specs,
)
from tests.fakes.supabase_storage import FakeObject, FakeSupabaseStorage, started

VIDEOS, IMAGES = "hug-videos", "hug-images"
CHUNK = 256 * 1024


@pytest.fixture
async def fake() -> AsyncIterator[FakeSupabaseStorage]:
    async with started() as fake:
        yield fake


@pytest.fixture
async def store(fake: FakeSupabaseStorage) -> AsyncIterator[SupabaseStore]:
    store = SupabaseStore(fake.url, fake.service_key)
    yield store
    await store.aclose()


def official_client(fake: FakeSupabaseStorage, key: str) -> AsyncStorageClient:
    """storage3 exactly as supabase-py builds it: base URL and the two auth headers."""
    return AsyncStorageClient(
        f"{fake.url}/storage/v1/", {"apikey": key, "Authorization": f"Bearer {key}"}
    )


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def pattern(index: int) -> bytes:
    """A distinct 256 KiB chunk, made only when asked for."""
    return hashlib.sha256(str(index).encode()).digest() * (CHUNK // 32)


# ------------------------------------------------------- the fake, via storage3


async def test_official_client_works_against_the_fake(fake: FakeSupabaseStorage) -> None:
    async with official_client(fake, fake.service_key) as client:
        created = await client.create_bucket(
            "avatars",
            options={"public": True, "allowed_mime_types": ["image/png"], "file_size_limit": 1000},
        )
        assert created == {"name": "avatars"}
        bucket = await client.get_bucket("avatars")
        assert (bucket.id, bucket.public, bucket.file_size_limit) == ("avatars", True, 1000)
        assert bucket.allowed_mime_types == ["image/png"]
        assert [b.id for b in await client.list_buckets()] == ["avatars"]

        files = client.from_("avatars")
        uploaded = await files.upload("cats/tom.png", b"png-1", {"content-type": "image/png"})
        assert uploaded.full_path == "avatars/cats/tom.png"
        with pytest.raises(StorageApiError) as duplicate:
            await files.upload("cats/tom.png", b"png-2", {"content-type": "image/png"})
        assert (duplicate.value.status, duplicate.value.code) == ("409", "Duplicate")
        await files.upload(
            "cats/tom.png", b"png-2", {"content-type": "image/png", "upsert": "true"}
        )

        url = await files.get_public_url("cats/tom.png")
        assert url == f"{fake.url}/storage/v1/object/public/avatars/cats/tom.png"
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
            await client.get_bucket("nope")
        assert (missing.value.status, missing.value.message) == ("404", "Bucket not found")

        await client.update_bucket("avatars", {"public": False})
        async with httpx.AsyncClient() as http:
            private = await http.get(url)
        assert private.status_code == 400 and private.json()["statusCode"] == "404"
    assert all(u.multipart and not u.chunked for u in fake.uploads)


async def test_anon_key_reads_public_objects_but_cannot_write(fake: FakeSupabaseStorage) -> None:
    fake.add_bucket(VIDEOS, public=True)
    async with official_client(fake, fake.service_key) as admin:
        await admin.from_(VIDEOS).upload("a.mp4", b"mp4", {"content-type": "video/mp4"})
    async with official_client(fake, fake.anon_key) as anon:
        with pytest.raises(StorageApiError) as upload:
            await anon.from_(VIDEOS).upload("b.mp4", b"mp4", {"content-type": "video/mp4"})
        assert upload.value.status == "403"
        assert upload.value.message == "new row violates row-level security policy"
        with pytest.raises(StorageApiError) as create:
            await anon.create_bucket("mine", options={"public": True})
        assert create.value.status == "403"
        assert await anon.list_buckets() == []
    async with httpx.AsyncClient() as http:
        served = await http.get(f"{fake.url}/storage/v1/object/public/{VIDEOS}/a.mp4")
    assert served.content == b"mp4"
    assert set(fake.objects) == {f"{VIDEOS}/a.mp4"} and "mine" not in fake.buckets

    anon_store = SupabaseStore(fake.url, fake.anon_key)
    try:
        with pytest.raises(StorageError) as refused:
            await anon_store.put(VIDEOS, "c.mp4", chunks(b"mp4"), "video/mp4")
    finally:
        await anon_store.aclose()
    assert "will retry" in str(refused.value)  # a configuration problem: fix the key, then retry
    assert "SUPABASE_SERVICE_ROLE_KEY" in str(refused.value)
    assert "row-level security" in str(refused.value)


# ------------------------------------------------------------------ buckets


async def test_ensure_buckets_creates_public_buckets_once(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    specs = default_bucket_specs(VIDEOS, IMAGES, video_size_limit=40_000_000)
    await store.ensure_buckets(specs)
    videos, images = fake.buckets[VIDEOS], fake.buckets[IMAGES]
    assert videos.public and images.public
    assert videos.allowed_mime_types == list(VIDEO_MIME_TYPES) == ["video/mp4", "image/webp"]
    assert images.allowed_mime_types == list(IMAGE_MIME_TYPES)
    assert (videos.file_size_limit, images.file_size_limit) == (40_000_000, None)

    before = (videos.created_at, videos.updated_at)
    await store.ensure_buckets(specs)
    assert len(fake.buckets) == 2
    assert (fake.buckets[VIDEOS].created_at, fake.buckets[VIDEOS].updated_at) == before


async def test_ensure_buckets_accepts_existing_public_buckets_with_wildcards(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    fake.add_bucket(VIDEOS, public=True, allowed_mime_types=["video/*", "image/*"])
    fake.add_bucket(IMAGES, public=True)  # no list: everything allowed
    await store.ensure_buckets(default_bucket_specs(VIDEOS, IMAGES))


async def test_ensure_buckets_refuses_a_private_bucket_without_changing_it(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    fake.add_bucket(VIDEOS, public=False)
    with pytest.raises(StorageError) as refused:
        await store.ensure_buckets({VIDEOS: BucketSpec(VIDEO_MIME_TYPES)})
    message = str(refused.value)
    assert f"{VIDEOS!r} exists but is private" in message
    assert f"update storage.buckets set public = true where id = '{VIDEOS}'" in message
    assert not fake.buckets[VIDEOS].public


async def test_ensure_buckets_refuses_a_bucket_that_rejects_our_types(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    fake.add_bucket(VIDEOS, public=True, allowed_mime_types=["video/mp4"])
    with pytest.raises(StorageError) as refused:
        await store.ensure_buckets({VIDEOS: BucketSpec(VIDEO_MIME_TYPES)})
    assert "does not accept image/webp" in str(refused.value)


async def test_ensure_buckets_names_the_global_limit_when_a_bucket_limit_exceeds_it(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    too_big = BucketSpec(VIDEO_MIME_TYPES, fake.global_file_size_limit + 1)
    with pytest.raises(StorageError) as refused:
        await store.ensure_buckets({VIDEOS: too_big})
    assert "global upload limit" in str(refused.value)


# ------------------------------------------------------------------ uploads


async def test_put_sends_a_small_object_in_one_standard_upload(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    await store.ensure_buckets(default_bucket_specs(VIDEOS, IMAGES))
    count = TUS_CHUNK // CHUNK  # exactly one chunk: still the standard upload
    stored = await store.put(
        VIDEOS, "rows/clip.mp4", chunks(*(pattern(i) for i in range(count))), "video/mp4"
    )

    body = b"".join(pattern(i) for i in range(count))
    assert stored.size == len(body) == TUS_CHUNK
    assert stored.sha256 == hashlib.sha256(body).hexdigest()
    assert stored.url == f"{fake.url}/storage/v1/object/public/{VIDEOS}/rows/clip.mp4"
    [upload] = fake.uploads
    assert upload.content_length == len(body) and not upload.multipart
    assert upload.method == "POST" and upload.upsert
    assert fake.tus == {}
    async with httpx.AsyncClient() as http:
        served = await http.get(stored.url)
    assert served.status_code == 200 and served.content == body
    assert served.headers["content-type"] == "video/mp4"
    assert served.headers["cache-control"] == "max-age=31536000"


async def test_put_streams_a_large_object_through_tus_chunk_by_chunk(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    await store.ensure_buckets(default_bucket_specs(VIDEOS, IMAGES))
    count = TUS_CHUNK // CHUNK + 6

    async def lazily() -> AsyncIterator[bytes]:
        for index in range(count - 1):
            yield pattern(index)
        # The first 6 MiB chunk must already be on the server: nothing waits for the end.
        assert await _eventually(lambda: fake.tus_received == TUS_CHUNK)
        yield pattern(count - 1)

    stored = await store.put(VIDEOS, "rows/clip.mp4", lazily(), "video/mp4")

    body = b"".join(pattern(i) for i in range(count))
    assert stored.size == len(body) and stored.sha256 == hashlib.sha256(body).hexdigest()
    assert fake.uploads == []
    [upload] = fake.tus.values()
    assert (upload.size, upload.offset, upload.patches) == (len(body), len(body), 2)
    assert upload.upsert and upload.content_type == "video/mp4"
    async with httpx.AsyncClient() as http:
        served = await http.get(stored.url)
    assert served.content == body
    assert served.headers["cache-control"] == "max-age=31536000"


async def test_a_200_mb_upload_resumes_after_a_cut_connection() -> None:
    size = 200 * 1024 * 1024
    async with started(global_file_size_limit=2 * size) as fake:
        store = SupabaseStore(fake.url, fake.service_key)
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
    fake: FakeSupabaseStorage,
) -> None:
    fake.add_bucket(VIDEOS, public=True)
    fake.tus_location_base = "http://127.0.0.2:9"  # nothing listens: a send would fail
    store = SupabaseStore(fake.url, fake.service_key)
    big = [pattern(i) for i in range(TUS_CHUNK // CHUNK + 1)]
    try:
        with pytest.raises(StorageError, match="refusing to send the key there"):
            await store.put(VIDEOS, "a.mp4", chunks(*big), "video/mp4")
    finally:
        await store.aclose()


async def test_tus_refusals_are_clear_storage_errors(fake: FakeSupabaseStorage) -> None:
    # The store does not know this bucket's limit (no ensure_buckets): the server's 413.
    fake.add_bucket(VIDEOS, public=True, file_size_limit=TUS_CHUNK + CHUNK)
    store = SupabaseStore(fake.url, fake.service_key)
    big = [pattern(i) for i in range(TUS_CHUNK // CHUNK + 4)]
    try:
        with pytest.raises(StorageError) as too_large:
            await store.put(VIDEOS, "a.mp4", chunks(*big), "video/mp4")
        assert "HTTP 413" in str(too_large.value) and "Maximum size exceeded" in str(
            too_large.value
        )
        assert "file_size_limit of bucket 'hug-videos'" in str(too_large.value)
        assert "will retry" not in str(too_large.value)

        fake.hold_path(VIDEOS, "b.mp4")
        with pytest.raises(StorageError) as locked:
            await store.put(VIDEOS, "b.mp4", chunks(*big[:-3]), "video/mp4")
        assert "status 409" in str(locked.value) and "Another upload" in str(locked.value)
        assert str(locked.value).endswith("will retry.")

        # The server comes back from a cut holding less than the chunk still at hand.
        fake.cut_next_patch(CHUNK, rewind_to=0)
        late = [pattern(i) for i in range(2 * TUS_CHUNK // CHUNK + 1)]
        state = iter(range(len(late)))

        async def rewound() -> AsyncIterator[bytes]:
            for piece in late:
                if next(state) == TUS_CHUNK // CHUNK + 1:
                    fake.cut_next_patch(CHUNK, rewind_to=0)
                yield piece

        fake.buckets[VIDEOS].file_size_limit = None
        fake._cut_after = None
        with pytest.raises(StorageError) as behind:
            await store.put(VIDEOS, "c.mp4", rewound(), "video/mp4")
        assert "the server holds 0 bytes" in str(behind.value)
        for error in (too_large.value, locked.value, behind.value):
            assert fake.service_key not in str(error)
    finally:
        await store.aclose()


async def test_put_overwrites(fake: FakeSupabaseStorage, store: SupabaseStore) -> None:
    fake.add_bucket(VIDEOS, public=True)
    await store.put(VIDEOS, "a.mp4", chunks(b"first"), "video/mp4")
    second = await store.put(VIDEOS, "a.mp4", chunks(b"sec", b"ond"), "video/mp4")
    assert fake.objects[f"{VIDEOS}/a.mp4"].data == b"second"
    assert (second.size, second.sha256) == (6, hashlib.sha256(b"second").hexdigest())


async def test_delete_removes_the_object_and_a_missing_one_is_no_error(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    """What `prune --apply` does to a Supabase bucket, through storage3's remove()."""
    fake.add_bucket(VIDEOS, public=True)
    await store.put(VIDEOS, "old.mp4", chunks(b"old"), "video/mp4")
    await store.put(VIDEOS, "new.mp4", chunks(b"new"), "video/mp4")
    await store.delete(VIDEOS, "old.mp4")
    await store.delete(VIDEOS, "old.mp4")  # already gone: prune may run twice
    assert set(fake.objects) == {f"{VIDEOS}/new.mp4"}
    with pytest.raises(StorageError, match="Bucket not found"):
        await store.delete("no-such-bucket", "a.mp4")


@pytest.mark.parametrize(
    ("status", "http_status", "permanent"),
    [
        (500, None, False),
        (503, None, False),  # the real server sends it as HTTP 400 with "503" in the body
        (544, 544, False),  # database timeout
        (409, None, False),  # another writer holds the key
        (429, None, False),
        (502, 502, False),  # a proxy in front
        (400, None, True),
        (415, None, True),
    ],
)
async def test_put_classifies_refusals(
    fake: FakeSupabaseStorage,
    store: SupabaseStore,
    status: int,
    http_status: int | None,
    permanent: bool,
) -> None:
    fake.add_bucket(VIDEOS, public=True)
    fake.fail_uploads(2, status, http_status=http_status, message="try me")
    for _ in range(2):
        with pytest.raises(StorageError) as refused:
            await store.put(VIDEOS, "a.mp4", chunks(b"mp4"), "video/mp4")
        assert ("will retry" in str(refused.value)) is not permanent
        assert f"status {status}" in str(refused.value) and "try me" in str(refused.value)
    await store.put(VIDEOS, "a.mp4", chunks(b"mp4"), "video/mp4")  # the retry that works
    assert fake.objects[f"{VIDEOS}/a.mp4"].data == b"mp4"


async def test_put_into_a_missing_bucket_is_permanent(store: SupabaseStore) -> None:
    with pytest.raises(StorageError) as refused:
        await store.put("nowhere", "a.mp4", chunks(b"mp4"), "video/mp4")
    assert "Bucket not found" in str(refused.value) and "'nowhere'" in str(refused.value)


async def test_too_large_for_the_bucket_is_permanent_and_names_the_limit(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    # Unknown to the store (no ensure_buckets): the server's refusal is what counts.
    fake.add_bucket(VIDEOS, public=True, file_size_limit=CHUNK)
    with pytest.raises(StorageError) as refused:
        await store.put(VIDEOS, "a.mp4", chunks(pattern(0), pattern(1)), "video/mp4")
    message = str(refused.value)
    assert "exceeded the maximum allowed size" in message and "file_size_limit" in message
    assert f"{VIDEOS}/a.mp4" not in fake.objects


async def test_put_enforces_a_known_bucket_limit_while_streaming(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    await store.ensure_buckets({VIDEOS: BucketSpec(VIDEO_MIME_TYPES, 3 * CHUNK)})
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        index = 0
        while True:
            sent.append(index)
            yield pattern(index)
            index += 1

    with pytest.raises(StorageError) as refused:
        await store.put(VIDEOS, "a.mp4", endless(), "video/mp4")
    assert "(786,432 bytes)" in str(refused.value)
    assert len(sent) == 4  # stopped at the first chunk past the limit
    assert fake.uploads == []  # refused while still buffering: nothing was sent
    assert f"{VIDEOS}/a.mp4" not in fake.objects


@pytest.mark.parametrize("gateway_checks_apikey", [True, False])
async def test_wrong_key_is_transient_and_names_the_setting_not_the_key(
    fake: FakeSupabaseStorage, gateway_checks_apikey: bool
) -> None:
    fake.gateway_key_auth = gateway_checks_apikey
    fake.add_bucket(VIDEOS, public=True)
    secret = "sb-wrong-key-4f1c9a"
    store = SupabaseStore(fake.url, secret)
    try:
        with pytest.raises(StorageError) as on_put:
            await store.put(VIDEOS, "a.mp4", chunks(b"mp4"), "video/mp4")
        with pytest.raises(StorageError) as on_setup:
            await store.ensure_buckets({VIDEOS: BucketSpec(VIDEO_MIME_TYPES)})
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
    finally:
        await store.aclose()
    assert "will retry" in str(refused.value) and "unreachable" in str(refused.value)


async def test_a_failing_source_keeps_its_own_error(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    fake.add_bucket(VIDEOS, public=True)

    class ProviderBroke(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield b"first part"
        raise ProviderBroke("download interrupted")

    with pytest.raises(ProviderBroke):
        await store.put(VIDEOS, "a.mp4", broken(), "video/mp4")
    assert fake.uploads == []  # it broke while still buffering: nothing was sent
    assert f"{VIDEOS}/a.mp4" not in fake.objects

    async def broken_later() -> AsyncIterator[bytes]:
        for index in range(TUS_CHUNK // CHUNK + 2):
            yield pattern(index)
        raise ProviderBroke("download interrupted")

    with pytest.raises(ProviderBroke):  # mid-TUS: still the provider's error
        await store.put(VIDEOS, "a.mp4", broken_later(), "video/mp4")
    [upload] = fake.tus.values()
    assert upload.offset == TUS_CHUNK and f"{VIDEOS}/a.mp4" not in fake.objects


async def test_empty_source_uploads_nothing(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    fake.add_bucket(VIDEOS, public=True)
    fake.objects[f"{VIDEOS}/a.mp4"] = FakeObject(b"good", "video/mp4", "no-cache")
    with pytest.raises(StorageError, match="empty object"):
        await store.put(VIDEOS, "a.mp4", chunks(b"", b""), "video/mp4")
    assert fake.uploads == [] and fake.objects[f"{VIDEOS}/a.mp4"].data == b"good"


async def test_public_url_matches_storage3_and_keys_are_validated(
    fake: FakeSupabaseStorage, store: SupabaseStore
) -> None:
    async with official_client(fake, fake.service_key) as client:
        official = await client.from_(VIDEOS).get_public_url("rows/a-1.mp4")
    assert store.public_url(VIDEOS, "rows/a-1.mp4") == official
    for bucket, key in [(VIDEOS, "../a.mp4"), (VIDEOS, "a b.mp4"), (VIDEOS, ""), ("Bad!", "a")]:
        with pytest.raises(StorageError, match="invalid"):
            store.public_url(bucket, key)


async def _eventually(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` holds within about two seconds."""
    for _ in range(2000):
        if condition():
            return True
        await asyncio.sleep(0.001)
    return False
