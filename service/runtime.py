"""The composition root: the one place that picks and wires the adapters.

With no settings at all it runs everything on this machine: an embedded PostgreSQL,
the local Sora simulator (said loudly in the log: no real video is generated) and
local-disk storage served over HTTP. Each real service replaces its stand-in as soon
as its setting is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import httpx
import structlog

from service import images
from service.config import Settings
from service.daemon import Worker, WorkerOptions
from service.embedded import start_embedded_postgres
from service.events.listen import Listener
from service.events.wakeup import Wakeup
from service.machine import Policy
from service.migrations import migrate
from service.providers.base import VideoProvider
from service.providers.openai_videos import OpenAIVideos
from service.repository import Repository
from service.simulator import Simulator, SimulatorConfig
from service.steps import Buckets, Defaults, Steps
from service.storage.base import ObjectStore
from service.storage.local import LocalStore
from service.storage.server import StorageServer

log = structlog.get_logger("service.runtime")

SIMULATOR_KEY = "sk-local-simulator"


@dataclass
class Runtime:
    """Everything a command needs, opened and ready."""

    settings: Settings
    dsn: str
    pool: asyncpg.Pool
    repo: Repository
    provider: VideoProvider
    store: ObjectStore
    http: httpx.AsyncClient
    simulator: Simulator | None
    storage_server: StorageServer | None

    def worker(self, *, listen: bool = True) -> Worker:
        s = self.settings
        steps = Steps(
            self.provider,
            self.store,
            self.http,
            defaults=Defaults(s.model, s.default_size, s.default_seconds),
            buckets=Buckets(videos=s.video_bucket, images=s.image_bucket),
            image_limits=images.Limits(max_bytes=s.image_max_bytes, timeout=s.image_timeout),
            known_video_ids=self.repo.known_video_ids,
        )
        options = WorkerOptions(
            concurrency=s.concurrency,
            sweep_interval=s.sweep_interval,
            lease_seconds=s.lease_seconds,
            shutdown_grace=s.shutdown_grace,
            policy=Policy(
                poll_interval=s.poll_delay,
                max_attempts=s.max_attempts,
                retry_base=timedelta(seconds=s.retry_base),
                retry_cap=timedelta(seconds=s.retry_cap),
            ),
        )
        listener = Listener(self.dsn, Wakeup()) if listen else None
        return Worker(self.repo, steps, options, listener=listener)


async def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    dsn = start_embedded_postgres(settings.data_dir)
    log.info("database.embedded", data_dir=str(settings.data_dir.resolve() / "pg"))
    return dsn


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    apply_migrations: bool = True,
    simulator_config: SimulatorConfig | None = None,
) -> AsyncIterator[Runtime]:
    """Open the database, the provider and the store that the settings call for."""
    async with AsyncExitStack() as stack:
        dsn = await database_url(settings)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=settings.concurrency + 4)
        stack.push_async_callback(pool.close)
        if apply_migrations:
            async with pool.acquire() as conn:
                applied = await migrate(conn)
            if applied:
                log.info("database.migrated", applied=applied)

        http = httpx.AsyncClient(timeout=httpx.Timeout(settings.image_timeout, connect=5.0))
        stack.push_async_callback(http.aclose)

        simulator: Simulator | None = None
        provider: VideoProvider
        if settings.uses_simulator:
            config = simulator_config or SimulatorConfig(state_dir=settings.data_dir / "simulator")
            simulator = Simulator(config)
            await simulator.start(port=settings.simulator_port)
            stack.push_async_callback(simulator.stop)
            log.warning(
                "provider.simulator",
                message="OPENAI_API_KEY is unset: using the LOCAL SORA SIMULATOR. "
                "Videos are synthetic test clips; set OPENAI_API_KEY (and OPENAI_BASE_URL) "
                "to generate real ones.",
                base_url=simulator.base_url,
            )
            provider = OpenAIVideos(SIMULATOR_KEY, simulator.base_url)
        else:
            assert settings.openai_api_key is not None
            provider = OpenAIVideos(
                settings.openai_api_key.get_secret_value(), settings.openai_base_url
            )
            log.info("provider.openai", base_url=provider.base_url, model=settings.model)
        stack.push_async_callback(provider.aclose)

        storage_server: StorageServer | None = None
        root = settings.data_dir / "storage"
        root.mkdir(parents=True, exist_ok=True)
        storage_server = StorageServer(root, settings.storage_host, settings.storage_port)
        await storage_server.start()
        stack.push_async_callback(storage_server.stop)
        store: ObjectStore = LocalStore(root, settings.public_url or storage_server.base_url)
        log.info("storage.local", root=str(root.resolve()), url=storage_server.base_url)

        yield Runtime(
            settings=settings,
            dsn=dsn,
            pool=pool,
            repo=Repository(pool, settings.worker_id, settings.lease),
            provider=provider,
            store=store,
            http=http,
            simulator=simulator,
            storage_server=storage_server,
        )
