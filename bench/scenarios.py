"""The worker's side of `make bench`: each scenario on its own fresh database.

- dispatch: INSERT -> the provider receives the create, one row at a time, into an idle
  worker and into one polling 2,000 other rows (every 5 s, as the provider asks);
- polling: worker CPU per poll through the official SDK against the simulator in
  another process (so only the worker's CPU is counted), at a fixed 5 s cadence, and
  a time-compressed 10,000-row day (see ``compressed_day``);
- next due and claim at 100k active rows against 1k.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg
import openai

from bench.pipeline import (
    InstantProvider,
    allow_bench_model,
    generating_rows,
    instant_steps,
    open_pool,
)
from service.core.job import Policy
from service.core.request import VideoRequest
from service.database.postgres import PostgresRepository
from service.providers.base import ProviderJob
from service.providers.openai_videos import OpenAIVideos
from service.wakeups.listen import Listener
from service.worker.daemon import Worker, WorkerOptions

# ---------------------------------------------------------------- dispatch


class TimedProvider(InstantProvider):
    """Notes when each create arrives; jobs never finish, polls say "5 s again"."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.arrived = asyncio.Event()
        self.polls = 0

    async def submit(self, request: VideoRequest) -> ProviderJob:
        self.received[request.prompt] = time.perf_counter()
        self.arrived.set()
        return await super().submit(request)

    async def retrieve(self, job_id: str) -> ProviderJob:
        self.polls += 1
        return ProviderJob(
            id=job_id,
            status="running",
            progress=10,
            raw_status="in_progress",
            poll_after=timedelta(seconds=5),
        )


POLLED = Policy(
    poll_interval=timedelta(seconds=5),
    max_attempts=3,
    retry_base=timedelta(seconds=1),
    retry_cap=timedelta(seconds=10),
)


async def polled_rows(pool: asyncpg.Pool, video_ids: list[str], spread: float) -> None:
    """Rows whose jobs the provider already holds, first polls spread over ``spread`` s."""
    await generating_rows(
        pool,
        """select 'polled ' || v as prompt, v as video_id,
                  now() + random() * $2::float8 * interval '1 second' as next_attempt_at
           from unnest($1::text[]) as v""",
        video_ids,
        spread,
    )
    await pool.execute("analyze videos")


async def dispatch(dsn: str, scratch: Path, samples: int, background: int) -> dict[str, float]:
    """INSERT -> create received, in ms; ``background`` rows polled every 5 s meanwhile."""
    pool = await open_pool(dsn, 40)
    repo = PostgresRepository(pool, "bench", timedelta(seconds=30))
    provider = TimedProvider()
    worker = Worker(
        repo,
        instant_steps(repo, scratch, provider),
        WorkerOptions(32, 30.0, 30.0, 5.0, POLLED),
        sources=[Listener(dsn)],
    )
    if background:
        await polled_rows(pool, [f"video_bg_{i}" for i in range(background)], 5.0)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.sources["listen"].connected.wait(), 10)  # type: ignore[attr-defined]
    await asyncio.sleep(6 if background else 0.5)  # every background row polled once
    latencies = []
    polls_before, measured_from = provider.polls, time.perf_counter()
    for i in range(samples):
        prompt = f"dispatch {i}"
        provider.arrived.clear()
        started = time.perf_counter()
        await pool.execute("insert into videos (prompt) values ($1)", prompt)
        await asyncio.wait_for(provider.arrived.wait(), 10)
        latencies.append((provider.received[prompt] - started) * 1000)
        await asyncio.sleep(0.02)
    polls_per_s = (provider.polls - polls_before) / (time.perf_counter() - measured_from)
    worker.stop()
    await task
    await pool.close()
    return {"latencies": latencies, "polls_per_s": polls_per_s}  # type: ignore[dict-item]


# ---------------------------------------------------------------- polling


