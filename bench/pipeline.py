"""How many rows per second can one worker move through every stage?

The provider is an in-process stand-in that accepts at once and finishes on the first
poll with a 64 KiB file, so what is measured is the worker itself: claims, checkpoints,
polling, streaming into local storage, on real PostgreSQL. (``make bench`` runs this
beside PgQueuer; see bench/run.py.)

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
from service.core.job import Policy
from service.core.request import VideoRequest
from service.database.migrations import migrate
from service.database.postgres import PostgresRepository
from service.local.embedded import start_embedded_postgres
from service.local.simulator.media import render_mp4
from service.media.fetch import Limits
from service.providers.base import ProviderJob
from service.providers.lookup import Providers
from service.runtime import keep_session
from service.storage.local import LocalStore
from service.wakeups.listen import Listener
from service.worker.daemon import Worker, WorkerOptions
from service.worker.steps import Defaults, Steps

PAYLOAD = render_mp4(320, 180, 1, prompt="bench", reference=None, seed="bench")
"""A real (small) MP4, so each row pays what a real one does after archiving: the media
probe and the poster, not a quick refusal of bytes that are no video."""


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


def instant_steps(repo: PostgresRepository, scratch: Path, provider: object = None) -> Steps:
    providers = Providers(default="openai")
    providers.add(provider or InstantProvider())  # type: ignore[arg-type]
    return Steps(
        providers,
        LocalStore(scratch / "store", "http://bench"),
        defaults=Defaults("sora-2", "720x1280", "4"),
        video_bucket="hug-videos",
        photo_limits=Limits(1_000_000, 5.0),
        ledger=repo,
    )


class Statements:
    """What the worker's pool sent, by kind: its round trips to the database."""

    def __init__(self) -> None:
        self.total = 0
        self.claims = 0
        self.checkpoints = 0

    def __call__(self, record: asyncpg.connection.LoggedQuery) -> None:
        self.total += 1
        text = record.query.lstrip()
        if text.startswith("with fresh as"):
            self.claims += 1
        elif text.startswith("update public.videos set stage"):
            self.checkpoints += 1


async def open_pool(dsn: str, size: int, statements: Statements | None = None) -> asyncpg.Pool:
    """A pool as the worker opens one (no reset query on release), its statements counted."""

    async def count(conn: asyncpg.Connection) -> None:
        if statements is not None:
            conn.add_query_logger(statements)

    return await asyncpg.create_pool(dsn, min_size=2, max_size=size, reset=keep_session, init=count)


async def allow_bench_model(pool: asyncpg.Pool) -> None:
    """Let rows name the bench's stand-in model: rows name only allowed models (sql/0011),
    and one the registry does not know is allowed as an operator would allow it."""
    await pool.execute(
        "insert into sora_worker.allowed_models (provider, model) values ('openai', 'bench') "
        "on conflict do nothing"
    )


async def generating_rows(pool: asyncpg.Pool, select: str, *args: object) -> None:
    """Rows whose provider jobs already run, from ``select`` (prompt, video_id,
    next_attempt_at): inserted as requests, then moved on as the worker would, since a
    new row may not arrive carrying a job (sql/0010)."""
    await allow_bench_model(pool)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"""create temporary table seeded on commit drop as {select}""", *args)
        await conn.execute(
            """insert into videos (prompt, model, size, seconds)
               select prompt, 'bench', '64x64', '1' from seeded"""
        )
        await conn.execute(
            """update videos v set stage = 'generating', status = 'processing',
                   video_id = s.video_id, submitted_at = now(),
                   next_attempt_at = s.next_attempt_at
               from seeded s where v.prompt = s.prompt"""
        )


async def run_pipeline(
    dsn: str, rows: int, concurrency: int, same_prompt: bool, scratch: Path
) -> dict[str, float]:
    """Drain ``rows`` inserted at once through one worker; rows/s and what each cost."""
    statements = Statements()
    pool = await open_pool(dsn, concurrency + 4, statements)
    watch = await asyncpg.connect(dsn)  # the bench's own reads, not counted
    repo = PostgresRepository(pool, "bench", timedelta(seconds=30))
    policy = Policy(timedelta(milliseconds=1), 3, timedelta(milliseconds=10), timedelta(seconds=1))
    worker = Worker(
        repo,
        instant_steps(repo, scratch),
        WorkerOptions(concurrency, 5.0, 30.0, 10.0, policy),
        sources=[Listener(dsn)],
    )
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.sources["listen"].connected.wait(), 10)  # type: ignore[attr-defined]
    before = (statements.total, statements.claims, statements.checkpoints)
    started, cpu = time.perf_counter(), time.process_time()
    await watch.executemany(
        "insert into videos (prompt) values ($1)",
        [("two people hug" if same_prompt else f"row {i}",) for i in range(rows)],
    )
    while await watch.fetchval("select count(*) from videos where status <> 'completed'"):
        await asyncio.sleep(0.02)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    worker.stop()
    await task
    total, claims, checkpoints = (
        now - then
        for now, then in zip(
            (statements.total, statements.claims, statements.checkpoints), before, strict=True
        )
    )
    query = "select extract(epoch from completed_at - created_at) from videos"
    latencies = [r[0] for r in await watch.fetch(query)]
    await watch.close()
    await pool.close()
    q = statistics.quantiles(latencies, n=100)
    return {
        "rows_per_s": rows / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "seconds": elapsed,
        "cpu_ms_per_row": cpu / rows * 1000,  # this process: the worker, every thread
        "statements_per_row": total / rows,
        "claims_per_row": claims / rows,
        "checkpoints_per_row": checkpoints / rows,
    }


_MIGRATING = asyncio.Lock()
"""Databases made side by side migrate one at a time: the roles they create (anon,
authenticated) belong to the whole server."""


@asynccontextmanager
async def fresh_database(server: str) -> AsyncIterator[str]:
    """A new, migrated database on ``server`` for one measurement, dropped afterwards."""
    name = f"sora_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'create database "{name}"')
    dsn = urlunsplit(urlsplit(server)._replace(path="/" + name))
    async with _MIGRATING:
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        # The bench measures speed, not spending: no day's budget stops it (sql/0011).
        await conn.execute("update sora_worker.settings set daily_budget_usd = 1e9")
        await conn.close()
    try:
        yield dsn
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def main(rows: int, concurrency: int, same_prompt: bool) -> None:
    logs.configure("console", "warning")
    with tempfile.TemporaryDirectory() as scratch:
        server = os.environ.get("DATABASE_URL") or start_embedded_postgres(Path(scratch))
        async with fresh_database(server) as dsn:
            result = await run_pipeline(dsn, rows, concurrency, same_prompt, Path(scratch))
    print(
        f"rows={rows} concurrency={concurrency} same_prompt={same_prompt}: "
        f"{result['rows_per_s']:,.0f} rows/s, insert->completed "
        f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"per row {result['statements_per_row']:.2f} statements "
        f"({result['checkpoints_per_row']:.2f} checkpoints, {result['claims_per_row']:.2f} "
        f"claims), total {result['seconds']:.1f} s"
    )


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    width = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    asyncio.run(main(count, width, len(sys.argv) > 3 and sys.argv[3] == "same"))
