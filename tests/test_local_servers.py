"""Replicas on one machine share the local simulator and storage, and survive the host."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.config import Settings
from service.core.request import VideoRequest
from service.local.sharing import PortTaken, SharedServer, instance_id
from service.local.storage_server import StorageServer
from service.runtime import Runtime, open_providers, open_runtime
from tests.conftest import eventually, make_settings


def ports_of(db_url: str, data_dir: Path, first: Runtime) -> Settings:
    """Settings naming the ports ``first`` bound (it asked for 0), as a sibling's would.

    Binding port 0 and passing on what was bound leaves no window in which another
    program could take a port picked in advance.
    """
    assert first.stand_in is not None
    storage_port = urlsplit(first.store.public_url("b", "k")).port
    assert storage_port is not None
    return make_settings(
        db_url, data_dir, simulator_port=first.stand_in.port, storage_port=storage_port
    )


async def test_a_second_replica_shares_the_hosts_simulator_and_storage(
    db_url: str, tmp_path: Path
) -> None:
    async with open_runtime(make_settings(db_url, tmp_path), apply_migrations=False) as first:
        settings = ports_of(db_url, tmp_path, first)
        async with open_runtime(settings, apply_migrations=False) as second:
            assert first.stand_in is not None and second.stand_in is None
            job = await second.providers.get(None).submit(
                VideoRequest(
                    prompt="shared",
                    model="sora-2",
                    size="720x1280",
                    seconds="4",
                    idempotency_key="k",
                )
            )
            # The job exists where the first replica can see it: one simulator.
            assert (await first.providers.get(None).retrieve(job.id)).id == job.id
            assert second.store.public_url("b", "k") == first.store.public_url("b", "k")
        async with open_runtime(settings, apply_migrations=False) as third:
            assert third.stand_in is None  # still shared: the first one hosts


async def test_a_sharer_takes_over_when_the_host_goes_away(tmp_path: Path) -> None:
    identity = instance_id(tmp_path)
    host = SharedServer(
        "storage",
        lambda: StorageServer(tmp_path),
        identity=identity,
        host="127.0.0.1",
        port=0,
        port_setting="SORA_STORAGE_PORT",
    )
    await host.open(flexible=False)
    port = host.port  # bound now; the sharer is told it, as a sibling's settings would
    sharer = SharedServer(
        "storage",
        lambda: StorageServer(tmp_path),
        identity=identity,
        host="127.0.0.1",
        port=port,
        port_setting="SORA_STORAGE_PORT",
    )
    await sharer.open(flexible=False)
    assert host.hosted is not None and sharer.hosted is None
    await host.close()
    await eventually(_noop, lambda _: sharer.hosted is not None, within=10)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/")
    assert response.headers["X-Sora-Worker-Instance"] == identity
    await sharer.close()


async def test_a_port_held_by_a_stranger_is_a_clear_error_or_moves_when_flexible(
    tmp_path: Path,
) -> None:
    stranger = StorageServer(tmp_path)
    await stranger.start(port=0)
    port = stranger.port
    try:
        ours = SharedServer(
            "simulator",
            lambda: StorageServer(tmp_path),
            identity=instance_id(tmp_path / "other"),
            host="127.0.0.1",
            port=port,
            port_setting="SORA_SIMULATOR_PORT",
        )
        with pytest.raises(PortTaken, match="SORA_SIMULATOR_PORT"):
            await ours.open(flexible=False)
        await ours.open(flexible=True)
        assert ours.hosted is not None and ours.port != port
        await ours.close()
    finally:
        await stranger.stop()


async def _noop() -> None:
    return None


async def test_a_stand_in_serves_the_default_provider_only_and_a_key_adds_its_real_host(
    db_url: str, tmp_path: Path
) -> None:
    unreached = "http://127.0.0.1:9"  # never called: building an adapter sends nothing
    settings = make_settings(
        db_url,
        tmp_path,
        provider="replicate",
        google_api_key="a-vertex-key",
        google_vertex_base_url=unreached,
    )
    async with open_providers(settings) as providers:
        assert "openai" not in providers  # no key, not the default: no simulator
        assert providers.where("google_veo") == unreached
        assert providers.host("replicate") == "127.0.0.1"  # its local fake


async def test_a_fakes_port_held_by_a_stranger_names_its_own_setting(
    db_url: str, tmp_path: Path
) -> None:
    stranger = StorageServer(tmp_path / "stranger")
    await stranger.start(port=0)
    try:
        settings = make_settings(
            db_url, tmp_path, provider="google_veo", veo_fake_port=stranger.port
        )
        with pytest.raises(PortTaken, match="set SORA_VEO_FAKE_PORT"):
            async with open_providers(settings):
                pass
    finally:
        await stranger.stop()
