"""The delay people wait for: from the provider finishing a video to its row holding the
permanent URL (``make bench``; alone: ``python -m bench.waiting [--quick]``).

Realistic jobs from the simulator in its own process (``JobShapes``): a queue of 1-8 s,
then a generation of a typical 60 s times 0.5x-2x (log-normal, most near the typical
time), progress either an S-curve (queued at 0, slow, fast, slow) or none at all (as
Veo and most of Replicate report), videos of 5-30 MB. The real worker (the official SDK
against the simulator, the shared rate's read before each poll, the learnt durations,
the local store, media and all) runs them at the default poll settings, real time, no
compression. Each scenario has its own database, simulator and worker; they run side
by side (a couple of minutes in all), since they wait far more than they work.

- ``learnt``: the table already holds the model's last 200 jobs, drawn from the same
  shapes (as a worker that has run a while finds it); ``cold``: nothing yet.
- ``webhooks``: the simulator sends a signed ``video.completed`` the moment a job ends,
  to the worker's receiver (``service.web.webhooks``), as an OpenAI endpoint would.

Per video: completion -> ``video_url`` (``completed_at`` minus the moment the
simulator's job ended), that delay over the target (max(5 s, 10 % of the job's time)),
polls, and the archive's own time (from the poll that saw the job done to the URL).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from bench.pipeline import allow_bench_model, fresh_database, open_pool
from bench.scenarios import simulator_process
from service.core.job import Policy
from service.database.limits import RateLimits
from service.database.postgres import PostgresRepository
from service.local.simulator import JobShapes
from service.local.simulator.config import Progress
from service.media.fetch import Limits
from service.providers.base import ProviderJob
from service.providers.lookup import Providers
from service.providers.openai_videos import OpenAIVideos
from service.providers.registry import rate_rules
from service.storage.local import LocalStore
from service.wakeups.wakeup import Wakeup
from service.web.serving import serve
from service.web.webhooks import MAX_BODY, WebhookReceiver
from service.worker.daemon import Worker, WorkerOptions
from service.worker.durations import DurationBook
from service.worker.steps import Defaults, Steps
from service.worker.webhook_health import WebhookHealth

SECRET = "whsec_" + "YmVuY2gtd2ViaG9vay1zZWNyZXQtMzItYnl0ZXMhIQ=="
HISTORY = 200


@dataclass(frozen=True)
class Scenario:
    name: str
    progress: Progress
    learnt: bool
    webhooks: bool = False
    rows: int = 40


SCENARIOS = (
    Scenario("no progress, learnt", "none", learnt=True),
    Scenario("S-curve progress, learnt", "s-curve", learnt=True),
    Scenario("S-curve progress, webhooks", "s-curve", learnt=True, webhooks=True),
    Scenario("no progress, nothing learnt yet", "none", learnt=False, rows=20),
    Scenario("S-curve progress, nothing learnt yet", "s-curve", learnt=False, rows=20),
)


@dataclass
class Outcome:
    """One scenario's videos."""

    delays: list[float] = field(default_factory=list)
    """completion -> video_url, seconds"""
    over_target: list[float] = field(default_factory=list)
    """each delay over max(floor, 10 % of its job's time)"""
    polls: list[int] = field(default_factory=list)
    archive: list[float] = field(default_factory=list)
    """from the poll that saw the job done to the URL, seconds"""
    failed: int = 0

    def summary(self) -> dict[str, float]:
        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

        detect = [d - a for d, a in zip(self.delays, self.archive, strict=True)]
        return {
            "p50_s": pct(self.delays, 0.5),
            "p95_s": pct(self.delays, 0.95),
            "max_s": max(self.delays),
            "p95_over_target": pct(self.over_target, 0.95),
            "polls_mean": statistics.mean(self.polls),
            "polls_max": max(self.polls),
            "archive_p95_s": pct(self.archive, 0.95),
            "before_archive_p95_s": pct(detect, 0.95),
            "failed": self.failed,
        }


class WatchedProvider:
    """The real adapter; the bench notes each poll and when a poll first saw the job done."""

    def __init__(self, inner: OpenAIVideos) -> None:
        self.inner = inner
        self.polls: collections.Counter[str] = collections.Counter()
        self.seen_done: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def retrieve(self, job_id: str) -> ProviderJob:
        self.polls[job_id] += 1
        job = await self.inner.retrieve(job_id)
        if job.status == "completed":
            self.seen_done.setdefault(job_id, time.time())
        return job


