"""Supabase Realtime as a wake-up source, against a local Realtime server.

First the official ``realtime`` client proves the fake (join reply ids, the system
message, a change fed by a real INSERT); then the worker runs with Realtime as its only
push source (LISTEN off, a sweep too slow to matter), through every fault the source
must survive: a server killed and restarted, refused joins, a bad key, a table missing
from the publication, a channel error, a slow join reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from pydantic import SecretStr
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent
from structlog.testing import capture_logs

from service.runtime import Runtime
from service.wakeups.choice import Sources, choose
from service.wakeups.realtime import KEY_HINT, PUBLICATION_HINT, RealtimeSource, is_listening
from tests.conftest import eventually, replica_of, simulator_of
from tests.fakes.realtime_server import FakeRealtime, started
from tests.fakes.supabase_storage import started as supabase_storage
from tests.test_pipeline import finished, row_of, running

Logs = list[dict[str, Any]]


@pytest.fixture
async def fake(db_url: str) -> AsyncIterator[FakeRealtime]:
    async with started(db_url) as server:
        yield server


def fast_source(fake: FakeRealtime, *, key: str | None = None, **options: Any) -> RealtimeSource:
    """A source with test-sized backoffs (the defaults are 0.5 s, capped at 30 s)."""
    values: dict[str, Any] = dict(first_backoff=0.05, max_backoff=0.5, check_every=0.5)
    values.update(options)
    return RealtimeSource(fake.url, key or fake.service_key, **values)


@pytest.fixture
async def source(fake: FakeRealtime) -> AsyncIterator[RealtimeSource]:
    """A running source, not yet necessarily ready."""
    src = fast_source(fake)
    task = asyncio.create_task(src.run(src.wakeup))
    yield src
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def said(logs: Logs, event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


# ------------------------------------------------------- the fake, via the client


async def test_official_client_subscribes_and_hears_a_real_insert(
    fake: FakeRealtime, runtime: Runtime
) -> None:
    client = AsyncRealtimeClient(f"{fake.url}/realtime/v1", fake.service_key)
    states: list[RealtimeSubscribeStates] = []
    systems: list[str] = []
    changes: asyncio.Queue[Any] = asyncio.Queue()
    channel = client.channel("test")
    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert, changes.put_nowait, table="videos"
    )
    channel.on_system(lambda payload: systems.append(payload.message))
    try:
        await channel.subscribe(lambda state, _err: states.append(state))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        assert channel.postgres_changes_callbacks[0].id  # the id from the join reply
        await eventually(lambda: asyncio.sleep(0, systems), lambda s: s, within=5)
        assert systems == ["Subscribed to PostgreSQL"]

        row_id = await runtime.repo.insert_request("heard through realtime")
        change = await asyncio.wait_for(changes.get(), 5)
        assert change["data"]["type"] == "INSERT"
        assert change["data"]["table"] == "videos" and change["data"]["schema"] == "public"
        assert change["data"]["record"]["id"] == str(row_id)
        assert change["ids"] == [channel.postgres_changes_callbacks[0].id]
    finally:
        await client.close()


async def test_a_bad_key_is_refused_at_the_handshake(fake: FakeRealtime) -> None:
    client = AsyncRealtimeClient(f"{fake.url}/realtime/v1", "not-the-key", max_retries=1)
    with pytest.raises(Exception) as refused:
        await client.connect()
    assert getattr(refused.value, "response").status_code == 401  # noqa: B009
    assert fake.connects == 0


async def test_a_dead_reader_is_seen_through_listen_task(fake: FakeRealtime) -> None:
    """The one private attribute the source reads (``is_listening``): realtime 2.34.1
    keeps its reader in ``AsyncRealtimeClient._listen_task``, a task that ends when a
    callback raises while ``is_connected`` stays true. An upgrade that changes any of
    that fails here, saying what to look at."""
    import realtime

    version = realtime.__version__
    client = AsyncRealtimeClient(f"{fake.url}/realtime/v1", fake.service_key, auto_reconnect=False)
    assert hasattr(client, "_listen_task"), (
        f"realtime {version} has no AsyncRealtimeClient._listen_task any more: "
        "service.wakeups.realtime.is_listening must find its reader another way"
    )
    channel = client.channel("test")

    def broken(_payload: Any) -> None:
        raise RuntimeError("a bug in a callback")

    channel.on_postgres_changes(RealtimePostgresChangesListenEvent.Insert, print, table="videos")
    channel.on_system(broken)  # the server's "Subscribed to PostgreSQL" follows the join
    try:
        await channel.subscribe(lambda _state, _err: None)
        reader = client._listen_task
        assert isinstance(reader, asyncio.Task), (
            f"realtime {version}: _listen_task is {reader!r}, not the reader's task; "
            "service.wakeups.realtime.is_listening reads it as one"
        )
        await asyncio.wait_for(asyncio.wait({reader}), 10)
        assert isinstance(reader.exception(), RuntimeError), (
            f"realtime {version}: a callback's error no longer ends the reader "
            f"({reader.exception()!r})"
        )
        assert client.is_connected, (
            f"realtime {version} now says a dead reader through is_connected: "
            "is_listening's private read of _listen_task may go"
        )
        assert not is_listening(client)
    finally:
        await client.close()


# ------------------------------------------------------- choosing the sources


@pytest.mark.parametrize(
    ("mode", "supabase", "allowed", "works", "expected"),
    [
        ("auto", True, True, True, Sources(listen=True, realtime=True)),
        ("auto", True, False, False, Sources(listen=False, realtime=True)),  # run --no-listen
        ("auto", True, True, False, Sources(listen=False, realtime=True)),  # a txn pooler
        ("auto", False, True, True, Sources(listen=True, realtime=False)),
        ("auto", False, True, False, Sources(listen=False, realtime=False)),
        ("listen", True, True, False, Sources(listen=True, realtime=False)),
        ("realtime", True, True, True, Sources(listen=False, realtime=True)),
        ("both", True, False, True, Sources(listen=False, realtime=True)),
        ("none", True, True, True, Sources(listen=False, realtime=False)),
    ],
)
def test_wakeup_sources_follow_the_setting(
    mode: Any, supabase: bool, allowed: bool, works: bool, expected: Sources
) -> None:
    assert choose(mode, supabase=supabase, listen_allowed=allowed, listen_works=works) == expected


async def test_auto_probes_listen_on_a_real_database(runtime: Runtime) -> None:
    sources = await runtime.choose_wakeups(listen_allowed=True)
    assert sources == Sources(listen=True, realtime=False)  # no SUPABASE_URL in tests


# ------------------------------------------------------- the worker, woken by Realtime


async def test_a_row_is_woken_through_realtime_when_nothing_else_would_wake_it(
    fake: FakeRealtime, runtime: Runtime
) -> None:
    """As on a Supabase project behind the transaction pooler: Supabase Storage, no
    LISTEN, a sweep every 10 minutes; only Realtime can wake the worker in time."""
    src = fast_source(fake)
    async with (
        supabase_storage() as storage,
        replica_of(
            runtime,
            sweep_interval=600.0,
            supabase_url=storage.url,
            supabase_service_role_key=SecretStr(storage.service_key),
        ) as quiet,
    ):
        worker = quiet.worker(listen=False, sources=[src])
        assert "listen" not in worker.sources
        with capture_logs() as logs:
            async with running(worker):
                await asyncio.wait_for(src.ready.wait(), 10)
                # The catch-up claim after "Subscribed to PostgreSQL" is done first.
                await eventually(
                    lambda: asyncio.sleep(0, logs),
                    lambda entries: any("realtime.ready" in e.get("reasons", []) for e in entries),
                    within=5,
                )
                row_id = await runtime.repo.insert_request("woken by realtime")
                await eventually(
                    lambda: row_of(runtime, row_id),
                    lambda r: r["locked_by"] is not None or r["stage"] != "pending",
                    within=5,
                )
                row = await finished(runtime, row_id, within=15)
    assert row["status"] == "completed", row["error"]
    assert row["video_url"].startswith(f"{storage.url}/storage/v1/object/public/hug-videos/")
    woken = [e["reasons"] for e in said(logs, "worker.woken")]
    assert ["realtime"] in woken, woken
    assert not any("sweep" in reasons or "notify" in reasons for reasons in woken)


async def test_fifty_rows_complete_while_the_realtime_server_dies_five_times(
    fake: FakeRealtime, runtime: Runtime
) -> None:
    src = fast_source(fake)
    # Small clips: the test is about waking, not about encoding 50 videos at 720p.
    simulator_of(runtime).config.models["tiny"] = ("160x96",)
    ids = []
    started_at = time.monotonic()
    tiny = "default,openai:tiny"  # a model the registry does not know, allowed
    async with replica_of(runtime, sweep_interval=600.0, allowed_models=tiny) as quiet:
        worker = quiet.worker(listen=False, sources=[src])
        with capture_logs() as logs:
            async with running(worker):
                for outage in range(5):
                    await asyncio.wait_for(src.ready.wait(), 10)
                    for n in range(5):
                        ids.append(await insert_tiny(runtime, f"before {outage}.{n}"))
                    await fake.kill()
                    await eventually(lambda: asyncio.sleep(0, src.ready.is_set()), lambda r: not r)
                    # Inserted while the server is down: never sent, found at resubscribe.
                    for n in range(5):
                        ids.append(await insert_tiny(runtime, f"during {outage}.{n}"))
                    await fake.start()
                await asyncio.wait_for(src.ready.wait(), 10)
                rows = [await finished(runtime, row_id, within=30) for row_id in ids]
                connected_at_end = src.ready.is_set() and fake.subscribers == 1
    elapsed = time.monotonic() - started_at
    print(
        f"\n50 rows, 5 Realtime outages: {src.attempts} connection attempts "
        f"in {elapsed:.1f} s, {fake.connects} sockets accepted"
    )
    assert len(ids) == 50
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    assert connected_at_end
    # Bounded: one attempt per outage plus a few backoff retries each, never a spin.
    assert 6 <= src.attempts <= 6 + 5 * 8
    assert not said(logs, "worker.side_task_died")
    lost = [e for e in said(logs, "realtime.unavailable") if "reconnecting" in e["problem"]]
    assert 1 <= len(lost) <= 5


async def insert_tiny(runtime: Runtime, prompt: str) -> UUID:
    return await runtime.repo.insert_request(prompt, model="tiny", size="160x96")


# ------------------------------------------------------- faults, each said once


async def test_a_refused_join_is_said_once_and_retried_until_it_works(
    fake: FakeRealtime,
) -> None:
    fake.refuse_joins = "Unauthorized: You do not have permissions to read from this Channel"
    src = fast_source(fake)
    with capture_logs() as logs:
        task = asyncio.create_task(src.run(src.wakeup))
        try:
            await eventually(lambda: asyncio.sleep(0, fake.joins), lambda n: n >= 2, within=10)
            fake.refuse_joins = None
            await asyncio.wait_for(src.ready.wait(), 15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    problems = [e["problem"] for e in said(logs, "realtime.unavailable")]
    assert len(problems) == 1 and KEY_HINT in problems[0], problems
    assert src.attempts == 1  # the client rejoined on its socket; no rebuild
    assert said(logs, "realtime.back")


async def test_a_bad_key_is_said_once_and_retried_with_capped_backoff(
    fake: FakeRealtime,
) -> None:
    src = fast_source(fake, key="wrong-key", max_backoff=0.2)
    with capture_logs() as logs:
        task = asyncio.create_task(src.run(src.wakeup))
        try:
            await eventually(lambda: asyncio.sleep(0, src.attempts), lambda n: n >= 6, within=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    problems = [e["problem"] for e in said(logs, "realtime.unavailable")]
    assert len(problems) == 1 and "HTTP 401" in problems[0] and KEY_HINT in problems[0]
    assert not src.ready.is_set()


async def test_a_table_missing_from_the_publication_is_said_once_with_the_fix(
    fake: FakeRealtime,
) -> None:
    fake.publication = set()
    src = fast_source(fake)
    with capture_logs() as logs:
        task = asyncio.create_task(src.run(src.wakeup))
        try:
            await eventually(lambda: asyncio.sleep(0, fake.joins), lambda n: n >= 2, within=10)
            fake.publication = {("public", "videos")}
            await asyncio.wait_for(src.ready.wait(), 15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    problems = [e["problem"] for e in said(logs, "realtime.unavailable")]
    assert len(problems) == 1 and PUBLICATION_HINT in problems[0], problems


async def test_a_channel_error_and_a_slow_join_are_survived(
    fake: FakeRealtime, source: RealtimeSource
) -> None:
    await asyncio.wait_for(source.ready.wait(), 10)
    await source.wakeup.wait(0)  # take the connect-time hints
    fake.send_error()
    await eventually(lambda: asyncio.sleep(0, source.ready.is_set()), lambda r: not r)
    await asyncio.wait_for(source.ready.wait(), 10)  # the client rejoined on its own
    assert "realtime.subscribed" in await source.wakeup.wait(0)

    fake.reply_delay = 1.5  # beyond the 1 s join timeout below
    slow = fast_source(fake, join_timeout=1)
    with capture_logs() as logs:
        task = asyncio.create_task(slow.run(slow.wakeup))
        try:
            await eventually(
                lambda: asyncio.sleep(0, logs),
                lambda entries: bool(said(entries, "realtime.unavailable")),
                within=10,
            )
            fake.reply_delay = 0.0
            await asyncio.wait_for(slow.ready.wait(), 15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert "no reply in time" in said(logs, "realtime.unavailable")[0]["problem"]
