"""The composition root: the one place that picks and wires the adapters.

With no settings at all it runs everything on this machine: an embedded PostgreSQL,
the local Sora simulator (said loudly in the log: no real video is generated) and
local-disk storage served over HTTP. Each real service replaces its stand-in as soon
as its setting is given, and once any is given, a service left unset stops the start
instead of falling back (``service.config._stand_ins``; ``SORA_STAND_INS``). The
stand-ins (``service.local``, the ``local`` extra) are imported only when one is
needed, so a production worker never loads them.

By concern: the database (``_database``), the providers (``_providers``, one loop over
``service.providers.registry``), the store (``_store``); here, the ``Runtime`` that
holds them and builds workers from them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import httpx
import structlog
from aiohttp import web

from service.config import Settings, refuse
from service.core.costs import CostLimits
from service.core.job import Policy
from service.database.costs import write_limits
from service.database.health import Health
from service.database.limits import RateLimits
from service.database.operator import Operator
from service.database.postgres import PostgresRepository
from service.media import addresses, fetch
from service.providers import models
from service.providers.base import ProviderError, TellsWebhookSecret
from service.providers.lookup import Providers
from service.providers.registry import NAMES, REGISTRY, rate_rules
from service.runtime._database import (
    DatabaseRefused,
    DatabaseUnreachable,
    connecting,
    create_pool,
    database_url,
    keep_session,
    migrate_and_say,
    open_pool,
    patiently,
)
from service.runtime._providers import open_providers, providers_for
from service.runtime._store import open_store, store_for
from service.storage.base import ObjectStore
from service.wakeups import choice
from service.wakeups.listen import Listener
from service.wakeups.realtime import RealtimeSource
from service.wakeups.source import WakeupSource
from service.wakeups.wakeup import Wakeup
from service.web.server import WebhookHttp, WorkerHttp, WorkerProbe
from service.web.webhooks import WebhookReceiver
from service.worker.daemon import Worker, WorkerOptions
from service.worker.durations import DurationBook
from service.worker.steps import Defaults, Steps
from service.worker.webhook_health import WebhookHealth

if TYPE_CHECKING:
    from service.local.fake_host import FakeHost

__all__ = [
    "DatabaseRefused",
    "DatabaseUnreachable",
    "Runtime",
    "connecting",
    "create_pool",
    "database_url",
    "keep_session",
    "migrate_and_say",
    "open_pool",
    "open_providers",
    "open_runtime",
    "open_store",
    "patiently",
]

log = structlog.get_logger("service.runtime")


@dataclass
class Runtime:
    """Everything a command needs, opened and ready."""

    settings: Settings
    dsn: str
    pool: asyncpg.Pool
    repo: PostgresRepository
    providers: Providers
    store: ObjectStore
    http: httpx.AsyncClient
    stand_in: FakeHost | None = None
    """The local stand-in this process hosts for SORA_PROVIDER's provider (its key
    unset): the simulator or a fake. None when a replica hosts it, or for a real host."""
    own_photo_origins: frozenset[addresses.Origin] = frozenset()
    """The local storage server's origins: the one non-public place photos may come
    from without being listed (the demo's photos live there)."""
    webhook_health: WebhookHealth | None = None
    """Whose webhooks arrive; shared by the receiver and the workers' polls."""

    async def choose_wakeups(self, *, listen_allowed: bool = True) -> choice.Sources:
        """The push sources ``SORA_WAKEUPS`` asks for; ``auto`` probes LISTEN first."""
        mode = self.settings.worker.wakeups
        works = False
        if mode == "auto" and listen_allowed:
            works = await choice.listen_works(self.dsn)
        sources = choice.choose(
            mode,
            supabase=self.settings.storage.uses_supabase,
            listen_allowed=listen_allowed,
            listen_works=works,
        )
        log.info("wakeups.chosen", mode=mode, listen=sources.listen, realtime=sources.realtime)
        return sources

    def realtime_source(self) -> RealtimeSource:
        """Realtime on the project's URL with its service-role key."""
        storage = self.settings.storage
        assert storage.supabase_url is not None and storage.service_role_key is not None
        key = storage.service_role_key.get_secret_value()
        return RealtimeSource(storage.supabase_url, key)

    def worker(
        self,
        *,
        listen: bool = True,
        sources: Sequence[WakeupSource] = (),
        wakeup: Wakeup | None = None,
    ) -> Worker:
        """A worker woken by LISTEN (when ``listen``), ``sources`` (Realtime, ...) and
        its sweep. ``wakeup``: one a webhook receiver also sets (or build the receiver
        on ``worker.wakeup`` afterwards)."""
        s = self.settings
        steps = Steps(
            self.providers,
            self.store,
            defaults=Defaults(s.generation.default_model, s.generation.size, s.generation.seconds),
            video_bucket=s.storage.video_bucket,
            photo_limits=fetch.Limits(
                max_bytes=s.photos.max_bytes, timeout=s.photos.timeout.total_seconds()
            ),
            photo_access=fetch.Access(s.photos.allow_list, self.own_photo_origins),
            ledger=self.repo,
            webhooks=self.webhook_health,
            rendition_kbps=s.storage.rendition_bitrate,
            gate=self.repo,
            pace=RateLimits(self.pool, rate_rules(s.generation.rate_limits)),
            durations=DurationBook(self.repo, s.generation.timeout),
        )
        options = WorkerOptions(
            concurrency=s.worker.concurrency,
            sweep_interval=s.worker.sweep_interval.total_seconds(),
            lease_seconds=s.worker.lease.total_seconds(),
            shutdown_grace=s.worker.shutdown_grace.total_seconds(),
            policy=Policy(
                poll_interval=s.polls.interval,
                max_attempts=s.retries.max_attempts,
                retry_base=s.retries.base,
                retry_cap=s.retries.cap,
                generation_timeout=s.generation.timeout,
                poll_ceiling=max(s.polls.ceiling, s.polls.interval),
                typical_generation=s.polls.typical_generation,
                poll_lateness=s.polls.lateness,
            ),
        )
        pushed = [Listener(self.dsn)] if listen else []
        return Worker(self.repo, steps, options, sources=[*pushed, *sources], wakeup=wakeup)

    async def webhook_receiver(self, wakeup: Wakeup) -> WebhookReceiver:
        """The webhook routes for the worker's HTTP server; ``wakeup`` is the worker's.

        Mount with ``app.add_routes((await runtime.webhook_receiver(worker.wakeup)).routes())``.
        ``/webhooks/{provider}`` verifies with the provider's own secret setting
        (SORA_OPENAI_WEBHOOK_SECRET, SORA_REPLICATE_WEBHOOK_SECRET); without one, with
        the secret the host itself tells (Replicate, through its SDK) when this worker
        asks for webhooks (SORA_WEBHOOK_URL).
        """
        secrets: dict[str, str] = {}
        for provider in REGISTRY:
            own = self.settings.providers.of(provider.name).webhook_secret
            if own is not None:
                secrets[provider.name] = own.get_secret_value()
            elif self.settings.http.webhook_url and provider.name in self.providers:
                adapter = self.providers.get(provider.name)
                if not isinstance(adapter, TellsWebhookSecret):
                    continue
                try:
                    secrets[provider.name] = await adapter.webhook_secret()
                except ProviderError as err:
                    # Polling still finishes every row; the worker must start regardless.
                    log.warning(
                        "webhooks.secret_unavailable", provider=provider.name, error=str(err)
                    )
        assert self.webhook_health is not None, "open_runtime sets it"
        return WebhookReceiver(secrets, self.repo, wakeup, self.webhook_health)

    @property
    def operator(self) -> Operator:
        """The operator's statements (reads of whole rows, the verbs) on this pool."""
        return Operator(self.pool)

    def http_server(self, worker: Worker, routes: Iterable[web.RouteDef] = ()) -> WorkerHttp:
        """The worker's HTTP server (/metrics, /healthz, /readyz) plus ``routes``."""
        http = self.settings.http
        probe = WorkerProbe(worker, Health(self.pool))
        token = http.metrics_token.get_secret_value() if http.metrics_token else None
        return WorkerHttp(http.host, http.port, probe, routes=routes, metrics_token=token)

    def webhook_server(self, routes: Iterable[web.RouteDef]) -> WebhookHttp:
        """Provider webhooks on a listener of their own (SORA_WEBHOOK_HOST/PORT)."""
        http = self.settings.http
        assert http.webhook_port is not None
        return WebhookHttp(http.webhook_host, http.webhook_port, routes)


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    apply_migrations: bool = True,
    stand_in_configs: Mapping[str, object] | None = None,
    flexible_ports: bool = False,
    wait_for_database: bool = False,
) -> AsyncIterator[Runtime]:
    """Open the database, the providers and the store that the settings call for.

    ``stand_in_configs``: how each provider's local stand-in behaves, by provider name
    (a ``SimulatorConfig`` for openai, a ``VeoConfig``, a ``ReplicateConfig``).
    ``flexible_ports`` lets the local servers move to a free port when theirs is taken
    (the demo, run beside a worker); a daemon must keep its configured ports instead,
    because the URLs it writes into rows name them. ``wait_for_database``: a daemon
    started before its database (compose, a reboot) waits for it instead of exiting.
    """
    # Every service the settings leave to a stand-in that may not serve, said at once,
    # before anything is opened: production never falls back to one.
    refuse(settings)
    async with AsyncExitStack() as stack:
        dsn = await database_url(settings)
        # Rows hold no connection while they wait on the provider, so a few
        # connections serve many rows (Supabase's free plan allows 60 in all).
        size = settings.database.pool_size
        if wait_for_database:
            pool = await patiently(lambda: create_pool(settings, dsn, size), dsn)
        else:
            with connecting(dsn):
                pool = await create_pool(settings, dsn, size)
        stack.push_async_callback(pool.close)
        if apply_migrations:
            async with pool.acquire() as conn:
                await migrate_and_say(conn)

        timeout = settings.photos.timeout.total_seconds()
        http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0))
        stack.push_async_callback(http.aclose)
        stand_in, providers = await providers_for(settings, stack, flexible_ports, stand_in_configs)
        async with pool.acquire() as conn:
            await write_limits(conn, cost_limits(settings, providers), settings.worker.id)
        store, own_origins = await store_for(settings, stack, flexible_ports)
        yield Runtime(
            settings=settings,
            dsn=dsn,
            pool=pool,
            repo=PostgresRepository(pool, settings.worker.id, settings.worker.lease),
            providers=providers,
            store=store,
            http=http,
            stand_in=stand_in,
            own_photo_origins=own_origins,
            webhook_health=WebhookHealth(settings.polls.with_webhooks),
        )


def cost_limits(settings: Settings, providers: Providers) -> CostLimits:
    """What rows may ask for and spend (docs/security.md), from the settings and the
    model registry; written into the database at every start (``write_limits``)."""
    generation, costs = settings.generation, settings.costs
    return CostLimits(
        allowed=models.allowlist(
            costs.allowed_models,
            providers.names,
            (generation.provider, generation.default_model),
            NAMES,
        ),
        default_provider=generation.provider,
        default_model=generation.default_model,
        default_size=generation.size,
        default_seconds=generation.seconds,
        user_daily_videos=costs.user_daily_videos,
        user_daily_seconds=costs.user_daily_seconds,
        daily_budget_usd=costs.daily_budget_usd,
        unknown_usd_per_second=models.UNKNOWN_USD_PER_SECOND,
        public_prompts=costs.public_prompts,
    )
