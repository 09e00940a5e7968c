"""The groups of settings: what each part of the worker is told, with its environment
names, default and description (``service.setting.setting``).

The production groups come first; the stand-ins' settings (data directory, the local
storage server, each provider's local fake) sit in a group of their own, last. Each
provider's own group (key, host, webhook secret) and its stand-in's are declared beside
its registry entry (``service.providers.registry``) and composed here, one field per
entry, so that adding a provider needs no line in this package.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, create_model, field_validator
from pydantic_core import PydanticCustomError

from service.config import dsn
from service.core.rates import parse_rate_limits
from service.core.request import SIZE_PATTERN
from service.providers.models import parse_allowed
from service.providers.registry import (
    NAMES,
    REGISTRY,
    SPELLINGS,
    ProviderSettings,
    StandInSettings,
    provider_named,
)
from service.setting import Duration, Group, Port, Seconds, setting

S = TypeVar("S", bound=StandInSettings)


def _listed(names: tuple[str, ...]) -> str:
    """'a', 'b' or 'c', as pydantic lists a Literal's values."""
    quoted = [f"'{name}'" for name in names]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


class DatabaseSettings(Group):
    url: SecretStr | None = setting(
        None,
        env="DATABASE_URL",
        description="PostgreSQL URL (postgresql://USER:PASSWORD@HOST:5432/DATABASE, the "
        "password percent-encoded); unset: an embedded server under SORA_DATA_DIR, on a "
        "trial only (SORA_STAND_INS).",
    )
    pool_size: int = setting(
        10,
        env="SORA_POOL_SIZE",
        ge=2,
        le=200,
        description="Most database connections one worker opens.",
    )
    prepared_statements: bool = setting(
        True,
        env="SORA_PREPARED_STATEMENTS",
        description="Set false behind a transaction pooler (Supavisor :6543, PgBouncer).",
    )

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: SecretStr | None) -> SecretStr | None:
        said = None if value is None else dsn.problem(value.get_secret_value())
        if said is not None:
            raise ValueError(said)  # never the value: it holds the password
        return value


class GenerationSettings(Group):
    provider: str = setting(
        "openai",
        env="SORA_PROVIDER",
        description="Video generator for new rows: "
        + ", ".join(f"{p.name} ({p.summary})" for p in REGISTRY)
        + ". A row keeps the provider it was submitted with.",
    )
    model: str | None = setting(
        None,
        env="SORA_MODEL",
        description="Default model for rows that name none; unset: the provider's own ("
        + ", ".join(f"{p.default_model} on {p.name}" for p in REGISTRY)
        + ").",
    )
    size: str = setting(
        "720x1280",
        env="SORA_DEFAULT_SIZE",
        description="Default WIDTHxHEIGHT for rows that name none.",
    )
    seconds: str = setting(
        "4", env="SORA_DEFAULT_SECONDS", description="Default clip length for rows that name none."
    )
    call_timeout: Duration = setting(
        timedelta(seconds=120),
        env="SORA_PROVIDER_TIMEOUT",
        description="Seconds one call to the provider may take (create included).",
    )
    timeout: Duration = setting(
        timedelta(hours=3),
        env="SORA_GENERATION_TIMEOUT",
        description="Seconds a provider may take before the row is failed.",
    )
    rate_limits: str = setting(
        "",
        env="SORA_RATE_LIMITS",
        description="Request limits per minute every replica shares, over the registry's "
        "(Replicate 600 creates/3000 other calls, Vertex 50 creates per Veo model): "
        "PROVIDER[:MODEL]=CREATES[/OTHERS], separated by commas, 0 for none (e.g. "
        "openai=20/600,replicate=300). Turns are spaced for 90 % of each.",
    )
    delivery_hosts: str = setting(
        "",
        env="SORA_DELIVERY_HOSTS",
        description="More hosts a provider's videos may be downloaded from (names, or "
        ".suffix for a domain), besides its API's own and its known delivery hosts "
        "(replicate.delivery); public addresses only (e.g. a relay's CDN).",
    )
    video_max_bytes: int = setting(
        2 * 1024**3,
        env="SORA_VIDEO_MAX_BYTES",
        gt=0,
        description="Largest file taken from a provider (a video or thumbnail).",
    )

    @field_validator("provider", mode="before")
    @classmethod
    def _known_provider(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if value not in SPELLINGS:
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": _listed(NAMES)}
            )
        return SPELLINGS[value]  # "veo" is google_veo

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits_shape(cls, value: str) -> str:
        parse_rate_limits(value, NAMES)  # raises ValueError naming the bad entry
        return value

    @field_validator("delivery_hosts")
    @classmethod
    def _delivery_hosts_shape(cls, value: str) -> str:
        for host in _hosts(value):
            if not host.strip(".") or any(c in host for c in "/:@ "):
                raise ValueError(f"{host!r} is not a host name or .suffix (e.g. .example-cdn.com)")
        return value

    @property
    def delivery_host_list(self) -> tuple[str, ...]:
        return _hosts(self.delivery_hosts)

    @field_validator("size")
    @classmethod
    def _size_shape(cls, value: str) -> str:
        if not SIZE_PATTERN.match(value):
            raise ValueError("must look like 720x1280 (WIDTHxHEIGHT)")
        return value

    @field_validator("seconds")
    @classmethod
    def _seconds_shape(cls, value: str) -> str:
        if not value.isdigit() or int(value) < 1:
            raise ValueError("must be a whole number of seconds, like 4")
        return value

    @property
    def default_model(self) -> str:
        """The model a row that names none gets: SORA_MODEL, else the provider's own."""
        return self.model or provider_named(self.provider).default_model


