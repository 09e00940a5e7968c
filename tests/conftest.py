"""Test harness: one real PostgreSQL per session, one fresh database per test.

The server is ``DATABASE_URL`` when set (any PostgreSQL >= 13 the tests may create
databases on), else an embedded server in a temporary directory. Migrations run once
into a template database; each test gets ``CREATE DATABASE ... TEMPLATE`` (a file
copy, milliseconds) so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.config import Settings, declared_settings
from service.core.job import Stage
from service.database.migrations import migrate
from service.local.embedded import start_embedded_postgres
from service.local.simulator import ProfileName, Simulator, SimulatorConfig
from service.runtime import Runtime, open_runtime
from tests.supabase_like import make_supabase_like

FAST_SIMULATOR = dict(queue_seconds=0.05, generation_seconds=0.3)


def with_database(dsn: str, name: str) -> str:
    """The same server URL pointing at another database (works for socket URLs too)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="sora-test-") as scratch:
        yield start_embedded_postgres(Path(scratch))


def migrated_template(
    server_dsn: str, prefix: str, prepare: Callable[[str], Awaitable[None]] | None = None
) -> str:
    """A new database, ``prepare``d (if given) and migrated, to copy for each test."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'create database "{name}"')
        finally:
            await admin.close()
        if prepare is not None:
            await prepare(with_database(server_dsn, name))
        conn = await asyncpg.connect(with_database(server_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return name


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> str:
    return migrated_template(server_dsn, "sora_template")


@asynccontextmanager
async def scratch_database(server_dsn: str, template: str | None = None) -> AsyncIterator[str]:
    """A new database (a copy of ``template``, or empty), dropped afterwards."""
    name = f"sora_test_{uuid.uuid4().hex[:12]}"
    source = f' template "{template}"' if template else ""
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'create database "{name}"{source}')
    finally:
        await admin.close()
    try:
        yield with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await admin.close()


@pytest.fixture
async def db_url(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    async with scratch_database(server_dsn, template_db) as url:
        yield url


@pytest.fixture
async def empty_db_url(server_dsn: str) -> AsyncIterator[str]:
    """A database with no schema at all, for migration tests."""
    async with scratch_database(server_dsn) as url:
        yield url


@pytest.fixture(scope="session")
def supabase_template(server_dsn: str) -> str:
    """A database set up as Supabase sets one up (its roles and default privileges,
    tests/supabase_like.py), then migrated: what `sora-worker migrate` makes of a real
    project."""
    return migrated_template(server_dsn, "sora_supabase", make_supabase_like)


@pytest.fixture
async def supabase_url(server_dsn: str, supabase_template: str) -> AsyncIterator[str]:
    """A fresh copy of ``supabase_template`` (connect as the table owner, the worker)."""
    async with scratch_database(server_dsn, supabase_template) as url:
        yield url


@pytest.fixture
async def empty_supabase_url(empty_db_url: str) -> str:
    """A database Supabase has set up and nobody has migrated yet."""
    await make_supabase_like(empty_db_url)
    return empty_db_url


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


def grouped(**flat: Any) -> dict[str, Any]:
    """Settings by their flat names, as the groups ``Settings`` takes.

    A flat name is the setting's environment name in lower case without ``SORA_``
    (``poll_interval``, ``storage_port``, ``openai_api_key``, ``database_url``), so
    tests say a setting the way an operator does.
    """
    paths = {d.env_name.lower().removeprefix("sora_"): d.path for d in declared_settings()}
    values: dict[str, Any] = {}
    for name, value in flat.items():
        *groups, field = paths[name]
        target = values
        for group in groups:
            target = target.setdefault(group, {})
        target[field] = value
    return values


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        inner = merged.get(key)
        merged[key] = _merged(inner, value) if isinstance(inner, dict) else value
    return merged


def make_settings(db_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test on ``db_url`` (flat names in ``overrides``, see ``grouped``)."""
    values: dict[str, Any] = dict(
        database_url=db_url,
        openai_api_key=None,
        supabase_url=None,
        data_dir=data_dir,
        storage_port=0,
        simulator_port=0,
        veo_fake_port=0,
        replicate_fake_port=0,
        http_port=0,
        poll_interval=0.05,
        sweep_interval=2.0,
        lease_seconds=10.0,
        retry_base=0.05,
        retry_cap=0.2,
        max_attempts=3,
        shutdown_grace=5.0,
        worker_id=f"test-{uuid.uuid4().hex[:6]}",
        log_format="json",
        # Tests of other things never meet the day's budget (tests/test_public_app.py does).
        daily_budget_usd=10_000.0,
        # The tests know they run on stand-ins beside a real PostgreSQL.
        stand_ins="allow",
    )
    values.update(overrides)
    return Settings(**grouped(**values))


