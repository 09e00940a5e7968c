"""The object store a worker archives into: Supabase when its settings are given, else
the local storage server (a stand-in) serving files under the data directory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog

from service.config import Settings, allowed, refuse
from service.extras import local_extra
from service.media import addresses
from service.storage.base import ObjectStore
from service.storage.local import PARTIAL_MAX_AGE, LocalStore, remove_stale_partials
from service.storage.supabase import SupabaseStore, default_bucket_specs

log = structlog.get_logger("service.runtime")


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[ObjectStore]:
    """The store alone, as the settings call for it (``request`` uploads photos with it).

    The local store shares a running worker's storage server (same data directory and
    port), or serves until the command ends; its URLs stay valid either way, because
    every worker on that data directory serves the same files on the same port.
    """
    async with AsyncExitStack() as stack:
        store, _ = await store_for(settings, stack, flexible_ports=False)
        yield store


async def store_for(
    settings: Settings, stack: AsyncExitStack, flexible_ports: bool
) -> tuple[ObjectStore, frozenset[addresses.Origin]]:
    """The store, closed with ``stack``, and the origins of photos it serves itself."""
    storage = settings.storage
    if storage.supabase_url is not None and storage.service_role_key is not None:
        # Its own HTTP client: uploads need a longer read timeout than photo fetches.
        supabase = SupabaseStore(storage.supabase_url, storage.service_role_key.get_secret_value())
        stack.push_async_callback(supabase.aclose)
        await supabase.ensure_buckets(
            default_bucket_specs(storage.video_bucket, storage.image_bucket)
        )
        log.info("storage.supabase", url=supabase.url, bucket=storage.video_bucket)
        return supabase, frozenset()
    refuse(settings, "storage")
    with local_extra(
        "SUPABASE_URL is unset, so sora-worker would serve videos from its local storage server",
        "set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY",
    ):
        from service.local.sharing import SharedServer, instance_id
        from service.local.storage_server import StorageServer

    local = settings.stand_ins
    root = local.data_dir / "storage"
    root.mkdir(parents=True, exist_ok=True)
    removed = await asyncio.to_thread(remove_stale_partials, root, PARTIAL_MAX_AGE)
    if removed:
        log.info("storage.partials_removed", count=removed)
    shared = SharedServer(
        "storage",
        lambda: StorageServer(root),
        identity=instance_id(local.data_dir),
        host=local.storage_host,
        port=local.storage_port,
        port_setting="SORA_STORAGE_PORT",
    )
    await shared.open(flexible=flexible_ports)
    stack.push_async_callback(shared.close)
    if storage.backend == "local" and not allowed(settings):
        log.info("storage.local", root=str(root.resolve()), url=local.public_url)
    else:
        log.warning(
            "storage.local",
            message="SUPABASE_URL is unset: videos are stored on THIS MACHINE's disk and "
            "served from its own address (a trial); set SUPABASE_URL for real ones",
            root=str(root.resolve()),
            url=local.public_url or shared.base_url,
        )
    # Its exact origins (where it listens, and where its URLs point) and nothing else.
    own = {addresses.origin_of(shared.base_url)}
    if local.public_url:
        own.add(addresses.origin_of(local.public_url))
    return LocalStore(root, local.public_url or shared.base_url), frozenset(own)
