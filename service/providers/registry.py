"""The video providers a worker can generate with: one entry each.

An entry says what the rest of the worker needs to know about a provider without
importing its SDK: its name, its own settings (key, host, webhook secret), where its
adapter is built, the model rows get when they name none, and which local stand-in
serves it when its key is unset. ``service.config`` composes the settings from these
entries and ``service.runtime`` builds every adapter from them in one loop; so a
provider is its adapter module (with its ``open_adapter``) plus one entry here, with its
settings group (and, for a stand-in, a fake in ``service.local`` and the group of
settings the fake reads).

Adapters and stand-ins are named by import path ("module:attribute"), not imported:
a worker on the OpenAI shape never loads google-genai (about 17 MB of RSS) or
replicate, and ``service.local`` is imported only when a stand-in is really needed
(``service.extras.local_extra`` guards that import).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol

from pydantic import SecretStr

from service.core.rates import RateRules, parse_rate_limits, rules_from
from service.media.delivery import Delivery
from service.providers.base import VideoProvider
from service.providers.models import MODELS
from service.setting import Group, Port, env_names, setting


class ProviderSettings(Group):
    """What a provider's own group holds; each provider declares the environment names.

    An unset key means the provider's local stand-in (only for ``SORA_PROVIDER``'s
    provider, see ``service.runtime``); an unset base URL, the adapter's own default.
    """

    api_key: SecretStr | None = None
    base_url: str | None = None
    webhook_secret: SecretStr | None = None
    """The ``whsec_...`` secret its webhooks are signed with (``/webhooks/{name}``)."""


class StandInSettings(Group):
    """What a provider's local stand-in is told: at least the port it listens on."""

    port: int = 0


@dataclass(frozen=True)
class AdapterOptions:
    """What the worker's settings give every adapter beside its key and host."""

    timeout: timedelta
    """How long one call to the provider may take (SORA_PROVIDER_TIMEOUT)."""
    generation_timeout: timedelta
    """How long a whole job may take (SORA_GENERATION_TIMEOUT)."""
    webhook_url: str | None
    """This worker's public base URL (SORA_WEBHOOK_URL), for hosts that report to it."""
    delivery: Delivery
    """How the provider's files are downloaded (its delivery hosts, guarded like photos);
    the adapter adds its own API origin (``Delivery.with_origin``)."""
    allowed_models: frozenset[str] | None = None
    """The models rows may ask this provider for (SORA_ALLOWED_MODELS); None: any."""


@dataclass(frozen=True)
class Rates:
    """A host's request limits, per minute, for one API key or project: creates, and
    every other call (status polls, lists). ``per_model``: creates are limited per model
    (``ModelSpec.creates_per_minute``), as Vertex AI does. None: not published, or the
    gateway's own (set SORA_RATE_LIMITS)."""

    creates_per_minute: int | None = None
    others_per_minute: int | None = None
    per_model: bool = False
    source: str = "unknown"


class Adapter(VideoProvider, Protocol):
    """A ``VideoProvider`` as the wiring holds it: it says where it sends requests."""

    base_url: str


OpenAdapter = Callable[[str, str | None, AdapterOptions], Awaitable[Adapter]]
"""``open_adapter(api_key, base_url, options)`` in each adapter module."""


@dataclass(frozen=True)
class StandIn:
    """The local fake that serves a provider whose key is unset."""

    name: str
    """Its name in the log (``provider.{name}``) and between replicas sharing it."""
    what: str
    """How messages name it: "local Sora simulator"."""
    server: str
    """``module:function`` in ``service.local``: ``(settings, data_dir, config)`` to a
    function that makes the server (again, when a replica takes a dead one's port)."""
    settings: type[StandInSettings]
    key: str = "local-fake-key"
    """The key the adapter presents to it (the fakes take any)."""
    suffix: str = ""
    """What follows host:port in the base URL the adapter is given (``/v1``)."""


