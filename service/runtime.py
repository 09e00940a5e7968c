"""The composition root: the one place that picks and wires the adapters.

With no settings at all it runs everything on this machine: an embedded PostgreSQL,
the local Sora simulator (said loudly in the log: no real video is generated) and
local-disk storage served over HTTP. Each real service replaces its stand-in as soon
as its setting is given. The stand-ins (``service.local``, the ``local`` extra) are
imported only when one is needed, so a production worker never loads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg
import httpx
import structlog
from aiohttp import web

from service.config import DEFAULT_MODELS, Settings
from service.core.costs import CostLimits
from service.core.job import Policy
from service.database.costs import write_limits
from service.database.health import Health
from service.database.migrations import migrate
from service.database.operator import Operator
from service.database.postgres import PostgresRepository
from service.extras import local_extra
from service.media import fetch
from service.providers import models
from service.providers.base import ProviderError
from service.providers.lookup import Providers
from service.providers.openai_videos import OpenAIVideos
from service.storage.base import ObjectStore
from service.storage.local import PARTIAL_MAX_AGE, LocalStore, remove_stale_partials
from service.storage.supabase import SupabaseStore, default_bucket_specs
from service.wakeups import choice
from service.wakeups.listen import Listener
from service.wakeups.realtime import RealtimeSource
from service.wakeups.wakeup import Wakeup
from service.web.server import WorkerHttp, WorkerProbe
from service.web.webhooks import WebhookReceiver
from service.worker.daemon import Worker, WorkerOptions
from service.worker.steps import Defaults, Steps
from service.worker.webhook_health import WebhookHealth

if TYPE_CHECKING:
    from service.local.fake_host import FakeHost
    from service.local.replicate_server import ReplicateConfig
    from service.local.simulator import Simulator, SimulatorConfig
    from service.local.veo_server import VeoConfig
    from service.providers.google_veo import GoogleVeo
    from service.providers.replicate_videos import ReplicateVideos

log = structlog.get_logger("service.runtime")

SIMULATOR_KEY = "sk-local-simulator"
FAKE_KEY = "local-fake-key"


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
    simulator: Simulator | None
    own_photo_origins: frozenset[fetch.Origin] = frozenset()
    """The local storage server's origins: the one non-public place photos may come
    from without being listed (the demo's photos live there)."""
    provider_fake: FakeHost | None = None
    """The local Veo or Replicate fake this process hosts (SORA_PROVIDER without a key)."""
    webhook_health: WebhookHealth | None = None
    """Whose webhooks arrive; shared by the receiver and the workers' polls."""

    async def choose_wakeups(self, *, listen_allowed: bool = True) -> choice.Sources:
        """The push sources ``SORA_WAKEUPS`` asks for; ``auto`` probes LISTEN first."""
        s = self.settings
        works = False
        if s.wakeups == "auto" and listen_allowed:
            works = await choice.listen_works(self.dsn)
        sources = choice.choose(
            s.wakeups, supabase=s.uses_supabase, listen_allowed=listen_allowed, listen_works=works
        )
        log.info("wakeups.chosen", mode=s.wakeups, listen=sources.listen, realtime=sources.realtime)
        return sources

    def realtime_source(self) -> RealtimeSource:
        """Realtime on the project's URL with its service-role key; ``worker()`` shares
        its Wakeup with LISTEN."""
        s = self.settings
        assert s.supabase_url is not None and s.supabase_service_role_key is not None
        key = s.supabase_service_role_key.get_secret_value()
        return RealtimeSource(s.supabase_url, key, Wakeup())

    def worker(
        self,
        *,
        listen: bool = True,
        realtime: RealtimeSource | None = None,
        wakeup: Wakeup | None = None,
    ) -> Worker:
        """A worker; ``realtime`` (built on its Wakeup) runs beside LISTEN when given.

        ``wakeup``: the one a webhook receiver sets (``webhook_receiver``); realtime's
        own Wakeup wins when both are given (build the receiver on ``worker.wakeup``).
        """
        s = self.settings
        steps = Steps(
            self.providers,
            self.store,
            defaults=Defaults(s.provider_model, s.default_size, s.default_seconds),
            video_bucket=s.video_bucket,
            photo_limits=fetch.Limits(max_bytes=s.image_max_bytes, timeout=s.image_timeout),
            photo_access=fetch.Access(s.image_allow_list, self.own_photo_origins),
            ledger=self.repo,
            webhooks=self.webhook_health,
            rendition_kbps=s.rendition_bitrate,
            gate=self.repo,
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
                generation_timeout=timedelta(seconds=s.generation_timeout),
                poll_ceiling=max(timedelta(seconds=s.poll_ceiling), s.poll_delay),
                typical_generation=None
                if s.typical_generation_seconds is None
                else timedelta(seconds=s.typical_generation_seconds),
            ),
        )
        wakeup = realtime.wakeup if realtime is not None else (wakeup or Wakeup())
        listener = Listener(self.dsn, wakeup) if listen else None
        return Worker(self.repo, steps, options, listener=listener, realtime=realtime)

    async def webhook_receiver(self, wakeup: Wakeup) -> WebhookReceiver:
        """The webhook routes for the worker's HTTP server; ``wakeup`` is the worker's.

        Mount with ``app.add_routes((await runtime.webhook_receiver(worker.wakeup)).routes())``.
        Secrets: SORA_OPENAI_WEBHOOK_SECRET for ``/webhooks/openai``; for
        ``/webhooks/replicate`` SORA_REPLICATE_WEBHOOK_SECRET, else Replicate's own
        (asked through the SDK) when this worker asks Replicate for webhooks.
        """
        s = self.settings
        secrets: dict[str, str] = {}
        if s.openai_webhook_secret is not None:
            secrets["openai"] = s.openai_webhook_secret.get_secret_value()
        if s.replicate_webhook_secret is not None:
            secrets["replicate"] = s.replicate_webhook_secret.get_secret_value()
        elif s.webhook_url and "replicate" in self.providers:
            from service.providers.replicate_videos import ReplicateVideos

            replicate = self.providers.get("replicate")
            assert isinstance(replicate, ReplicateVideos)
            try:
                secrets["replicate"] = await replicate.webhook_secret()
            except ProviderError as err:
                # Polling still finishes every row; the worker must start regardless.
                log.warning("webhooks.secret_unavailable", provider="replicate", error=str(err))
        assert self.webhook_health is not None, "open_runtime sets it"
        return WebhookReceiver(secrets, self.repo, wakeup, self.webhook_health)

    @property
    def operator(self) -> Operator:
        """The operator's statements (reads of whole rows, the verbs) on this pool."""
        return Operator(self.pool)

    def http_server(self, worker: Worker, routes: Iterable[web.RouteDef] = ()) -> WorkerHttp:
        """The worker's HTTP server (/metrics, /healthz, /readyz) plus ``routes``."""
        s = self.settings
        probe = WorkerProbe(worker, Health(self.pool))
        return WorkerHttp(s.http_host, s.http_port, probe, routes=routes)


