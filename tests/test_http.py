"""The worker's HTTP server as a scraper and a container runtime see it."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from service.database.health import Health
from service.local.simulator import SimulatorConfig
from service.runtime import Runtime, open_runtime
from service.web.guard import Limits
from service.web.server import WorkerHttp, WorkerProbe
from tests.conftest import FAST_SIMULATOR, eventually, make_settings
from tests.test_cli import CLI, env_for
from tests.test_database_faults import proxied
from tests.test_pipeline import finished, running

EVERY_METRIC = {
    "sora_rows",
    "sora_oldest_unfinished_seconds",
    "sora_rows_in_doubt",
    "sora_table_read_ok",
    "sora_claims",
    "sora_provider_calls",
    "sora_provider_call_seconds",
    "sora_polls",
    "sora_archived_bytes",
    "sora_retries",
    "sora_rows_finished",
    "sora_expired_before_archived",
    "sora_archived_without_media",
    "sora_event_source_up",
}


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric family name -> labels -> value, as a scraper parses the page."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(family.name, {})[key] = sample.value
            out.setdefault(sample.name, {})[key] = sample.value
    return out


async def test_metrics_after_a_row_show_every_metric_and_the_table(runtime: Runtime) -> None:
    worker = runtime.worker()
    async with (
        runtime.http_server(worker) as server,
        running(worker),
        httpx.AsyncClient() as client,
    ):
        base = f"http://127.0.0.1:{server.port}"
        row_id = await runtime.repo.insert_request("a hug, measured")
        assert (await finished(runtime, row_id))["status"] == "completed"
        # The insert trigger makes every new row due now, so the row is put off in the
        # same transaction: no worker can see it, or claim it, before it is deferred.
        async with runtime.pool.acquire() as conn, conn.transaction():
            later = await conn.fetchval("insert into videos (prompt) values ('later') returning id")
            await conn.execute(
                "update videos set next_attempt_at = now() + interval '1h' where id = $1", later
            )
        page = await client.get(f"{base}/metrics")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/plain")
        found = samples(page.text)
        assert set(found) >= EVERY_METRIC, EVERY_METRIC - set(found)
        assert found["sora_rows"][(("stage", "completed"),)] == 1
        assert found["sora_rows"][(("stage", "pending"),)] == 1
        assert found["sora_oldest_unfinished_seconds"][()] >= 0
        assert found["sora_claims_total"][()] >= 1
        assert found["sora_archived_bytes_total"][()] > 0
        assert found["sora_archived_without_media_total"][()] == 0  # a real MP4: all made
        assert found["sora_polls_total"][()] >= 1
        assert found["sora_rows_finished_total"][(("stage", "completed"),)] == 1
        calls = found["sora_provider_calls_total"]
        assert calls[(("call", "create"), ("outcome", "Accepted"))] == 1
        assert calls[(("call", "download"), ("outcome", "Archived"))] == 1
        assert found["sora_event_source_up"][(("source", "listen"),)] == 1
        assert found["sora_event_source_up"][(("source", "sweep"),)] == 1
        assert (await client.get(f"{base}/healthz")).json() == {"alive": True}
        ready = await client.get(f"{base}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["sources"] == {"listen": True, "sweep": True}


async def test_two_workers_in_one_process_count_apart(runtime: Runtime) -> None:
    first, second = runtime.worker(), runtime.worker()
    async with (
        runtime.http_server(first) as one,
        runtime.http_server(second) as two,
        running(first),
    ):
        await finished(runtime, await runtime.repo.insert_request("counted once"))
        async with httpx.AsyncClient() as client:
            a = samples((await client.get(f"http://127.0.0.1:{one.port}/metrics")).text)
            b = samples((await client.get(f"http://127.0.0.1:{two.port}/metrics")).text)
    assert a["sora_claims_total"][()] >= 1
    assert b["sora_claims_total"][()] == 0


async def test_readyz_is_503_while_the_database_is_gone_and_200_when_back(
    db_url: str, tmp_path: Path
) -> None:
    async with proxied(db_url) as (proxy, dsn):
        settings = make_settings(dsn, tmp_path, http_port=0)
        async with open_runtime(
            settings,
            apply_migrations=False,
            stand_in_configs={"openai": SimulatorConfig(**FAST_SIMULATOR)},
        ) as rt:
            worker = rt.worker(listen=False)
            async with (
                rt.http_server(worker) as server,
                running(worker),
                httpx.AsyncClient() as client,
            ):
                url = f"http://127.0.0.1:{server.port}/readyz"
                await eventually(lambda: client.get(url), lambda r: r.status_code == 200)
                proxy.refuse()
                proxy.cut_all()
                gone = await eventually(lambda: client.get(url), lambda r: r.status_code == 503)
                assert gone.json()["ready"] is False and gone.json()["database"] != "ok"
                scraped = samples((await client.get(url.replace("readyz", "metrics"))).text)
                assert scraped["sora_table_read_ok"][()] == 0
                assert (await client.get(url.replace("readyz", "healthz"))).status_code == 200
                proxy.restore()
                await eventually(lambda: client.get(url), lambda r: r.status_code == 200)
                # A frozen database (packets swallowed): both answer in bounded time.
                proxy.blackhole()
                try:
                    frozen = await client.get(url, timeout=10)
                    page = await client.get(url.replace("readyz", "metrics"), timeout=10)
                finally:
                    proxy.restore()  # else the worker's frozen claim outlives the test
                assert frozen.status_code == 503
                assert samples(page.text)["sora_table_read_ok"][()] == 0
                await eventually(lambda: client.get(url), lambda r: r.status_code == 200)


@pytest.mark.slow
async def test_health_command_follows_the_running_worker(db_url: str, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", env=env_for(db_url, tmp_path), stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        port = 0
        async with asyncio.timeout(30):
            while not port:
                line = await proc.stderr.readline()
                if b"http.listening" in line:
                    port = json.loads(line)["port"]
        health = [*CLI, "health"]
        env = env_for(db_url, tmp_path, SORA_HTTP_PORT=str(port))

        async def probe() -> int:
            checked = await asyncio.create_subprocess_exec(
                *health, env=env, stdout=asyncio.subprocess.DEVNULL
            )
            return await checked.wait()

        assert await eventually(probe, lambda code: code == 0) == 0
        proc.send_signal(signal.SIGTERM)
        await proc.communicate()
        assert await probe() == 1  # nobody answers any more
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_taken_http_port_is_one_line_naming_the_setting(
    db_url: str, tmp_path: Path, runtime: Runtime
) -> None:
    worker = runtime.worker()
    async with runtime.http_server(worker) as server:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "run",
            env=env_for(db_url, tmp_path / "second", SORA_HTTP_PORT=str(server.port)),
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            _, stderr = await proc.communicate()
    assert proc.returncode == 1
    assert "SORA_HTTP_PORT" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_other_routes_mount_on_the_same_server(runtime: Runtime) -> None:
    """How the webhook receivers join: ``routes=`` (or ``server.app.add_routes``)."""

    async def hook(request: web.Request) -> web.Response:
        return web.json_response({"got": (await request.json())["id"]})

    worker = runtime.worker()
    routes = [web.post("/webhooks/test", hook)]
    async with runtime.http_server(worker, routes=routes) as server, httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{server.port}"
        answer = await client.post(f"{base}/webhooks/test", json={"id": "video_1"})
        assert answer.json() == {"got": "video_1"}
        assert (await client.get(f"{base}/healthz")).status_code == 200


# ---------------------------------------------------------------- a hostile visitor


async def _hang(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A slowloris connection: a request whose headers never end."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\nX-Slow: ")
        await writer.drain()
    except OSError:
        return None  # refused at once: the cap at work
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except OSError:
        return True  # reset: aborted by the server


async def test_the_worker_claims_and_archives_while_a_thousand_connections_hang(
    runtime: Runtime,
) -> None:
    worker = runtime.worker()
    limits = Limits(max_connections=64, header_timeout=1.0, lifetime=30.0)
    server = WorkerHttp("127.0.0.1", 0, WorkerProbe(worker, Health(runtime.pool)), limits=limits)
    async with server, running(worker), httpx.AsyncClient() as client:
        hanging = [c for c in await asyncio.gather(*(_hang(server.port) for _ in range(1000))) if c]
        try:
            # The worker's own work goes on: a row is claimed, generated and archived.
            row_id = await runtime.repo.insert_request("a hug under siege")
            row = await finished(runtime, row_id)
            assert row["status"] == "completed", row["error"]
            # Every hanging connection is closed by the server: beyond the cap at once,
            # the others when their headers did not arrive in time.
            closed = await asyncio.gather(*(_closed_by_server(r) for r, _ in hanging))
            assert all(closed)
            ready = await eventually(
                lambda: client.get(f"http://127.0.0.1:{server.port}/readyz"),
                lambda r: r.status_code == 200,
            )
            assert ready.json()["ready"] is True
        finally:
            for _, writer in hanging:
                writer.close()


async def test_readyz_names_no_database_detail_and_metrics_can_require_a_token(
    db_url: str, tmp_path: Path
) -> None:
    async with proxied(db_url) as (proxy, dsn):
        settings = make_settings(dsn, tmp_path, http_port=0, metrics_token="scrape-me-7f")
        async with open_runtime(
            settings,
            apply_migrations=False,
            stand_in_configs={"openai": SimulatorConfig(**FAST_SIMULATOR)},
        ) as rt:
            worker = rt.worker(listen=False)
            async with rt.http_server(worker) as server, httpx.AsyncClient() as client:
                base = f"http://127.0.0.1:{server.port}"
                assert (await client.get(f"{base}/metrics")).status_code == 401
                wrong = {"Authorization": "Bearer guess"}
                assert (await client.get(f"{base}/metrics", headers=wrong)).status_code == 401
                right = {"Authorization": "Bearer scrape-me-7f"}
                assert (await client.get(f"{base}/metrics", headers=right)).status_code == 200
                proxy.refuse()
                proxy.cut_all()
                gone = await eventually(
                    lambda: client.get(f"{base}/readyz"), lambda r: r.status_code == 503
                )
    # Whoever probes learns that the database is away, not where it lives or why.
    assert gone.json()["database"] == "unavailable"
    assert "127.0.0.1" not in gone.text and str(proxy.port) not in gone.text


async def test_a_scrape_while_the_table_is_locked_is_served_from_the_last_read(
    runtime: Runtime,
) -> None:
    worker = runtime.worker()
    async with runtime.http_server(worker) as server, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{server.port}/metrics"
        first = samples((await client.get(url)).text)
        assert first["sora_table_read_ok"][()] == 1
        async with runtime.pool.acquire() as conn, conn.transaction():
            # Any read of the table now waits for this lock: a scrape that queried the
            # table per request would hang here; one served from the last read does not.
            await conn.execute("lock table public.videos in access exclusive mode")
            again = await client.get(url, timeout=3)
        assert samples(again.text)["sora_table_read_ok"][()] == 1
