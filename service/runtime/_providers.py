"""The video providers a worker serves rows with: one loop over the registry.

Each provider whose key is set gets its real host; ``SORA_PROVIDER``'s provider, when
its key is unset, gets its local stand-in (the simulator, or a fake), said loudly in the
log. A stand-in is never registered for a provider that is not the default, so a
production worker cannot send a row to a simulator by accident. Adapters and stand-ins
are imported here, only when used: a worker on the OpenAI shape does not carry
google-genai and replicate in memory, and a production one never loads
``service.local``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from service.config import Settings, refuse
from service.extras import local_extra
from service.media.delivery import Delivery
from service.providers import models
from service.providers.lookup import Providers
from service.providers.registry import (
    NAMES,
    REGISTRY,
    AdapterOptions,
    Provider,
    StandInSettings,
    load,
)
from service.setting import env_names

if TYPE_CHECKING:
    from service.local.fake_host import FakeHost
    from service.local.sharing import SharedServer

    StandInMaker = Callable[[Any, Path, Any], Callable[[], FakeHost]]
    """A ``StandIn.server`` function: settings, data directory, config to a maker."""

log = structlog.get_logger("service.runtime")


@asynccontextmanager
async def open_providers(settings: Settings) -> AsyncIterator[Providers]:
    """The providers alone, as the settings call for them (``cancel``, ``doctor``);
    without a key, the local stand-in a worker on this data directory shares."""
    async with AsyncExitStack() as stack:
        _, providers = await providers_for(settings, stack, flexible_ports=False)
        yield providers


async def providers_for(
    settings: Settings,
    stack: AsyncExitStack,
    flexible_ports: bool,
    stand_in_configs: Mapping[str, object] | None = None,
) -> tuple[FakeHost | None, Providers]:
    """Every adapter this worker can serve rows with, by name, closed with ``stack``,
    and the stand-in this process hosts, if any.

    ``stand_in_configs``: how a provider's stand-in behaves, by provider name (a
    ``SimulatorConfig`` for openai, a ``VeoConfig``, a ``ReplicateConfig``).
    """
    default = settings.generation.provider
    providers = Providers(default=default)
    stack.push_async_callback(providers.aclose)
    hosted: FakeHost | None = None
    for provider in REGISTRY:
        options = adapter_options(settings, provider)
        own = settings.providers.of(provider.name)
        if own.api_key is not None:
            key, base_url = own.api_key.get_secret_value(), own.base_url
        elif provider.name == default:
            config = (stand_in_configs or {}).get(provider.name)
            shared = await _stand_in(provider, settings, stack, flexible_ports, config)
            hosted, key, base_url = shared.hosted, provider.stand_in.key, shared.base_url
        else:
            continue
        adapter = await provider.open_adapter(key, base_url, options)
        providers.add(adapter, adapter.base_url)
        log.info(f"provider.{provider.name}", base_url=adapter.base_url)
    return hosted, providers


def adapter_options(settings: Settings, provider: Provider) -> AdapterOptions:
    """What ``provider``'s adapter is told: timeouts, webhooks, where its files may come
    from (its delivery hosts and SORA_DELIVERY_HOSTS), and which models rows may ask it
    for (SORA_ALLOWED_MODELS)."""
    generation = settings.generation
    allowed = models.allowlist(
        settings.costs.allowed_models,
        {provider.name},
        (generation.provider, generation.default_model),
        NAMES,
    )
    return AdapterOptions(
        timeout=generation.call_timeout,
        generation_timeout=generation.timeout,
        webhook_url=settings.http.webhook_url,
        delivery=Delivery(
            (*provider.delivery_hosts, *generation.delivery_host_list),
            max_bytes=generation.video_max_bytes,
            timeout=generation.call_timeout.total_seconds(),
        ),
        allowed_models=frozenset(m.model for m in allowed if m.provider == provider.name),
    )


async def _stand_in(
    provider: Provider,
    settings: Settings,
    stack: AsyncExitStack,
    flexible_ports: bool,
    config: object | None,
) -> SharedServer[FakeHost]:
    """``provider``'s local stand-in on its own port (so the simulator and the fakes can
    run side by side), hosted here or shared with a replica on this data directory."""
    stand_in = provider.stand_in
    refuse(settings, "provider")
    with local_extra(
        f"{provider.key_name} is unset, so sora-worker would start the {stand_in.what}",
        f"set {provider.to_set}",
    ):
        from service.local.sharing import SharedServer, instance_id

        make: StandInMaker = load(stand_in.server)
    told = settings.stand_ins.of(provider.name, StandInSettings)
    data_dir = settings.stand_ins.data_dir
    shared = SharedServer(
        stand_in.name,
        make(told, data_dir, config),
        # Another kind of stand-in on the port is a stranger, not a sibling to share.
        identity=f"{instance_id(data_dir)}:{stand_in.name}",
        host="127.0.0.1",
        port=told.port,
        port_setting=env_names(type(told).model_fields["port"])[0],
        suffix=stand_in.suffix,
    )
    await shared.open(flexible=flexible_ports)
    stack.push_async_callback(shared.close)
    log.warning(
        f"provider.{stand_in.name}",
        message=f"{provider.key_name} is unset: using the {stand_in.what.upper()}. Videos "
        f"are synthetic test clips; set {provider.to_set} for real ones.",
        base_url=shared.base_url,
        **told.model_dump(exclude={"port"}),  # what else it was told (the simulator's profile)
    )
    return shared