async def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    with local_extra(
        "DATABASE_URL is unset, so sora-worker would start an embedded PostgreSQL",
        "set DATABASE_URL",
    ):
        from service.local.embedded import start_embedded_postgres

        dsn = start_embedded_postgres(settings.data_dir)
    log.info("database.embedded", data_dir=str(settings.data_dir.resolve() / "pg"))
    return dsn


def create_pool(settings: Settings, dsn: str, max_size: int) -> asyncpg.Pool:
    """A pool as the settings ask (no prepared statements behind a transaction pooler)."""
    return asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        statement_cache_size=100 if settings.prepared_statements else 0,
        reset=keep_session,
    )


async def keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to undo, so no round trip.

    asyncpg's default runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release: one more round trip (four statements) for every statement the
    worker runs through the pool, doubling the database's work per checkpoint. The
    worker's pooled sessions never change session state: no SET, no cursors left open,
    no session advisory locks (migrations take transaction-scoped ones), and LISTEN has
    its own connection. asyncpg still rolls back a transaction left open (a cancelled
    task) before this is called, and terminates the connection if that fails.
    """


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    apply_migrations: bool = True,
    simulator_config: SimulatorConfig | None = None,
    flexible_ports: bool = False,
    wait_for_database: bool = False,
    veo_config: VeoConfig | None = None,
    replicate_config: ReplicateConfig | None = None,
) -> AsyncIterator[Runtime]:
    """Open the database, the provider and the store that the settings call for.

    ``flexible_ports`` lets the local servers move to a free port when theirs is taken
    (the demo, run beside a worker); a daemon must keep its configured ports instead,
    because the URLs it writes into rows name them. ``wait_for_database``: a daemon
    started before its database (compose, a reboot) waits for it instead of exiting.
    """
    async with AsyncExitStack() as stack:
        dsn = await database_url(settings)
        # Rows hold no connection while they wait on the provider, so a few
        # connections serve many rows (Supabase's free plan allows 60 in all).
        if wait_for_database:
            pool = await _patiently(lambda: create_pool(settings, dsn, settings.pool_size))
        else:
            pool = await create_pool(settings, dsn, settings.pool_size)
        stack.push_async_callback(pool.close)
        if apply_migrations:
            async with pool.acquire() as conn:
                applied = await migrate(conn)
            if applied:
                log.info("database.migrated", applied=applied)

        http = httpx.AsyncClient(timeout=httpx.Timeout(settings.image_timeout, connect=5.0))
        stack.push_async_callback(http.aclose)
        simulator, fake, providers = await _open_providers(
            settings, stack, flexible_ports, simulator_config, veo_config, replicate_config
        )
        async with pool.acquire() as conn:
            await write_limits(conn, cost_limits(settings, providers), settings.worker_id)
        store, own_origins = await _open_store(settings, stack, flexible_ports)
        yield Runtime(
            settings=settings,
            dsn=dsn,
            pool=pool,
            repo=PostgresRepository(pool, settings.worker_id, settings.lease),
            providers=providers,
            store=store,
            http=http,
            simulator=simulator,
            own_photo_origins=own_origins,
            provider_fake=fake,
            webhook_health=WebhookHealth(timedelta(seconds=settings.webhook_poll_interval)),
        )


NOT_UP_YET = (
    OSError,
    TimeoutError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
"""What a database that is starting, restarting or full answers; anything else (a wrong
password, an unknown database) is a setting to fix, and is said at once."""


async def _patiently(connect: Callable[[], Awaitable[asyncpg.Pool]]) -> asyncpg.Pool:
    """Connect, waiting (with capped backoff, said once and then every 30 s) while the
    database is not up yet."""
    pause, waited, said_at = 0.25, 0.0, -1.0
    while True:
        try:
            pool = await connect()
        except NOT_UP_YET as err:
            if said_at < 0 or waited - said_at >= 30:
                said_at = waited
                log.warning(
                    "database.waiting",
                    error=str(err) or type(err).__name__,
                    waited_s=round(waited, 1),
                    message="the database is not reachable yet; retrying until it is",
                )
            await asyncio.sleep(pause)
            waited += pause
            pause = min(pause * 2, 2.0)
            continue
        if waited:
            log.info("database.ready", waited_s=round(waited, 1))
        return pool


async def _open_providers(
    settings: Settings,
    stack: AsyncExitStack,
    flexible_ports: bool,
    simulator_config: SimulatorConfig | None,
    veo_config: VeoConfig | None,
    replicate_config: ReplicateConfig | None,
) -> tuple[Simulator | None, FakeHost | None, Providers]:
    """Every adapter this worker can serve rows with, by name (one ``add`` each): each
    provider whose key is set, and SORA_PROVIDER's (its local stand-in when its key is
    unset). A stand-in is never registered for a provider that is not the default, so a
    production worker cannot send a row to a simulator by accident."""
    providers = Providers(default=settings.provider)
    stack.push_async_callback(providers.aclose)
    simulator: Simulator | None = None
    fake: FakeHost | None = None
    if settings.provider == "openai" or settings.openai_api_key is not None:
        simulator, base_url, api_key = await _videos_host(
            settings, stack, simulator_config, flexible_ports
        )
        openai_videos = OpenAIVideos(api_key, base_url, timeout=settings.provider_timeout)
        providers.add(openai_videos, openai_videos.base_url)
        log.info("provider.openai", base_url=openai_videos.base_url, model=settings.model)
        await openai_videos.probe()  # can it list its jobs? said in the log either way
    keys = {"google_veo": settings.google_api_key, "replicate": settings.replicate_api_token}
    for name, key in keys.items():
        if settings.provider == name or key is not None:
            hosted, adapter = await _open_other_provider(
                name, settings, stack, flexible_ports, veo_config, replicate_config
            )
            fake = fake or hosted
            providers.add(adapter, adapter.base_url)
    return simulator, fake, providers


async def _videos_host(
    settings: Settings,
    stack: AsyncExitStack,
    simulator_config: SimulatorConfig | None,
    flexible_ports: bool,
) -> tuple[Simulator | None, str | None, str]:
    """The /v1/videos host and key: the settings', or the local simulator's."""
    if settings.openai_api_key is not None:
        return None, settings.openai_base_url, settings.openai_api_key.get_secret_value()
    with local_extra(
        "OPENAI_API_KEY is unset, so sora-worker would start the local Sora simulator",
        "set OPENAI_API_KEY (and OPENAI_BASE_URL)",
    ):
        from service.local.sharing import SharedServer, instance_id
        from service.local.simulator import Simulator, SimulatorConfig

    config = replace(
        simulator_config or SimulatorConfig(profile=settings.simulator_profile),
        state_dir=settings.data_dir / "simulator",
    )
    shared = SharedServer(
        "simulator",
        lambda: Simulator(config),
        identity=instance_id(settings.data_dir),
        host="127.0.0.1",
        port=settings.simulator_port,
        suffix="/v1",
    )
    await shared.open(flexible=flexible_ports)
    stack.push_async_callback(shared.close)
    log.warning(
        "provider.simulator",
        message="OPENAI_API_KEY is unset: using the LOCAL SORA SIMULATOR. Videos are "
        "synthetic test clips; set OPENAI_API_KEY (and OPENAI_BASE_URL) for real ones.",
        base_url=shared.base_url,
        profile=config.profile,
    )
    return shared.hosted, shared.base_url, SIMULATOR_KEY


async def _open_other_provider(
    name: str,
    settings: Settings,
    stack: AsyncExitStack,
    flexible_ports: bool,
    veo_config: VeoConfig | None,
    replicate_config: ReplicateConfig | None,
) -> tuple[FakeHost | None, GoogleVeo | ReplicateVideos]:
    """Veo or Replicate: the real host when its key is set, else its local fake (on
    SORA_VEO_FAKE_PORT / SORA_REPLICATE_FAKE_PORT, each its own, so the simulator and
    both fakes can run side by side; shared by replicas like the simulator).

    The SDKs are imported here, not at the top: a worker on the OpenAI shape does not
    carry google-genai and replicate in memory (about 19 MB of RSS).
    """
    from service.providers.google_veo import GoogleVeo
    from service.providers.replicate_videos import ReplicateVideos

    provider: GoogleVeo | ReplicateVideos
    webhook = (
        f"{settings.webhook_url.rstrip('/')}/webhooks/replicate" if settings.webhook_url else None
    )
    timeout = settings.provider_timeout
    if name == "google_veo" and settings.google_api_key is not None:
        provider = GoogleVeo(
            settings.google_api_key.get_secret_value(), settings.google_base_url, timeout=timeout
        )
        log.info("provider.google_veo", base_url=provider.base_url)
        return None, provider
    if name == "replicate" and settings.replicate_api_token is not None:
        provider = ReplicateVideos(
            settings.replicate_api_token.get_secret_value(),
            settings.replicate_base_url,
            timeout=timeout,
            cancel_after=timedelta(seconds=settings.generation_timeout),
            webhook_url=webhook,
        )
        log.info("provider.replicate", base_url=provider.base_url)
        return None, provider
    key_name = "GOOGLE_API_KEY" if name == "google_veo" else "REPLICATE_API_TOKEN"
    with local_extra(
        f"{key_name} is unset, so sora-worker would start the local {name} fake",
        f"set {key_name}",
    ):
        from service.local.replicate_server import ReplicateConfig, ReplicateServer
        from service.local.sharing import SharedServer, instance_id
        from service.local.veo_server import VeoConfig, VeoServer

    make: Callable[[], FakeHost]
    if name == "google_veo":
        veo = veo_config or VeoConfig()
        make = lambda: VeoServer(veo)  # noqa: E731
    else:
        rep = replicate_config or ReplicateConfig()
        make = lambda: ReplicateServer(rep)  # noqa: E731
    shared = SharedServer(
        f"{name}_fake",
        make,
        # Another fake kind on the port is a stranger, not a sibling to share.
        identity=f"{instance_id(settings.data_dir)}:{name}",
        host="127.0.0.1",
        port=settings.veo_fake_port if name == "google_veo" else settings.replicate_fake_port,
    )
    await shared.open(flexible=flexible_ports)
    stack.push_async_callback(shared.close)
    log.warning(
        f"provider.{name}_fake",
        message=f"{key_name} is unset: using the LOCAL {name.upper()} FAKE. Videos "
        f"are synthetic test clips; set {key_name} for real ones.",
        base_url=shared.base_url,
    )
    if name == "google_veo":
        provider = GoogleVeo(FAKE_KEY, shared.base_url, timeout=timeout)
    else:
        provider = ReplicateVideos(
            FAKE_KEY,
            shared.base_url,
            timeout=timeout,
            cancel_after=timedelta(seconds=settings.generation_timeout),
            webhook_url=webhook,
        )
    return shared.hosted, provider


@asynccontextmanager
async def open_providers(settings: Settings) -> AsyncIterator[Providers]:
    """The providers alone, as the settings call for them (``cancel``, ``doctor``);
    without a key, the local stand-in a worker on this data directory shares."""
    async with AsyncExitStack() as stack:
        _, _, providers = await _open_providers(
            settings,
            stack,
            flexible_ports=False,
            simulator_config=None,
            veo_config=None,
            replicate_config=None,
        )
        yield providers


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[ObjectStore]:
    """The store alone, as the settings call for it (``request`` uploads photos with it).

    The local store shares a running worker's storage server (same data directory and
    port), or serves until the command ends; its URLs stay valid either way, because
    every worker on that data directory serves the same files on the same port.
    """
    async with AsyncExitStack() as stack:
        store, _ = await _open_store(settings, stack, flexible_ports=False)
        yield store


async def _open_store(
    settings: Settings, stack: AsyncExitStack, flexible_ports: bool
) -> tuple[ObjectStore, frozenset[fetch.Origin]]:
    if settings.supabase_url is not None and settings.supabase_service_role_key is not None:
        # Its own HTTP client: uploads need a longer read timeout than photo fetches.
        supabase = SupabaseStore(
            settings.supabase_url, settings.supabase_service_role_key.get_secret_value()
        )
        stack.push_async_callback(supabase.aclose)
        await supabase.ensure_buckets(
            default_bucket_specs(settings.video_bucket, settings.image_bucket)
        )
        log.info("storage.supabase", url=supabase.url, bucket=settings.video_bucket)
        return supabase, frozenset()
    with local_extra(
        "SUPABASE_URL is unset, so sora-worker would serve videos from its local storage server",
        "set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY",
    ):
        from service.local.sharing import SharedServer, instance_id
        from service.local.storage_server import StorageServer

    root = settings.data_dir / "storage"
    root.mkdir(parents=True, exist_ok=True)
    removed = await asyncio.to_thread(remove_stale_partials, root, PARTIAL_MAX_AGE)
    if removed:
        log.info("storage.partials_removed", count=removed)
    shared = SharedServer(
        "storage",
        lambda: StorageServer(root),
        identity=instance_id(settings.data_dir),
        host=settings.storage_host,
        port=settings.storage_port,
    )
    await shared.open(flexible=flexible_ports)
    stack.push_async_callback(shared.close)
    log.info("storage.local", root=str(root.resolve()), url=shared.base_url)
    # Its exact origins (where it listens, and where its URLs point) and nothing else.
    own = {fetch.origin_of(shared.base_url)}
    if settings.public_url:
        own.add(fetch.origin_of(settings.public_url))
    return LocalStore(root, settings.public_url or shared.base_url), frozenset(own)


def cost_limits(settings: Settings, providers: Providers) -> CostLimits:
    """What rows may ask for and spend (docs/security.md), from the settings and the
    model registry; written into the database at every start (``write_limits``)."""
    return CostLimits(
        allowed=models.allowlist(
            settings.allowed_models,
            providers.names,
            (settings.provider, settings.provider_model),
            DEFAULT_MODELS,
        ),
        default_provider=settings.provider,
        default_model=settings.provider_model,
        default_size=settings.default_size,
        default_seconds=settings.default_seconds,
        user_daily_videos=settings.user_daily_videos,
        user_daily_seconds=settings.user_daily_seconds,
        daily_budget_usd=settings.daily_budget_usd,
        unknown_usd_per_second=models.UNKNOWN_USD_PER_SECOND,
        public_prompts=settings.public_prompts,
    )
