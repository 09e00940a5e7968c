"""The database failing under a worker: typed errors, no dead loop, fast recovery.

PostgreSQL is real; between it and the worker sits ``tests/faultproxy.py``, which cuts
connections mid-query, refuses them, or lets them through, on command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from pydantic import SecretStr

from service.database.errors import DatabaseUnavailable
from service.database.postgres import PostgresRepository
from service.runtime import Runtime
from tests.conftest import eventually, replica_of, simulator_of
from tests.faultproxy import PostgresFaultProxy
from tests.test_cli import CLI, env_for
from tests.test_pipeline import finished, running


def through(proxy_port: int, db_url: str) -> str:
    parts = urlsplit(db_url)
    return f"postgresql://{parts.username}@127.0.0.1:{proxy_port}{parts.path}?sslmode=disable"


@asynccontextmanager
async def proxied(db_url: str) -> AsyncIterator[tuple[PostgresFaultProxy, str]]:
    proxy = PostgresFaultProxy(db_url)
    async with proxy as port:
        yield proxy, through(port, db_url)


async def test_a_connection_cut_mid_query_is_a_typed_error_and_the_next_call_works(
    db_url: str,
) -> None:
    async with proxied(db_url) as (proxy, dsn), asyncpg.create_pool(dsn, min_size=1) as pool:
        repo = PostgresRepository(pool, "w", timedelta(seconds=30))
        await repo.insert_request("before the cut")
        proxy.delay(0.5)  # the query is on its way ...
        sent = proxy.counters()["bytes_up"]
        claim = asyncio.create_task(repo.claim(5))
        await eventually(lambda: asyncio.sleep(0, proxy.counters()), lambda c: c["bytes_up"] > sent)
        assert not claim.done()
        proxy.cut_all()  # ... when the connection dies
        with pytest.raises(DatabaseUnavailable):
            await claim
        proxy.restore()
        # The pool replaces the dead connection: the very next call works.
        assert await repo.next_due_in() is not None


async def test_a_worker_keeps_serving_through_repeated_connection_cuts(
    runtime: Runtime, db_url: str
) -> None:
    """Each cut may land in a claim, a checkpoint or a heartbeat; none ends the worker.

    A cut that loses the answer to the intent's checkpoint leaves that row in doubt: it
    waits out the create timeout (short here) before it is submitted, never twice.
    """
    ids = [await runtime.repo.insert_request(f"cut {n}") for n in range(8)]
    async with proxied(db_url) as (proxy, dsn):
        unretrieved: list[dict[str, object]] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
        async with replica_of(
            runtime, database_url=SecretStr(dsn), provider_timeout=2.0, lease_seconds=2.0
        ) as cut_off:
            worker = cut_off.worker(listen=True)
            async with running(worker):
                for _ in range(6):
                    await eventually(
                        lambda: runtime.pool.fetchval(
                            "select count(*) from videos where stage <> 'pending'"
                        ),
                        lambda n: n > 0,
                    )
                    proxy.cut_all()
                rows = [await finished(runtime, row_id, within=40) for row_id in ids]
        loop.set_exception_handler(None)
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    assert len(simulator_of(runtime).created) == len(ids)
    assert unretrieved == []  # no "Task exception was never retrieved"


async def test_run_waits_for_a_database_that_is_not_up_yet(db_url: str, tmp_path: Path) -> None:
    async with proxied(db_url) as (proxy, dsn):
        proxy.refuse()  # the database's port answers nothing useful yet
        proc = await asyncio.create_subprocess_exec(
            *CLI, "run", env=env_for(dsn, tmp_path), stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None
        seen: list[dict[str, object]] = []

        async def until(event: str) -> None:
            assert proc.stderr is not None
            while not any(e.get("event") == event for e in seen):
                line = await proc.stderr.readline()
                assert line, f"exited before {event!r}: {seen[-5:]}"
                with contextlib.suppress(json.JSONDecodeError):
                    seen.append(json.loads(line))

        try:
            async with asyncio.timeout(60):
                await until("database.waiting")
                assert proc.returncode is None  # waiting, not exited
                proxy.restore()  # the database comes up
                await until("worker.started")
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            rest = await proc.stderr.read()
            await proc.wait()
    assert proc.returncode == 0, rest.decode()[-2000:]
    assert any(e.get("event") == "database.ready" for e in seen)
    assert b"Traceback" not in rest
