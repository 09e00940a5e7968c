"""Local storage: streamed in, hashed on the way, served over HTTP like Supabase's."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.local.storage_server import StorageServer
from service.storage.base import StorageError
from service.storage.local import LocalStore


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_put_streams_hashes_and_serves_with_ranges(tmp_path: Path) -> None:
    server = StorageServer(tmp_path)
    await server.start()
    base_url = f"http://127.0.0.1:{server.port}"
    try:
        store = LocalStore(tmp_path, base_url)
        parts = [bytes([n]) * 100_000 for n in range(10)]
        stored = await store.put("hug-videos", "a/b.mp4", chunks(*parts), "video/mp4")
        body = b"".join(parts)
        assert stored.size == len(body)
        assert stored.sha256 == hashlib.sha256(body).hexdigest()
        assert stored.url == f"{base_url}/storage/v1/object/public/hug-videos/a/b.mp4"
        async with httpx.AsyncClient() as http:
            full = await http.get(stored.url)
            assert full.content == body and full.headers["content-type"] == "video/mp4"
            part = await http.get(stored.url, headers={"Range": "bytes=100-199"})
            assert part.status_code == 206 and part.content == body[100:200]
            assert (await http.get(stored.url.replace("b.mp4", "c.mp4"))).status_code == 404
    finally:
        await server.stop()


async def test_a_second_put_replaces_the_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "http://x")
    await store.put("hug-videos", "v.mp4", chunks(b"old"), "video/mp4")
    stored = await store.put("hug-videos", "v.mp4", chunks(b"new!"), "video/mp4")
    assert (tmp_path / "hug-videos" / "v.mp4").read_bytes() == b"new!"
    assert stored.size == 4


async def test_a_failed_stream_leaves_no_object_and_no_partial_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "http://x")

    async def broken() -> AsyncIterator[bytes]:
        yield b"some bytes"
        raise ConnectionResetError("provider hung up")

    with pytest.raises(ConnectionResetError):
        await store.put("hug-videos", "v.mp4", broken(), "video/mp4")
    assert list((tmp_path / "hug-videos").iterdir()) == []


@pytest.mark.parametrize("key", ["../escape.mp4", "a/../../b", "/abs.mp4", "a//b", ".hidden"])
async def test_keys_that_could_escape_the_root_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path, "http://x")
    with pytest.raises(StorageError):
        await store.put("hug-videos", key, chunks(b"x"), "video/mp4")


async def test_paths_that_could_escape_are_not_served(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("no")
    server = StorageServer(tmp_path)
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            response = await http.get(
                f"http://127.0.0.1:{server.port}/storage/v1/object/public/hug-videos/..%2F..%2Fsecret.txt"
            )
            assert response.status_code in (400, 404)
            assert response.content != b"no"
    finally:
        await server.stop()


def test_stale_partial_files_from_a_killed_worker_are_removed(tmp_path: Path) -> None:
    import os
    import time

    from service.storage.local import remove_stale_partials

    bucket = tmp_path / "hug-videos"
    bucket.mkdir()
    stale, live, done = bucket / ".a.mp4.1.part", bucket / ".b.mp4.2.part", bucket / "c.mp4"
    for path in (stale, live, done):
        path.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(done, (old, old))
    assert remove_stale_partials(tmp_path, 3600) == 1
    assert not stale.exists() and live.exists() and done.exists()