def _hosts(text: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in text.split(",") if h.strip())


class CostSettings(Group):
    """What the public may ask for and spend (docs/security.md). Written into the
    database (``sora_worker.settings``) at every start, where the insert checks read them."""

    allowed_models: str = setting(
        "default",
        env="SORA_ALLOWED_MODELS",
        description="Provider:model pairs rows may name, separated by commas; 'default' is "
        "every model the registry knows for the configured providers (e.g. "
        "default,openai:my-gateway-model). The default model is always allowed; other "
        "rows are refused at insert.",
    )
    user_daily_videos: int = setting(
        5,
        env="SORA_USER_DAILY_VIDEOS",
        ge=0,
        description="Videos one signed-in person may ask for per UTC day.",
    )
    user_daily_seconds: int = setting(
        60,
        env="SORA_USER_DAILY_SECONDS",
        ge=0,
        description="Seconds of video one signed-in person may ask for per UTC day.",
    )
    daily_budget_usd: float = setting(
        20.0,
        env="SORA_DAILY_BUDGET_USD",
        ge=0,
        description="Estimated US dollars all videos together may cost per UTC day (the "
        "registry's prices; unknown ones count as the dearest). People's requests beyond "
        "it are refused at insert; any row beyond it waits for the next day.",
    )
    public_prompts: bool = setting(
        False,
        env="SORA_PUBLIC_PROMPTS",
        description="Show prompts in the public gallery view videos_public.",
    )

    @field_validator("allowed_models")
    @classmethod
    def _allowed_models_shape(cls, value: str) -> str:
        parse_allowed(value, NAMES)  # raises ValueError naming the bad entry
        return value


class PollSettings(Group):
    interval: Duration = setting(
        timedelta(seconds=5),
        env="SORA_POLL_INTERVAL",
        description="Fewest seconds between two status polls of a job (the floor).",
    )
    ceiling: Duration = setting(
        timedelta(seconds=60),
        env="SORA_POLL_CEILING",
        description="Most seconds between two status polls of a job; between floor and "
        "ceiling, polls follow the provider's openai-poll-after-ms or the job's own pace.",
    )
    typical_generation: Duration | None = setting(
        None,
        env="SORA_TYPICAL_GENERATION_SECONDS",
        description="How long the model usually takes, until its durations are learnt from "
        "finished rows; a job with no progress yet is next polled when it should be done "
        "(unset: after half the time it has taken so far).",
    )
    lateness: float = setting(
        0.1,
        env="SORA_POLL_LATENESS",
        gt=0,
        le=1,
        description="The share of its running time a finished job may wait for its "
        "permanent URL (never less than SORA_POLL_INTERVAL): polls are spaced by 90 % of "
        "it and the archive has the rest. Smaller: finished videos reach their rows "
        "sooner, for more polls.",
    )
    with_webhooks: Duration = setting(
        timedelta(seconds=60),
        env="SORA_WEBHOOK_POLL_INTERVAL",
        description="Seconds between polls of a job whose provider's webhooks are seen to "
        "arrive (polling stays as the safety net).",
    )