def shapes_for(progress: Progress, scale: float) -> JobShapes:
    return JobShapes(
        typical_seconds=60.0 / scale,
        queue_seconds=(1.0 / scale, 8.0 / scale),
        progress=progress,
        video_bytes=(5_000_000, 30_000_000) if scale == 1 else (500_000, 3_000_000),
    )


def policy_for(scale: float) -> Policy:
    """The default poll settings, on the bench's clock (``scale`` times faster)."""
    return Policy(
        poll_interval=timedelta(seconds=5 / scale),
        max_attempts=3,
        retry_base=timedelta(seconds=1 / scale),
        retry_cap=timedelta(seconds=10 / scale),
        poll_ceiling=timedelta(seconds=60 / scale),
    )


async def seed_history(pool: asyncpg.Pool, shapes: JobShapes, count: int) -> None:
    """``count`` finished rows of the bench's model, their durations drawn from
    ``shapes`` as the simulator draws its jobs'."""
    durations = [sum(shapes.timing(f"history {i}")) for i in range(count)]
    # Inserted as requests (sql/0010 refuses rows that arrive finished), then finished.
    await pool.execute(
        """insert into videos (prompt, model, size, seconds)
           select 'history ' || i, 'bench', '64x64', '1'
           from generate_series(1, $1::int) as i""",
        len(durations),
    )
    await pool.execute(
        """update videos v
           set status = 'completed', stage = 'completed', provider = 'openai',
               submitted_at = now() - interval '1 hour' + t.i * interval '1 s',
               generated_at = now() - interval '1 hour' + t.i * interval '1 s'
                              + t.d * interval '1 s'
           from unnest($1::float8[]) with ordinality as t(d, i)
           where v.prompt = 'history ' || t.i""",
        durations,
    )


async def run_scenario(
    server: str, scratch: Path, scenario: Scenario, scale: float, rows: int | None = None
) -> Outcome:
    count = rows or scenario.rows
    shapes = shapes_for(scenario.progress, scale)
    policy = policy_for(scale)
    state = scratch / f"simulator {scenario.name}"
    wakeup = Wakeup()
    async with fresh_database(server) as dsn:
        pool = await open_pool(dsn, 24)
        repo = PostgresRepository(pool, "bench", timedelta(seconds=30))
        await allow_bench_model(pool)
        if scenario.learnt:
            await seed_history(pool, shapes, HISTORY)
        health = WebhookHealth(timedelta(seconds=60 / scale))
        receiver = WebhookReceiver({"openai": SECRET}, repo, wakeup, health)
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(receiver.routes())
        runner, port = await serve(app, "127.0.0.1", 0)
        config: dict[str, object] = {
            "models": {"bench": ["64x64"]},
            "seconds": ["1"],
            "shapes": asdict(shapes),
            "state_dir": str(state),
        }
        if scenario.webhooks:
            config |= {
                "webhook_url": f"http://127.0.0.1:{port}/webhooks/openai",
                "webhook_secret": SECRET,
            }
        try:
            with simulator_process(**config) as base_url:
                provider = WatchedProvider(OpenAIVideos("sk-bench", base_url))
                providers = Providers(default="openai")
                providers.add(provider)  # type: ignore[arg-type]
                steps = Steps(
                    providers,
                    LocalStore(scratch / f"store {scenario.name}", "http://bench"),
                    defaults=Defaults("bench", "64x64", "1"),
                    video_bucket="hug-videos",
                    photo_limits=Limits(1_000_000, 5.0),
                    ledger=repo,
                    webhooks=health,
                    gate=repo,
                    pace=RateLimits(pool, rate_rules("")),
                    durations=DurationBook(repo, policy.generation_timeout),
                )
                worker = Worker(
                    repo, steps, WorkerOptions(16, 30.0, 30.0, 5.0, policy), wakeup=wakeup
                )
                task = asyncio.create_task(worker.run())
                await pool.execute(
                    """insert into videos (prompt, model, size, seconds)
                       select 'waiting ' || g, 'bench', '64x64', '1'
                       from generate_series(1, $1) as g""",
                    count,
                )
                while await pool.fetchval(
                    "select count(*) from videos where stage in "
                    "('pending', 'submitting', 'generating', 'archiving')"
                ):
                    await asyncio.sleep(0.25)
                worker.stop()
                await task
                await provider.inner.aclose()
                return await measured(pool, state, shapes, provider, policy)
        finally:
            await runner.cleanup()
            await pool.close()


