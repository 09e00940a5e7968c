"""PgQueuer 1.6.0 driven through its public API: the yardstick `make bench` runs beside us.

Same database, same process model (one asyncio process), same run: only ratios to it
mean anything on a shared, noisy machine. Its own benchmark tool is not in the wheel,
so these are the two numbers DESIGN.md quotes, measured the way we measure ourselves:

- drain: jobs/s of one QueueManager emptying a queue of no-op jobs (batches of 10);
- dispatch: enqueue -> the entrypoint starts, one job at a time into an idle worker.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
from pgqueuer.domain.types import QueueExecutionMode


async def install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def drain(dsn: str, jobs: int) -> float:
    """Jobs per second: enqueue ``jobs`` no-ops, then time one worker draining them."""
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        for start in range(0, jobs, 1000):
            n = min(1000, jobs - start)
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        manager = QueueManager(queries)
        done = 0

        @manager.entrypoint("noop")
        async def noop(_job: Job) -> None:
            nonlocal done
            done += 1

        started = time.perf_counter()
        await manager.run(batch_size=10, mode=QueueExecutionMode.drain)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    assert done == jobs, (done, jobs)
    return jobs / elapsed


async def dispatch(dsn: str, samples: int, gap: float = 0.01) -> list[float]:
    """Milliseconds from the start of each enqueue to its entrypoint starting."""
    conn = await asyncpg.connect(dsn)
    producer = await asyncpg.connect(dsn)
    latencies: list[float] = []
    started: dict[bytes, float] = {}
    try:
        manager = QueueManager(Queries(AsyncpgDriver(conn)))
        arrived = asyncio.Event()

        @manager.entrypoint("timed")
        async def timed(job: Job) -> None:
            assert job.payload is not None
            latencies.append((time.perf_counter() - started[job.payload]) * 1000)
            arrived.set()

        runner = asyncio.create_task(manager.run(batch_size=10))
        await asyncio.sleep(0.5)  # listening
        queries = Queries(AsyncpgDriver(producer))
        for i in range(samples):
            payload = str(i).encode()
            arrived.clear()
            started[payload] = time.perf_counter()
            await queries.enqueue("timed", payload)
            await asyncio.wait_for(arrived.wait(), 10)
            await asyncio.sleep(gap)
        manager.shutdown.set()
        await runner
    finally:
        await producer.close()
        await conn.close()
    return latencies


def p(values: list[float], q: int) -> float:
    """The q-th percentile."""
    return statistics.quantiles(values, n=100)[q - 1]
