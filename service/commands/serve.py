"""The long-running and setup commands: ``run`` (the worker), ``migrate``, ``simulate``
(the local Sora simulator alone) and ``health`` (the container's probe)."""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from contextlib import AsyncExitStack

import httpx
import structlog

from service.config import Settings
from service.database.migrations import load
from service.extras import local_extra
from service.providers.registry import SimulatorSettings
from service.runtime import migrate_and_say, open_pool, open_runtime
from service.signals import STOP_SIGNALS, until_signalled

log = structlog.get_logger("service.commands.serve")

STORAGE_POLICIES = "0005"
"""sql/0005_storage_buckets.sql: the buckets, and the policies that keep the public out."""


async def run_simulator(args: argparse.Namespace, settings: Settings) -> int:
    with local_extra("`sora-worker simulate` serves the local Sora simulator"):
        from service.local.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(
        generation_seconds=args.generation_seconds,
        state_dir=args.state_dir,
        profile=args.profile or settings.stand_ins.of("openai", SimulatorSettings).profile,
    )
    simulator = Simulator(config)
    await simulator.start(args.host, args.port)
    log.info(
        "simulator.listening",
        base_url=simulator.base_url,
        host=args.host,
        port=args.port,
        profile=config.profile,
    )
    try:
        await until_signalled()
    finally:
        await simulator.stop()
    return 0


FD_WANTED = 65536
"""Open files the worker asks for (up to the hard limit): its HTTP server caps its own
connections, and the rest must stay free for the database, providers and storage."""


def raise_fd_limit() -> None:
    """Take the soft limit of open files up to the hard one (often 1024 soft for 512k
    hard): no unit file or image setting is then needed for the worker to have room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_WANTED if hard == resource.RLIM_INFINITY else min(FD_WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("process.open_files_raised", soft_from=soft, soft_to=target)


async def run_worker(settings: Settings, *, migrate_first: bool, listen: bool) -> int:
    raise_fd_limit()
    local = settings.stand_ins
    if not settings.storage.uses_supabase and local.storage_port == 0 and not local.public_url:
        log.warning(
            "storage.ephemeral_port",
            message="SORA_STORAGE_PORT=0: video_url will name a port that dies with this "
            "process; set a fixed port or SORA_PUBLIC_URL for URLs that last",
        )
    async with open_runtime(
        settings, apply_migrations=migrate_first, wait_for_database=True
    ) as runtime:
        sources = await runtime.choose_wakeups(listen_allowed=listen)
        pushed = [runtime.realtime_source()] if sources.realtime else []
        worker = runtime.worker(listen=sources.listen, sources=pushed)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            # The first signal asks for a graceful stop; removing the handlers gives the
            # next Ctrl-C Python's default (KeyboardInterrupt: exit 130 at once), so an
            # operator who will not wait out SORA_SHUTDOWN_GRACE need not reach for kill.
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            worker.stop()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop)
        # Provider webhooks arrive on their own listener when SORA_WEBHOOK_PORT is set,
        # else on the same server as /metrics.
        receiver = await runtime.webhook_receiver(worker.wakeup)
        async with AsyncExitStack() as servers:
            routes = receiver.routes()
            if settings.http.webhook_port is not None:
                await servers.enter_async_context(runtime.webhook_server(routes))
                routes = []
            await servers.enter_async_context(runtime.http_server(worker, routes=routes))
            await worker.run()
    return 0


async def run_migrate(settings: Settings, *, storage_sql: bool = False) -> int:
    """Apply the migrations; ``storage_sql``: print, for the dashboard's SQL editor, the
    migration whose storage policies need the owner of storage.objects, and change
    nothing (docs/supabase.md)."""
    if storage_sql:
        print(next(m.sql for m in load() if m.version == STORAGE_POLICIES), end="")
        return 0
    async with open_pool(settings) as pool, pool.acquire() as conn:
        await migrate_and_say(conn)
    return 0


async def run_health(settings: Settings) -> int:
    """The container's HEALTHCHECK: this machine's worker answers /readyz with 200."""
    if settings.http.port == 0:
        print(
            "sora-worker: SORA_HTTP_PORT=0 gives the worker a random port; "
            "set a fixed SORA_HTTP_PORT to probe it",
            file=sys.stderr,
        )
        return 2
    host = settings.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.http.port}/readyz"
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            answer = await client.get(url)
    except httpx.HTTPError as err:
        print(f"sora-worker: not ready: {url}: {err or type(err).__name__}", file=sys.stderr)
        return 1
    print(answer.text)
    return 0 if answer.status_code == 200 else 1