@contextlib.contextmanager
def simulator_process(**config: object) -> Iterator[str]:
    """The simulator in a process of its own; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.scenarios", "--simulator", json.dumps(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(10)


async def serve_simulator(config: dict[str, object]) -> None:
    from service.local.simulator import JobShapes, Simulator, SimulatorConfig

    shapes = config.pop("shapes", None)
    if isinstance(shapes, dict):  # from JSON: its pairs arrive as lists
        config["shapes"] = JobShapes(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in shapes.items()}
        )
    if isinstance(config.get("state_dir"), str):
        config["state_dir"] = Path(str(config["state_dir"]))
    async with Simulator(SimulatorConfig(**config)) as simulator:  # type: ignore[arg-type]
        print(simulator.base_url, flush=True)
        await asyncio.Event().wait()


async def create_jobs(base_url: str, count: int) -> list[str]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=5)
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with gate:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                video = await client.videos.create(
                    prompt=f"polled {i}",
                    model="bench",
                    size="64x64",
                    seconds="1",  # type: ignore[arg-type]
                )
            return video.id

    ids = await asyncio.gather(*(one(i) for i in range(count)))
    await client.close()
    return list(ids)


class CountingProvider:
    """The real adapter, with its polls counted (the bench's only addition)."""

    def __init__(self, inner: OpenAIVideos) -> None:
        self.inner = inner
        self.polls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def retrieve(self, job_id: str) -> ProviderJob:
        self.polls += 1
        return await self.inner.retrieve(job_id)


@asynccontextmanager
async def sdk_worker(
    dsn: str, scratch: Path, base_url: str, policy: Policy, concurrency: int = 32
) -> AsyncIterator[tuple[Worker, CountingProvider, asyncpg.Pool]]:
    pool = await open_pool(dsn, concurrency + 8)
    repo = PostgresRepository(pool, "bench", timedelta(seconds=30))
    provider = CountingProvider(OpenAIVideos("sk-bench", base_url))
    worker = Worker(
        repo,
        instant_steps(repo, scratch, provider),
        WorkerOptions(concurrency, 30.0, 30.0, 5.0, policy),
    )
    try:
        yield worker, provider, pool
    finally:
        await provider.inner.aclose()
        await pool.close()


async def steady_polls(dsn: str, scratch: Path, rows: int, window: float) -> dict[str, float]:
    """``rows`` jobs that never finish, polled every 5 s as the host asks: CPU per poll."""
    with simulator_process(
        queue_seconds=0.0,
        generation_seconds=3600.0,
        poll_after_ms=5000,
        models={"bench": ["64x64"]},
        seconds=["1"],
    ) as base_url:
        video_ids = await create_jobs(base_url, rows)
        async with sdk_worker(dsn, scratch, base_url, POLLED) as (worker, provider, pool):
            await polled_rows(pool, video_ids, 5.0)
            task = asyncio.create_task(worker.run())
            await asyncio.sleep(6)  # warm: every row polled once
            polls, cpu, wall = provider.polls, time.process_time(), time.perf_counter()
            await asyncio.sleep(window)
            polls = provider.polls - polls
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            worker.stop()
            await task
    return {"cpu_ms_per_poll": cpu / polls * 1000, "core_share": cpu / wall, "polls": polls}


async def compressed_day(dsn: str, scratch: Path, rows: int, factor: float) -> dict[str, float]:
    """``rows`` requests for jobs of 120/``factor`` s, inserted at once; the worker submits,
    polls (floor and ceiling compressed alike, no poll-after header) and archives them.
    The poll rate is that of ``rows * factor`` rows of two-minute jobs. Returns polls per
    video and the worker's share of a core from the insert until every job is done
    (submissions and the tiny archives included: an upper bound for polling alone)."""
    policy = Policy(
        poll_interval=timedelta(seconds=5 / factor),
        max_attempts=3,
        retry_base=timedelta(seconds=1),
        retry_cap=timedelta(seconds=10),
        poll_ceiling=timedelta(seconds=60 / factor),
    )
    with simulator_process(
        queue_seconds=2.0 / factor,
        generation_seconds=120.0 / factor,
        models={"bench": ["64x64"]},
        seconds=["1"],
    ) as base_url:
        async with sdk_worker(dsn, scratch, base_url, policy) as (worker, provider, pool):
            await allow_bench_model(pool)
            task = asyncio.create_task(worker.run())
            cpu, wall = time.process_time(), time.perf_counter()
            await pool.execute(
                """insert into videos (prompt, model, size, seconds)
                   select 'a day of ' || g, 'bench', '64x64', '1'
                   from generate_series(1, $1) as g""",
                rows,
            )
            while await pool.fetchval(
                "select count(*) from videos where stage in ('pending', 'submitting', 'generating')"
            ):
                await asyncio.sleep(0.2)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            worker.stop()
            await task
            failed = await pool.fetchval("select count(*) from videos where status = 'failed'")
    return {
        "polls_per_video": provider.polls / rows,
        "core_share": cpu / wall,
        "failed": failed,
        "wall": wall,
    }


# ---------------------------------------------------------------- next due and claim

OLD_NEXT_DUE = """
select min(greatest(next_attempt_at, coalesce(locked_until, next_attempt_at))) - now()
from public.videos
where stage = any($1::text[])
"""


async def due_and_claim(dsn: str, active: int, due: int = 1000) -> dict[str, float]:
    """Median ms of next-due and of a 10-row claim, with ``active`` rows of which ``due``
    can be claimed (the rest are polled later)."""
    pool = await open_pool(dsn, 4)
    await generating_rows(
        pool,
        """select 'idle ' || g as prompt, 'video_idle_' || g as video_id,
                  now() + interval '1 hour' + g * interval '1 ms' as next_attempt_at
           from generate_series(1, $1) as g""",
        active - due,
    )
    await pool.execute(
        "insert into videos (prompt) select 'due ' || g from generate_series(1, $1) as g", due
    )
    await pool.execute("vacuum analyze videos")
    repo = PostgresRepository(pool, "bench", timedelta(seconds=30))

    async def timed(call: object, times: int) -> list[float]:
        spent = []
        for _ in range(times):
            started = time.perf_counter()
            await call()  # type: ignore[operator]
            spent.append((time.perf_counter() - started) * 1000)
        return spent

    async def claim() -> None:
        await repo.claim(10)

    async def old() -> None:
        await pool.fetchval(OLD_NEXT_DUE, ["pending", "submitting", "generating", "archiving"])

    next_due = await timed(repo.next_due_in, 200)
    claims = await timed(claim, min(90, due // 10))
    old_due = await timed(old, 20)
    await pool.close()
    return {
        "next_due_ms": sorted(next_due)[len(next_due) // 2],
        "claim_ms": sorted(claims)[len(claims) // 2],
        "old_next_due_ms": sorted(old_due)[len(old_due) // 2],
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--simulator":
        asyncio.run(serve_simulator(json.loads(sys.argv[2])))
    else:
        sys.exit(f"usage: {sys.argv[0]} --simulator CONFIG_JSON (started by bench/run.py)")