@dataclass(frozen=True)
class Provider:
    """One provider a worker can generate with."""

    name: str
    """Its adapter's ``name``, the rows' ``provider`` and ``SORA_PROVIDER``'s value."""
    settings: type[ProviderSettings]
    adapter: str
    """``module:function`` of its ``OpenAdapter``, imported when the provider is used."""
    default_model: str
    """What a row that names no model gets when SORA_MODEL is unset."""
    summary: str
    """What it is, for ``--help``: "Veo on Vertex AI"."""
    stand_in: StandIn
    host_gone: str = ""
    """Why the SDK's default host will not do, when it is gone: then a key goes with a
    base URL, and a key without one is refused at start."""
    aliases: tuple[str, ...] = ()
    """Other spellings SORA_PROVIDER and ``demo --provider`` accept."""
    delivery_hosts: tuple[str, ...] = ()
    """Hosts its files are served from besides its API's own (names or ``.suffix``)."""
    default_host: str = ""
    """The host its SDK talks to when no base URL is set (for retirements per host)."""
    rates: Rates = Rates()
    """Its request limits (``service.database.limits`` keeps every replica under them)."""

    @property
    def key_name(self) -> str:
        """The environment variable of its key: "GOOGLE_API_KEY"."""
        return env_names(self.settings.model_fields["api_key"])[0]

    @property
    def to_set(self) -> str:
        """What an operator sets for the real host: "OPENAI_API_KEY (and OPENAI_BASE_URL)"."""
        if not self.host_gone:
            return self.key_name
        return f"{self.key_name} (and {env_names(self.settings.model_fields['base_url'])[0]})"

    async def open_adapter(
        self, api_key: str, base_url: str | None, options: AdapterOptions
    ) -> Adapter:
        """Its adapter for ``base_url`` (None: the SDK's default host) and ``api_key``."""
        open_adapter: OpenAdapter = load(self.adapter)
        return await open_adapter(api_key, base_url, options)