class WorkerSettings(Group):
    id: str = setting(
        env="SORA_WORKER_ID",
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}",
        shown="host:pid",
        description="Name written into locked_by; defaults to host:pid.",
    )
    concurrency: int = setting(
        16, env="SORA_CONCURRENCY", ge=1, le=1000, description="Rows one worker handles at once."
    )
    lease: Duration = setting(
        timedelta(seconds=30),
        env="SORA_LEASE_SECONDS",
        description="How long a claim lasts without a heartbeat before others take it.",
    )
    sweep_interval: Duration = setting(
        timedelta(seconds=30),
        env="SORA_SWEEP_INTERVAL",
        description="Seconds between sweeps for work that no notification announced.",
    )
    wakeups: Literal["auto", "listen", "realtime", "both", "none"] = setting(
        "auto",
        env="SORA_WAKEUPS",
        description="Push wake-ups besides the sweep: LISTEN, Supabase Realtime, both or none; "
        "auto: both when SUPABASE_URL is set and LISTEN works, else what works.",
    )
    shutdown_grace: Annotated[timedelta, Seconds(ge=0)] = setting(
        timedelta(seconds=30),
        env="SORA_SHUTDOWN_GRACE",
        description="Seconds to let in-flight steps finish after SIGTERM.",
    )


class RetrySettings(Group):
    max_attempts: int = setting(
        6,
        env="SORA_MAX_ATTEMPTS",
        ge=1,
        description="Transient failures of one step before the row is failed.",
    )
    base: Duration = setting(
        timedelta(seconds=2),
        env="SORA_RETRY_BASE",
        description="First retry delay, doubled per attempt.",
    )
    cap: Duration = setting(
        timedelta(seconds=300), env="SORA_RETRY_CAP", description="Longest retry delay."
    )


class _ProviderGroups(Group):
    """Each provider's own settings, one group per registry entry (composed below)."""

    def of(self, name: str) -> ProviderSettings:
        """``name``'s group: ``settings.providers.of("openai").api_key``."""
        group = getattr(self, name)
        assert isinstance(group, ProviderSettings), name
        return group


class _StandInGroups(Group):
    """The local stand-ins: whether they may serve at all (``mode``, read by every worker),
    and how, which a worker whose settings name real services never reads.

    Besides these, one group per provider's local fake (composed below).
    """

    mode: Literal["auto", "allow", "never"] = setting(
        "auto",
        env="SORA_STAND_INS",
        description="When an unset service may be replaced by its local stand-in (embedded "
        "PostgreSQL, a provider's simulator, local-disk storage on loopback URLs): auto: "
        "only on a trial, when none of DATABASE_URL, SUPABASE_URL, SORA_STORAGE or a "
        "provider's key or base URL is set; allow: always (tests, a trial on your own "
        "PostgreSQL); never. Otherwise an unset service stops the worker, naming it.",
    )
    data_dir: Path = setting(
        Path(".sora-worker"),
        env="SORA_DATA_DIR",
        description="Embedded database, simulator state and local storage live here.",
    )
    storage_host: str = setting(
        "127.0.0.1", env="SORA_STORAGE_HOST", description="Address the local storage server binds."
    )
    storage_port: Port = setting(
        8090,
        env="SORA_STORAGE_PORT",
        description="Port of the local storage server.",
    )
    public_url: str | None = setting(
        None,
        env="SORA_PUBLIC_URL",
        description="Public base URL of the local storage server, if behind a proxy.",
    )

    def of(self, name: str, kind: type[S]) -> S:
        """The settings of ``name``'s stand-in: ``stand_ins.of("openai", SimulatorSettings)``."""
        group = getattr(self, name)
        assert isinstance(group, kind), name
        return group


def _composed(base: type[Group], groups: dict[str, type[Group]]) -> Any:
    """``base`` with a field per provider, each its own group at its defaults."""
    fields: dict[str, Any] = {
        name: (group, Field(default_factory=group)) for name, group in groups.items()
    }
    name = base.__name__.removeprefix("_")
    return create_model(name, __base__=base, __module__=__name__, **fields)


if TYPE_CHECKING:  # the type checker reads the bases; pydantic validates the composed
    ProviderGroups = _ProviderGroups
    StandInGroups = _StandInGroups
else:
    ProviderGroups = _composed(_ProviderGroups, {p.name: p.settings for p in REGISTRY})
    StandInGroups = _composed(_StandInGroups, {p.name: p.stand_in.settings for p in REGISTRY})
