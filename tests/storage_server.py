"""Where the storage tests send their requests: our fake, or a real supabase/storage.

By default every test runs against ``tests/fakes/supabase_storage.py``, so ``make test``
needs no network, Node or Docker. Set ``SORA_TEST_SUPABASE_URL`` (the project URL:
the gateway that serves ``/storage/v1``) with ``SORA_TEST_SUPABASE_SERVICE_KEY`` and
``SORA_TEST_SUPABASE_ANON_KEY`` to run the same tests against a real server instead,
such as the one ``scripts/real-storage.sh`` builds and starts::

    eval "$(scripts/real-storage.sh env)"
    .venv/bin/python -m pytest tests/test_storage_supabase.py tests/test_storage_wire.py \
        tests/test_archive_checkpoint.py

``SORA_TEST_STORAGE_DIRECT_URL`` (the storage API itself, no gateway and no
``/storage/v1`` prefix) adds the direct-connection variants, and
``SORA_TEST_SUPABASE_FILE_SIZE_LIMIT`` says the server's global limit (default: its
``FILE_SIZE_LIMIT``, 500 MiB, as ``real-storage.sh`` sets it).

On a real server every test makes buckets of its own (a random suffix on the usual
names), so tests running side by side never meet, and removes them afterwards. Tests
that need to break the server on purpose (cut connections, injected refusals, request
logs) take the ``fake`` fixture and always run against the fake.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError
from storage3.types import CreateOrUpdateBucketOptions

from tests.fakes.supabase_storage import FakeSupabaseStorage, started

URL_VARIABLE = "SORA_TEST_SUPABASE_URL"
REAL_LIMIT = 500 * 1024 * 1024


def real_server_url() -> str | None:
    """The real server's project URL, if the tests are pointed at one."""
    return os.environ.get(URL_VARIABLE) or None


@dataclass
class StorageServer:
    """One test's view of a Storage server: where it is, its keys, its buckets."""

    url: str
    service_key: str
    anon_key: str
    global_limit: int
    fake: FakeSupabaseStorage | None
    direct_url: str | None = None
    """The storage API without a gateway (``/upload/resumable`` at its root), if known."""
    suffix: str = ""
    made: list[str] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return self.fake is None

    def bucket(self, base: str) -> str:
        """A bucket name for this test: ``base`` on the fake, ``base-<random>`` on a server."""
        return f"{base}{self.suffix}"

    @property
    def videos(self) -> str:
        return self.bucket("hug-videos")

    @property
    def images(self) -> str:
        return self.bucket("hug-images")

    def client(self, key: str | None = None) -> AsyncStorageClient:
        """storage3 exactly as supabase-py builds it: base URL and the two auth headers."""
        key = key or self.service_key
        return AsyncStorageClient(
            f"{self.url}/storage/v1/", {"apikey": key, "Authorization": f"Bearer {key}"}
        )

    async def add_bucket(
        self,
        name: str,
        *,
        public: bool = False,
        file_size_limit: int | None = None,
        allowed_mime_types: list[str] | None = None,
    ) -> None:
        """A bucket made as an owner would (the dashboard, or the API)."""
        if self.fake is not None:
            self.fake.add_bucket(
                name,
                public=public,
                file_size_limit=file_size_limit,
                allowed_mime_types=allowed_mime_types,
            )
            return
        options: CreateOrUpdateBucketOptions = {"public": public}
        if file_size_limit is not None:
            options["file_size_limit"] = file_size_limit
        if allowed_mime_types is not None:
            options["allowed_mime_types"] = allowed_mime_types
        self.made.append(name)
        async with self.client() as client:
            await client.create_bucket(name, options=options)

    def created(self, name: str) -> None:
        """Remember a bucket the code under test made, to remove it afterwards."""
        self.made.append(name)

    async def object_bytes(self, bucket: str, key: str) -> bytes | None:
        """What the server holds at ``bucket/key`` (read with the service key), or None."""
        async with httpx.AsyncClient(timeout=60) as http:
            answer = await http.get(
                f"{self.url}/storage/v1/object/authenticated/{bucket}/{key}",
                headers={"apikey": self.service_key, "Authorization": f"Bearer {self.service_key}"},
            )
        if answer.status_code == 200:
            return answer.content
        assert answer.json()["statusCode"] == "404", answer.text
        return None

    async def remove_buckets(self) -> None:
        """Empty and delete the buckets this test made on a real server."""
        if self.fake is not None:
            return
        async with self.client() as client:
            for name in dict.fromkeys(self.made):
                with contextlib.suppress(StorageApiError):
                    await client.empty_bucket(name)
                with contextlib.suppress(StorageApiError):
                    await client.delete_bucket(name)


@asynccontextmanager
async def storage_server(
    *, global_file_size_limit: int | None = None
) -> AsyncIterator[StorageServer]:
    """The server the environment names, else a fresh fake (with this global limit)."""
    url = real_server_url()
    if url is None:
        kwargs = (
            {}
            if global_file_size_limit is None
            else {"global_file_size_limit": global_file_size_limit}
        )
        async with started(**kwargs) as fake:
            yield StorageServer(
                fake.url, fake.service_key, fake.anon_key, fake.global_file_size_limit, fake
            )
        return
    limit = int(os.environ.get("SORA_TEST_SUPABASE_FILE_SIZE_LIMIT", REAL_LIMIT))
    server = StorageServer(
        url.rstrip("/"),
        os.environ["SORA_TEST_SUPABASE_SERVICE_KEY"],
        os.environ["SORA_TEST_SUPABASE_ANON_KEY"],
        limit,
        None,
        direct_url=os.environ.get("SORA_TEST_STORAGE_DIRECT_URL") or None,
        suffix=f"-{secrets.token_hex(4)}",
    )
    try:
        yield server
    finally:
        await server.remove_buckets()
