"""How many rows per second can one worker move through every stage?

The provider is an in-process stand-in that accepts at once and finishes on the first
poll with a 64 KiB file, so what is measured is the worker itself: claims, checkpoints
(5 per row), polling, streaming into local storage, on real PostgreSQL.

    .venv/bin/python bench/pipeline.py                 # 1000 rows, concurrency 32
    .venv/bin/python bench/pipeline.py 5000 64
    .venv/bin/python bench/pipeline.py 200 32 same   # every row the same prompt
Uses DATABASE_URL if set (creates and drops a database there), else embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from service import logs
from service.daemon import Worker, WorkerOptions
from service.fetch import Limits
from service.local.embedded import start_embedded_postgres
from service.machine import Policy
from service.migrations import migrate
from service.providers.base import ProviderJob, VideoRequest
from service.providers.lookup import Providers
from service.repository import PostgresRepository
from service.steps import Defaults, Steps
from service.storage.local import LocalStore
from service.wakeups.listen import Listener
from service.wakeups.wakeup import Wakeup

PAYLOAD = b"\x00" * (64 * 1024)


class InstantProvider:
    name = "openai"

    def validate(self, model: str, size: str, seconds: str) -> None:
        return None

    async def submit(self, request: VideoRequest) -> ProviderJob:
        return ProviderJob(
            id=f"video_{uuid.uuid4().hex}", status="queued", progress=0, raw_status="queued"
        )

    submit_timeout = timedelta(seconds=60)

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        return []

    async def retrieve(self, job_id: str) -> ProviderJob:
        return ProviderJob(
            id=job_id,
            status="completed",
            progress=100,
            raw_status="completed",
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )

    @asynccontextmanager
    async def download(
        self, job_id: str, variant: str = "video"
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            yield PAYLOAD

        yield chunks()

    def content_url(self, job_id: str) -> str:
        return f"http://instant/{job_id}"

    async def aclose(self) -> None:
        return None


async def main(rows: int, concurrency: int, same_prompt: bool) -> None:
    logs.configure("console", "warning")
    with tempfile.TemporaryDirectory() as scratch:
        server = os.environ.get("DATABASE_URL") or start_embedded_postgres(Path(scratch))
        name = f"sora_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(server)
        await admin.execute(f'create database "{name}"')
        dsn = urlunsplit(urlsplit(server)._replace(path="/" + name))
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=concurrency + 4)
        async with pool.acquire() as conn:
            await migrate(conn)
        repo = PostgresRepository(pool, "bench", timedelta(seconds=30))
        providers = Providers(default="openai")
        providers.add(InstantProvider())
        steps = Steps(
            providers,
            LocalStore(Path(scratch) / "store", "http://bench"),
            defaults=Defaults("sora-2", "720x1280", "4"),
            video_bucket="hug-videos",
            photo_limits=Limits(1_000_000, 5.0),
            ledger=repo,
        )
        policy = Policy(
            timedelta(milliseconds=1), 3, timedelta(milliseconds=10), timedelta(seconds=1)
        )
        worker = Worker(
            repo,
            steps,
            WorkerOptions(concurrency, 5.0, 30.0, 10.0, policy),
            listener=Listener(dsn, Wakeup()),
        )
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.listener.connected.wait(), 10)  # type: ignore[union-attr]
        started = time.perf_counter()
        await pool.executemany(
            "insert into videos (prompt) values ($1)",
            [("two people hug" if same_prompt else f"row {i}",) for i in range(rows)],
        )
        while await pool.fetchval("select count(*) from videos where status <> 'completed'"):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        worker.stop()
        await task
        latencies = [
            r[0]
            for r in await pool.fetch(
                "select extract(epoch from completed_at - created_at) from videos"
            )
        ]
        await pool.close()
        await admin.execute(f'drop database "{name}" with (force)')
        await admin.close()
    q = statistics.quantiles(latencies, n=100)
    print(
        f"rows={rows} concurrency={concurrency} same_prompt={same_prompt}: "
        f"{rows / elapsed:,.0f} rows/s "
        f"({5 * rows / elapsed:,.0f} checkpoints/s), insert->completed "
        f"p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, total {elapsed:.1f} s"
    )


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    width = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    asyncio.run(main(count, width, len(sys.argv) > 3 and sys.argv[3] == "same"))
