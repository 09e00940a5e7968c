"""How long the dashboard's page takes with 10,000 rows in the table, beside 100 rows
and beside its own statements run bare (in-process, and in psql).

Each table size gets a fresh database: mostly completed rows (each with its own poster
and video URL, served by the local storage server), some failed with an error_kind,
some still owed work, spread over the last day. Then, for each size:

- the page's statements alone (the overview and the newest rows), as the dashboard
  runs them, and the overview in ``psql`` (``\\timing``) where psql is installed;
- ``GET /`` served by the dashboard (the server's whole answer);
- the page in Chromium (the system's, as in the browser test): navigation start to the
  load event (48 posters fetched), when Chromium is installed.

    .venv/bin/python -m bench.dashboard [--rows 100,10000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

from bench.pipeline import fresh_database
from service import logs
from service.config import Settings
from service.dashboard.app import NEWEST, Dashboard
from service.database.dashboard import OVERVIEW, RECENT, DashboardReads
from service.local.embedded import start_embedded_postgres
from service.local.simulator.media import render_mp4, render_thumbnail
from service.local.storage_server import StorageServer

INSERT = "insert into public.videos (prompt) select 'row ' || n from generate_series(1, $1) n"
SEED = """
with numbered as (
    select id, row_number() over (order by id) as n,
           now() - (row_number() over (order by id) % 1440) * interval '1 minute' as at
    from public.videos
), staged as (
    select *, case when n % 10 < 8 then 'completed' when n % 10 = 8 then 'failed'
                   else 'pending' end as stage
    from numbered
)
update public.videos v set
    stage = s.stage,
    status = case s.stage when 'pending' then 'queued' else s.stage end,
    created_at = s.at,
    submitted_at = case when s.stage <> 'pending' then s.at end,
    completed_at = case when s.stage = 'completed' then s.at + interval '90 seconds' end,
    progress = case when s.stage = 'completed' then 100 else s.n % 100 end,
    video_id = case when s.stage <> 'pending' then 'video_' || s.n end,
    video_url = case when s.stage = 'completed' then $1 || '?row=' || s.n end,
    poster_url = case when s.stage = 'completed' then $2 || '?row=' || s.n end,
    video_sha256 = case when s.stage = 'completed' then md5(s.id::text) || md5(s.n::text) end,
    video_bytes = case when s.stage = 'completed' then 1000000 + s.n end,
    error = case when s.stage = 'failed' then 'the provider said no (' || s.n || ')' end,
    error_kind = case when s.stage = 'failed'
        then (array['provider_error', 'safety_filtered', 'invalid_request'])[s.n % 3 + 1] end
from staged s
where v.id = s.id
"""
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=20) if len(samples) > 1 else samples * 19
    return f"p50 {statistics.median(samples) * 1000:7.1f} ms  p95 {q[18] * 1000:7.1f} ms"


async def timed(action: object, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await action()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


def psql_ms(dsn: str, repeat: int) -> str:
    if shutil.which("psql") is None:
        return "psql not installed"
    script = "\\timing on\n" + (OVERVIEW.strip() + ";\n") * repeat
    argv = ["psql", dsn, "-q", "-o", "/dev/null"]
    out = subprocess.run(argv, input=script, capture_output=True, text=True, check=False).stdout
    times = [float(line.split()[1]) / 1000 for line in out.splitlines() if line.startswith("Time:")]
    return ms(times) if times else "psql gave no timing"


async def browser_load(url: str, repeat: int) -> str:
    if shutil.which(CHROMIUM) is None:
        return "Chromium not installed"
    from playwright.async_api import async_playwright

    from tests.test_dashboard_browser import FLAGS

    samples = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for _ in range(repeat):
            context = await browser.new_context()  # a cold cache each time
            page = await context.new_page()
            await page.goto(url, wait_until="load")
            timing = await page.evaluate(
                "() => performance.getEntriesByType('navigation')[0].loadEventEnd"
            )
            samples.append(timing / 1000)
            await context.close()
        await browser.close()
    return ms(samples)


async def measure(server: str, scratch: Path, rows: int, repeat: int) -> None:
    store = scratch / "storage"
    media = store / "hug-videos" / "bench"
    media.mkdir(parents=True, exist_ok=True)
    (media / "v.mp4").write_bytes(render_mp4(320, 240, 2, prompt="b", reference=None, seed="b"))
    (media / "p.webp").write_bytes(
        render_thumbnail(320, 240, 2, prompt="b", reference=None, seed="b")
    )
    storage = StorageServer(store)
    await storage.start()
    prefix = f"http://127.0.0.1:{storage.port}/storage/v1/object/public/hug-videos/bench/"
    try:
        async with fresh_database(server) as dsn:
            async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
                await pool.execute(INSERT, rows)
                await pool.execute(SEED, prefix + "v.mp4", prefix + "p.webp")
                await pool.execute("vacuum analyze public.videos")
                reads = DashboardReads(pool)
                bare = await timed(lambda: pool.fetchrow(OVERVIEW), repeat)
                recent = await timed(lambda: pool.fetch(RECENT, NEWEST), repeat)
                both = await timed(lambda: reads.queue(NEWEST), repeat)
                settings = Settings(dashboard={"port": 0}, database={"url": dsn})  # type: ignore[arg-type]
                async with (
                    Dashboard(settings, pool, None) as dashboard,
                    aiohttp.ClientSession() as s,
                ):
                    url = f"http://127.0.0.1:{dashboard.port}/"

                    async def get() -> None:
                        async with s.get(url) as response:
                            assert response.status == 200
                            await response.read()

                    served = await timed(get, repeat)
                    loaded = await browser_load(url, max(3, repeat // 6))
            print(f"{rows:>7,} rows  overview statement      {ms(bare)}")
            print(f"{rows:>7,} rows  newest {NEWEST} statement     {ms(recent)}")
            print(f"{rows:>7,} rows  overview in psql         {psql_ms(dsn, repeat)}")
            print(f"{rows:>7,} rows  all the page's reads     {ms(both)}")
            print(f"{rows:>7,} rows  GET / served             {ms(served)}")
            print(f"{rows:>7,} rows  page load in Chromium    {loaded}", flush=True)
    finally:
        await storage.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100,10000")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    logs.configure("console", "warning")
    with tempfile.TemporaryDirectory() as scratch:
        server = os.environ.get("DATABASE_URL") or start_embedded_postgres(Path(scratch))
        for rows in (int(n) for n in args.rows.split(",")):
            await measure(server, Path(scratch), rows, args.repeat)


if __name__ == "__main__":
    asyncio.run(main())