def changed(settings: Settings, **flat: Any) -> Settings:
    """``settings`` with the ``flat`` ones changed, validated like any others."""
    return Settings(**_merged(settings.model_dump(), grouped(**flat)))


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path)


@pytest.fixture
def simulator_profile() -> ProfileName:
    """Which host the simulator plays; tests run against others with
    ``@pytest.mark.parametrize("simulator_profile", PROFILES)``."""
    return "openai"


@pytest.fixture
async def runtime(settings: Settings, simulator_profile: ProfileName) -> AsyncIterator[Runtime]:
    config = SimulatorConfig(**FAST_SIMULATOR, profile=simulator_profile)
    async with open_runtime(
        settings, apply_migrations=False, stand_in_configs={"openai": config}
    ) as opened:
        yield opened


def simulator_of(runtime: Runtime) -> Simulator:
    """The simulator ``runtime`` hosts (SORA_PROVIDER=openai without a key)."""
    assert isinstance(runtime.stand_in, Simulator), runtime.stand_in
    return runtime.stand_in


@asynccontextmanager
async def replica_of(runtime: Runtime, **overrides: Any) -> AsyncIterator[Runtime]:
    """Another replica beside ``runtime``, wired the way ``sora-worker run`` wires one.

    Same database and data directory; it shares the first one's local simulator and
    storage server (as replicas on one machine do) and has its own pool and worker id.
    ``overrides`` change its settings (``sweep_interval``, ``worker_id``, ...).
    """
    simulator = simulator_of(runtime)  # replicas share the first one's simulator
    storage_port = urlsplit(runtime.store.public_url("b", "k")).port
    values: dict[str, Any] = {
        "worker_id": f"{runtime.settings.worker.id}-replica",
        "simulator_port": urlsplit(simulator.base_url).port,
        "storage_port": storage_port,
        **overrides,
    }
    async with open_runtime(changed(runtime.settings, **values), apply_migrations=False) as opened:
        yield opened


async def eventually(
    probe: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], *, within: float = 60.0
) -> Any:
    """Re-read state until ``check`` holds; fail with the last value seen after ``within`` seconds.

    This waits on an observable condition (a row's state), not on time: it returns the
    moment the condition holds.
    """
    last: Any = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await probe()
                if check(last):
                    return last
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"condition never held in {within} s; last value: {last!r}") from None


async def row_in(
    conn: asyncpg.Connection | asyncpg.Pool, stage: str, prompt: str = "x", **columns: Any
) -> Any:
    """A row in ``stage`` with ``columns`` set: inserted as a request, then moved there as
    the worker would move it (a new row may not arrive carrying a stage or a job)."""
    row_id = await conn.fetchval("insert into videos (prompt) values ($1) returning id", prompt)
    names = list(columns)
    assignments = "".join(f", {name} = ${n + 4}" for n, name in enumerate(names))
    await conn.execute(
        f"update videos set stage = $2, status = $3{assignments} where id = $1",
        row_id,
        stage,
        Stage(stage).status,
        *columns.values(),
    )
    return row_id
