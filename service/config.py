"""Settings, read once from the environment.

Why pydantic-settings: every setting is typed, has a default that lets the worker run
with no configuration at all (embedded PostgreSQL, the local Sora simulator, local-disk
storage), and shows up in ``sora-worker --help``. The well-known names that other tools
already use (``DATABASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``SUPABASE_URL``,
``SUPABASE_SERVICE_ROLE_KEY``) are read as they are; the worker's own knobs start with
``SORA_``. A misspelt ``SORA_`` variable is an error, not a silently ignored typo.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import textwrap
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.media.fetch import parse_host_ports
from service.providers.models import parse_allowed

ENV_PREFIX = "SORA_"
REMOVED_SETTINGS = {
    "SORA_IMAGE_PRIVATE_HOSTS": "SORA_IMAGE_PRIVATE_HOSTS was removed: photos on loopback "
    "and private networks are refused unless listed in SORA_IMAGE_ALLOW_HOSTS "
    "(host:port,host:port); the local storage server needs no entry",
}
DEFAULT_MODELS = {
    "openai": "sora-2",
    "google_veo": "veo-3.1-generate-preview",
    "replicate": "google/veo-3.1",
}
"""What a row names no model gets, per provider, when SORA_MODEL is unset."""
SIZE_PATTERN = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")


class SettingsError(ValueError):
    """The environment holds a setting the worker cannot use; the message says which."""


def _plain(name: str) -> AliasChoices:
    """Read a setting from its well-known, unprefixed environment name."""
    return AliasChoices(name)


class Settings(BaseSettings):
    """Everything the worker can be told. Durations are seconds in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        env_ignore_empty=True,  # compose passes unset variables as empty strings
    )

    # Where the rows live. Unset: an embedded PostgreSQL under data_dir.
    database_url: SecretStr | None = Field(
        None,
        validation_alias=_plain("DATABASE_URL"),
        description="PostgreSQL URL; unset starts an embedded server under SORA_DATA_DIR.",
    )
    # The video generator (OpenAI Videos API shape). Unset key: the local simulator.
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=_plain("OPENAI_API_KEY"),
        description="API key of the /v1/videos provider; unset runs the local Sora simulator.",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=_plain("OPENAI_BASE_URL"),
        description="Base URL of a /v1/videos provider (OpenAI, a LiteLLM or new-api gateway).",
    )
    # Providers besides the OpenAI shape (issue 15). Unset keys: their local fakes.
    provider: Literal["openai", "google_veo", "replicate"] = Field(
        "openai",
        description="Video generator for new rows: openai (any /v1/videos host), "
        "google_veo (Veo on Vertex AI) or replicate. A row keeps the provider it was "
        "submitted with.",
    )
    google_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GOOGLE_API_KEY", "GEMINI_API_KEY"),
        description="Vertex AI API key for Veo (express mode); unset runs the local Veo fake.",
    )
    google_base_url: str | None = Field(
        None,
        validation_alias=_plain("GOOGLE_VERTEX_BASE_URL"),
        description="Vertex AI base URL (default https://aiplatform.googleapis.com).",
    )
    replicate_api_token: SecretStr | None = Field(
        None,
        validation_alias=_plain("REPLICATE_API_TOKEN"),
        description="Replicate API token; unset runs the local Replicate fake.",
    )
    replicate_base_url: str | None = Field(
        None,
        validation_alias=_plain("REPLICATE_BASE_URL"),
        description="Replicate API base URL (default https://api.replicate.com).",
    )
    webhook_url: str | None = Field(
        None,
        description="Public base URL of this worker's HTTP server; Replicate predictions "
        "then report to {SORA_WEBHOOK_URL}/webhooks/replicate.",
    )
    replicate_webhook_secret: SecretStr | None = Field(
        None,
        description="whsec_... secret of Replicate's webhooks; unset: asked of Replicate "
        "(GET /v1/webhooks/default/secret) when SORA_WEBHOOK_URL is set.",
    )
    openai_webhook_secret: SecretStr | None = Field(
        None,
        description="whsec_... secret of an OpenAI-shaped host's video.completed/failed "
        "webhooks, delivered to /webhooks/openai.",
    )
    webhook_poll_interval: float = Field(
        60.0,
        gt=0,
        description="Seconds between polls of a job whose provider's webhooks are seen to "
        "arrive (polling stays as the safety net).",
    )

    supabase_url: str | None = Field(
        None,
        validation_alias=_plain("SUPABASE_URL"),
        description="Supabase project URL; unset stores videos on local disk.",
    )
    supabase_service_role_key: SecretStr | None = Field(
        None,
        validation_alias=_plain("SUPABASE_SERVICE_ROLE_KEY"),
        description="Supabase service-role key (never logged).",
    )

    wakeups: Literal["auto", "listen", "realtime", "both", "none"] = Field(
        "auto",
        description="Push wake-ups besides the sweep: LISTEN, Supabase Realtime, both or none; "
        "auto: both when SUPABASE_URL is set and LISTEN works, else what works.",
    )

    model: str = Field("sora-2", description="Default model for rows that name none.")
    default_size: str = Field(
        "720x1280", description="Default WIDTHxHEIGHT for rows that name none."
    )
    default_seconds: str = Field("4", description="Default clip length for rows that name none.")

    # What the public may ask for and spend (issue 23, docs/security.md). Written into the
    # database (sora_worker.settings) at every start, where the insert checks read them.
    allowed_models: str = Field(
        "default",
        description="Provider:model pairs rows may name, separated by commas; 'default' is "
        "every model the registry knows for the configured providers (e.g. "
        "default,openai:my-gateway-model). The default model is always allowed; other "
        "rows are refused at insert.",
    )
    user_daily_videos: int = Field(
        5, ge=0, description="Videos one signed-in person may ask for per UTC day."
    )
    user_daily_seconds: int = Field(
        60, ge=0, description="Seconds of video one signed-in person may ask for per UTC day."
    )
    daily_budget_usd: float = Field(
        20.0,
        ge=0,
        description="Estimated US dollars all videos together may cost per UTC day (the "
        "registry's prices; unknown ones count as the dearest). People's requests beyond "
        "it are refused at insert; any row beyond it waits for the next day.",
    )
    public_prompts: bool = Field(
        False, description="Show prompts in the public gallery view videos_public."
    )

    @field_validator("allowed_models")
    @classmethod
    def _allowed_models_shape(cls, value: str) -> str:
        parse_allowed(value, DEFAULT_MODELS)  # raises ValueError naming the bad entry
        return value

    poll_interval: float = Field(
        5.0, gt=0, description="Fewest seconds between two status polls of a job (the floor)."
    )
    poll_ceiling: float = Field(
        60.0,
        gt=0,
        description="Most seconds between two status polls of a job; between floor and "
        "ceiling, polls follow the provider's openai-poll-after-ms or the job's own pace.",
    )
    typical_generation_seconds: float | None = Field(
        None,
        gt=0,
        description="How long the model usually takes; a job with no progress yet is next "
        "polled when it should be done (unset: after half the time it has taken so far).",
    )
    sweep_interval: float = Field(
        30.0, gt=0, description="Seconds between sweeps for work that no notification announced."
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="How long a claim lasts without a heartbeat before others take it."
    )
    concurrency: int = Field(16, ge=1, le=1000, description="Rows one worker handles at once.")
    pool_size: int = Field(
        10, ge=2, le=200, description="Most database connections one worker opens."
    )
    max_attempts: int = Field(
        6, ge=1, description="Transient failures of one step before the row is failed."
    )
    provider_timeout: float = Field(
        120.0, gt=0, description="Seconds one call to the provider may take (create included)."
    )
    generation_timeout: float = Field(
        10800.0, gt=0, description="Seconds a provider may take before the row is failed."
    )
    prepared_statements: bool = Field(
        True, description="Set false behind a transaction pooler (Supavisor :6543, PgBouncer)."
    )
    retry_base: float = Field(2.0, gt=0, description="First retry delay, doubled per attempt.")
    retry_cap: float = Field(300.0, gt=0, description="Longest retry delay.")
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds to let in-flight steps finish after SIGTERM."
    )
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}",
        description="Name written into locked_by; defaults to host:pid.",
    )

    image_max_bytes: int = Field(15_000_000, gt=0, description="Largest input photo accepted.")
    image_timeout: float = Field(20.0, gt=0, description="Seconds allowed to fetch one photo.")
    image_allow_hosts: str = Field(
        "",
        description="Photo hosts on loopback/private networks to allow, as host:port "
        "entries separated by commas (e.g. photos.internal:8443,10.0.0.5:80). Every "
        "other non-public address is refused; the local storage server is allowed itself.",
    )

    data_dir: Path = Field(
        Path(".sora-worker"),
        description="Embedded database, simulator state and local storage live here.",
    )
    storage_host: str = Field("127.0.0.1", description="Address the local storage server binds.")
    storage_port: int = Field(8090, ge=0, le=65535, description="Port of the local storage server.")
    public_url: str | None = Field(
        None, description="Public base URL of the local storage server, if behind a proxy."
    )
    simulator_port: int = Field(8089, ge=0, le=65535, description="Port of the local simulator.")
    simulator_profile: Literal["openai", "litellm", "new-api"] = Field(
        "openai",
        description="Which host the local simulator behaves as: OpenAI itself, a LiteLLM "
        "proxy or a new-api gateway (their quirks, as measured).",
    )
    veo_fake_port: int = Field(
        8092, ge=0, le=65535, description="Port of the local Veo fake (no GOOGLE_API_KEY)."
    )
    replicate_fake_port: int = Field(
        8093,
        ge=0,
        le=65535,
        description="Port of the local Replicate fake (no REPLICATE_API_TOKEN).",
    )
    http_host: str = Field(
        "127.0.0.1",
        description="Address of the worker's HTTP server (/metrics, /healthz, /readyz); "
        "0.0.0.0 in a container so that a scraper can reach it.",
    )
    http_port: int = Field(
        8091,
        ge=0,
        le=65535,
        description="Port of the worker's HTTP server; 0 takes any free port (said in the "
        "log). Replicas on one machine each need their own.",
    )
    rendition_bitrate: int = Field(
        0,
        ge=0,
        le=50_000,
        description="Target kbit/s of a smaller H.264 copy stored beside each video "
        "(rendition_url); 0: no rendition.",
    )
    video_bucket: str = Field("hug-videos", description="Bucket for finished videos.")
    image_bucket: str = Field("hug-images", description="Bucket for images (demo photos).")

    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON lines otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug shows every poll and wake-up."
    )

    @field_validator("image_allow_hosts")
    @classmethod
    def _allow_hosts_shape(cls, value: str) -> str:
        parse_host_ports(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("default_size")
    @classmethod
    def _size_shape(cls, value: str) -> str:
        if not SIZE_PATTERN.match(value):
            raise ValueError("must look like 720x1280 (WIDTHxHEIGHT)")
        return value

    @field_validator("default_seconds")
    @classmethod
    def _seconds_shape(cls, value: str) -> str:
        if not value.isdigit() or int(value) < 1:
            raise ValueError("must be a whole number of seconds, like 4")
        return value

    @model_validator(mode="after")
    def _supabase_pair(self) -> Settings:
        if (self.supabase_url is None) != (self.supabase_service_role_key is None):
            raise ValueError("set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY together")
        if self.wakeups in ("realtime", "both") and self.supabase_url is None:
            raise ValueError(f"SORA_WAKEUPS={self.wakeups} needs SUPABASE_URL (Realtime)")
        return self

    @field_validator("provider", mode="before")
    @classmethod
    def _provider_alias(cls, value: object) -> object:
        return "google_veo" if value == "veo" else value

    @property
    def provider_model(self) -> str:
        """The default model for new rows: SORA_MODEL if given, else the provider's own."""
        if "model" in self.model_fields_set:
            return self.model
        return DEFAULT_MODELS[self.provider]

    @property
    def poll_delay(self) -> timedelta:
        return timedelta(seconds=self.poll_interval)

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds)

    @property
    def image_allow_list(self) -> frozenset[tuple[str, int]]:
        return parse_host_ports(self.image_allow_hosts)

    @property
    def uses_supabase(self) -> bool:
        return self.supabase_url is not None