async def measured(
    pool: asyncpg.Pool, state: Path, shapes: JobShapes, provider: WatchedProvider, policy: Policy
) -> Outcome:
    outcome = Outcome()
    rows = await pool.fetch(
        """select video_id, extract(epoch from completed_at)::float8 as url_at, status
           from videos where prompt like 'waiting %'"""
    )
    for row in rows:
        if row["status"] != "completed" or row["video_id"] is None:
            outcome.failed += 1
            continue
        job = json.loads((state / f"{row['video_id']}.json").read_text())
        queue, generation = shapes.timing(job["id"])
        took = queue + generation
        finished = job["created_at"] + took
        delay = row["url_at"] - finished
        outcome.delays.append(delay)
        floor = policy.poll_interval.total_seconds()
        outcome.over_target.append(delay / max(floor, policy.poll_lateness * took))
        outcome.polls.append(provider.polls[row["video_id"]])
        outcome.archive.append(row["url_at"] - provider.seen_done[row["video_id"]])
    return outcome


def fewest_polls(shapes: JobShapes, archive_s: float, policy: Policy) -> tuple[float, float]:
    """The yardstick for polls per video when the host reports nothing: the fewest any
    poll schedule could make on average for jobs drawn from ``shapes`` while at most 5 %
    of them wait for their URL longer than the target (max(floor, 10 % of the job's
    time)), knowing the durations exactly and the archive taking ``archive_s``.

    Each schedule polls first at a quantile of the durations, then as late as the
    target allows for a job that ends just after a poll; the best first quantile is
    searched. Returns (mean polls, share of jobs over the target)."""
    ends = sorted(sum(shapes.timing(f"yardstick {i}")) for i in range(5000))
    floor, lateness = policy.poll_interval.total_seconds(), policy.poll_lateness
    best = (math.inf, 0.0)
    for first in range(0, 40):
        times = [ends[first * len(ends) // 100]]
        while times[-1] < ends[-1]:
            times.append(times[-1] + max(floor, lateness * times[-1]) - archive_s)
        polls, over = 0, 0
        for end in ends:
            k = bisect.bisect_left(times, end)
            polls += k + 1
            over += times[k] + archive_s - end > max(floor, lateness * end)
        if over <= 0.05 * len(ends):
            best = min(best, (polls / len(ends), over / len(ends)))
    return best


async def measure_all(
    server: str, scratch: Path, scale: float = 1.0, rows: int | None = None
) -> dict[str, dict[str, float]]:
    """Every scenario, side by side; their summaries by name."""
    outcomes = await asyncio.gather(
        *(run_scenario(server, scratch, s, scale, rows) for s in SCENARIOS)
    )
    return {s.name: o.summary() for s, o in zip(SCENARIOS, outcomes, strict=True)}


def print_table(results: dict[str, dict[str, float]]) -> None:
    print(
        f"  {'the host reports':<38} {'p50':>6} {'p95':>6} {'max':>6} "
        f"{'p95/target':>10} {'polls mean/max':>15} {'archive p95':>11}"
    )
    for name, r in results.items():
        print(
            f"  {name:<38} {r['p50_s']:>5.1f}s {r['p95_s']:>5.1f}s {r['max_s']:>5.1f}s "
            f"{r['p95_over_target']:>10.2f} {r['polls_mean']:>9.1f} / {r['polls_max']:<3.0f}"
            f" {r['archive_p95_s']:>10.2f}s"
        )


async def main(argv: list[str] | None = None) -> int:
    from service import logs
    from service.local.embedded import start_embedded_postgres

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time x30, 4 rows each")
    args = parser.parse_args(argv)
    logs.configure("console", "warning")
    with tempfile.TemporaryDirectory(prefix="sora-bench-") as scratch:
        server = os.environ.get("DATABASE_URL") or start_embedded_postgres(Path(scratch))
        results = await measure_all(
            server, Path(scratch), 30.0 if args.quick else 1.0, 4 if args.quick else None
        )
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