def load(path: str) -> Any:
    """The attribute a ``module:attribute`` path names, importing the module now."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


# ---------------------------------------------------------------- OpenAI Videos API shape


class OpenAISettings(ProviderSettings):
    api_key: SecretStr | None = setting(
        None,
        env="OPENAI_API_KEY",
        description="API key of the /v1/videos provider; unset runs the local Sora simulator.",
    )
    base_url: str | None = setting(
        None,
        env="OPENAI_BASE_URL",
        description="Base URL of a /v1/videos provider (OpenAI, a LiteLLM or new-api gateway).",
    )
    webhook_secret: SecretStr | None = setting(
        None,
        env="SORA_OPENAI_WEBHOOK_SECRET",
        description="whsec_... secret of an OpenAI-shaped host's video.completed/failed "
        "webhooks, delivered to /webhooks/openai.",
    )


class SimulatorSettings(StandInSettings):
    port: Port = setting(
        8089, env="SORA_SIMULATOR_PORT", description="Port of the local simulator."
    )
    profile: Literal["openai", "litellm", "litellm-keyed", "new-api", "new-api-xai"] = setting(
        "openai",
        env="SORA_SIMULATOR_PROFILE",
        description="Which host the local simulator behaves as: OpenAI itself, a LiteLLM "
        "proxy (litellm-keyed: with keys per model), a new-api gateway (new-api-xai: "
        "relaying xAI), with their quirks as measured or reported.",
    )


# ---------------------------------------------------------------- Google Veo (Vertex AI)


class GoogleVeoSettings(ProviderSettings):
    api_key: SecretStr | None = setting(
        None,
        env=("GOOGLE_API_KEY", "GEMINI_API_KEY"),
        description="Vertex AI API key for Veo (express mode); unset runs the local Veo fake.",
    )
    base_url: str | None = setting(
        None,
        env="GOOGLE_VERTEX_BASE_URL",
        description="Vertex AI base URL (default https://aiplatform.googleapis.com).",
    )
    webhook_secret: None = None  # Veo sends no webhooks


class VeoFakeSettings(StandInSettings):
    port: Port = setting(
        8092,
        env="SORA_VEO_FAKE_PORT",
        description="Port of the local Veo fake (no GOOGLE_API_KEY).",
    )


# ---------------------------------------------------------------- Replicate


class ReplicateSettings(ProviderSettings):
    api_key: SecretStr | None = setting(
        None,
        env="REPLICATE_API_TOKEN",
        description="Replicate API token; unset runs the local Replicate fake.",
    )
    base_url: str | None = setting(
        None,
        env="REPLICATE_BASE_URL",
        description="Replicate API base URL (default https://api.replicate.com).",
    )
    webhook_secret: SecretStr | None = setting(
        None,
        env="SORA_REPLICATE_WEBHOOK_SECRET",
        description="whsec_... secret of Replicate's webhooks; unset: asked of Replicate "
        "(GET /v1/webhooks/default/secret) when SORA_WEBHOOK_URL is set.",
    )


class ReplicateFakeSettings(StandInSettings):
    port: Port = setting(
        8093,
        env="SORA_REPLICATE_FAKE_PORT",
        description="Port of the local Replicate fake (no REPLICATE_API_TOKEN).",
    )


REGISTRY: tuple[Provider, ...] = (
    Provider(
        "openai",
        OpenAISettings,
        "service.providers.openai_videos:open_adapter",
        default_model="sora-2",
        summary="any /v1/videos host",
        stand_in=StandIn(
            "simulator",
            "local Sora simulator",
            "service.local.simulator.server:stand_in",
            SimulatorSettings,
            key="sk-local-simulator",
            suffix="/v1",
        ),
        host_gone="OpenAI's own Videos API was shut down on 2026-09-24; set it to a host "
        "that serves /v1/videos (a LiteLLM or new-api gateway)",
        default_host="api.openai.com",
    ),
    Provider(
        "google_veo",
        GoogleVeoSettings,
        "service.providers.google_veo:open_adapter",
        default_model="veo-3.1-generate-001",
        summary="Veo on Vertex AI",
        stand_in=StandIn(
            "google_veo_fake",
            "local google_veo fake",
            "service.local.veo_server:stand_in",
            VeoFakeSettings,
        ),
        aliases=("veo",),
        default_host="aiplatform.googleapis.com",
        # Vertex AI: 50 creates a minute per project and model for the GA models, 10 for
        # the previews (the registry's per-model figures); the video comes back inline.
        rates=Rates(per_model=True, source="Vertex AI Veo 3.1 model page (2026-12)"),
    ),
    Provider(
        "replicate",
        ReplicateSettings,
        "service.providers.replicate_videos:open_adapter",
        default_model="google/veo-3.1",
        summary="video models on Replicate",
        stand_in=StandIn(
            "replicate_fake",
            "local replicate fake",
            "service.local.replicate_server:stand_in",
            ReplicateFakeSettings,
        ),
        delivery_hosts=("replicate.delivery", ".replicate.delivery"),  # as the adapter's
        default_host="api.replicate.com",
        rates=Rates(
            creates_per_minute=600,
            others_per_minute=3000,
            source="replicate.com/docs/topics/predictions/rate-limits (2026-12)",
        ),
    ),
)
"""Every provider, in the order the worker opens them."""

NAMES = tuple(provider.name for provider in REGISTRY)
SPELLINGS = {
    spelling: provider.name
    for provider in REGISTRY
    for spelling in (provider.name, *provider.aliases)
}
"""Every name SORA_PROVIDER accepts, to the provider's name."""


def rate_rules(overrides: str = "") -> RateRules:
    """The request limits every replica shares: each provider's (``Provider.rates``),
    each model's where its host limits per model (``ModelSpec.creates_per_minute``),
    then ``overrides`` (SORA_RATE_LIMITS) over them."""
    defaults: dict[str, tuple[int | None, int | None]] = {}
    for provider in REGISTRY:
        rates = provider.rates
        if rates.creates_per_minute or rates.others_per_minute:
            defaults[provider.name] = (rates.creates_per_minute, rates.others_per_minute)
        if rates.per_model:
            for spec in MODELS.values():
                if spec.provider == provider.name and spec.creates_per_minute:
                    defaults[f"{provider.name}:{spec.name}"] = (spec.creates_per_minute, None)
    return rules_from(defaults, parse_rate_limits(overrides, NAMES))


def provider_named(name: str) -> Provider:
    """The entry of ``name`` (a name or an alias); KeyError for none."""
    wanted = SPELLINGS[name]
    return next(provider for provider in REGISTRY if provider.name == wanted)