def env_name(name: str) -> str:
    """The environment variable a setting is read from (its first alias, else SORA_NAME)."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + name.upper()


def shown_default(name: str) -> str:
    """A setting's default as an operator would write it in the environment."""
    field = Settings.model_fields[name]
    if name == "worker_id":
        return ""  # host:pid, computed at start
    default = field.get_default(call_default_factory=False)
    if default is None:
        return ""
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


def env_example() -> str:
    """``.env.example``: every setting, commented out at its default, with its description.

    Generated (``sora-worker env-example > .env.example``) so that it cannot drift
    from this model; a test fails when the committed file is not current.
    """
    lines = [
        "# sora-worker settings. Generated by `sora-worker env-example`; do not edit by hand.",
        "# Every line is commented out at its default: with none set, the worker runs on",
        "# the embedded stand-ins (PostgreSQL, the Sora simulator, local-disk storage).",
    ]
    for name, field in Settings.model_fields.items():
        lines.append("")
        lines.extend(
            textwrap.wrap(
                field.description or name, 86, initial_indent="# ", subsequent_indent="# "
            )
        )
        if name == "worker_id":
            lines.append("# default: host:pid")
        lines.append(f"# {env_name(name)}={shown_default(name)}")
    return "\n".join(lines) + "\n"


def known_env_names() -> set[str]:
    """Every environment variable name the settings read."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        else:
            names.add(ENV_PREFIX + name.upper())
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``SORA_*`` variables that no setting reads (typos would be silently ignored)."""
    known = known_env_names()
    unknown = sorted(
        k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
    )
    if not unknown:
        return
    removed = [
        REMOVED_SETTINGS[name.upper()] for name in unknown if name.upper() in REMOVED_SETTINGS
    ]
    if removed:
        raise SettingsError("; ".join(removed))
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), known, n=1)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise SettingsError("unknown setting(s): " + ", ".join(hints))


def explain(err: ValidationError) -> str:
    """pydantic's multi-line report as one line naming each setting (never its value,
    which may be a secret) and what it should be."""
    parts = []
    for problem in err.errors():
        message = problem["msg"].removeprefix("Value error, ")
        loc = problem["loc"]
        if loc and isinstance(loc[0], str) and loc[0] in Settings.model_fields:
            parts.append(f"{env_name(loc[0])}: {message}")
        else:
            parts.append(message)
    return "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, after refusing unknown SORA_* names.

    Raises SettingsError whose message is one line naming the setting and the fix.
    """
    check_environment(os.environ)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise SettingsError(explain(err)) from None
