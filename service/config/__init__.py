"""Settings, read once from the environment.

Why pydantic-settings: every setting is typed, has a default that lets the worker run
with no configuration at all (embedded PostgreSQL, the local Sora simulator, local-disk
storage), and shows up in ``sora-worker --help``. The settings come in groups
(``settings.database.url``, ``settings.worker.lease``, ``settings.stand_ins.data_dir``;
``_groups.py``), every duration a ``timedelta``; the environment keeps its flat names
(``_environment.py``). The well-known names that other tools already use
(``DATABASE_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``SUPABASE_URL``,
``SUPABASE_SERVICE_ROLE_KEY``) are read as they are; the worker's own knobs start with
``SORA_``. A misspelt ``SORA_`` variable is an error, not a silently ignored typo.
"""

from __future__ import annotations

import difflib
import os
import textwrap
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.config._edges import (
    DashboardSettings,
    HttpSettings,
    LogSettings,
    PhotoSettings,
    StorageSettings,
)
from service.config._environment import Declared, FlatEnvironment, declared_in
from service.config._groups import (
    CostSettings,
    DatabaseSettings,
    GenerationSettings,
    PollSettings,
    ProviderGroups,
    RetrySettings,
    StandInGroups,
    WorkerSettings,
)
from service.config._stand_ins import StandInRefused, allowed, is_loopback, refusal, refuse
from service.providers.registry import REGISTRY
from service.setting import env_names

__all__ = [
    "ENV_PREFIX",
    "REMOVED_SETTINGS",
    "CostSettings",
    "DashboardSettings",
    "DatabaseSettings",
    "Declared",
    "GenerationSettings",
    "HttpSettings",
    "LogSettings",
    "PhotoSettings",
    "PollSettings",
    "RetrySettings",
    "Settings",
    "SettingsError",
    "StandInRefused",
    "StorageSettings",
    "WorkerSettings",
    "allowed",
    "check_environment",
    "declared_settings",
    "env_example",
    "explain",
    "is_loopback",
    "known_env_names",
    "load_settings",
    "refusal",
    "refuse",
    "secret_values",
]

ENV_PREFIX = "SORA_"
REMOVED_SETTINGS = {
    "SORA_IMAGE_PRIVATE_HOSTS": "SORA_IMAGE_PRIVATE_HOSTS was removed: photos on loopback "
    "and private networks are refused unless listed in SORA_IMAGE_ALLOW_HOSTS "
    "(host:port,host:port); the local storage server needs no entry",
}


class SettingsError(ValueError):
    """The environment holds a setting the worker cannot use; the message says which."""


class Settings(BaseSettings):
    """Everything the worker can be told, by group. Durations are seconds in the
    environment and ``timedelta`` here."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_ignore_empty=True,  # compose passes unset variables as empty strings
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    providers: ProviderGroups = Field(default_factory=ProviderGroups)
    polls: PollSettings = Field(default_factory=PollSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    photos: PhotoSettings = Field(default_factory=PhotoSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    stand_ins: StandInGroups = Field(default_factory=StandInGroups)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """What the code passes, over each setting's own environment name."""
        return init_settings, FlatEnvironment(settings_cls)

    @model_validator(mode="after")
    def _no_host_that_is_gone(self) -> Settings:
        for provider in REGISTRY:
            own = self.providers.of(provider.name)
            if provider.host_gone and own.api_key is not None and own.base_url is None:
                base = env_names(type(own).model_fields["base_url"])[0]
                raise ValueError(
                    f"{provider.key_name} is set but {base} is not: {provider.host_gone}"
                )
        return self

    @model_validator(mode="after")
    def _realtime_needs_supabase(self) -> Settings:
        wakeups = self.worker.wakeups
        if wakeups in ("realtime", "both") and not self.storage.uses_supabase:
            raise ValueError(f"SORA_WAKEUPS={wakeups} needs SUPABASE_URL (Realtime)")
        return self


def declared_settings() -> tuple[Declared, ...]:
    """Every setting, in the order ``--help`` and ``.env.example`` list them."""
    return declared_in(Settings)


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
    for declared in declared_settings():
        lines.append("")
        lines.extend(
            textwrap.wrap(
                declared.description or declared.env_name,
                86,
                initial_indent="# ",
                subsequent_indent="# ",
            )
        )
        if declared.field.default_factory is not None:
            lines.append(f"# default: {declared.default}")
            lines.append(f"# {declared.env_name}=")
        else:
            lines.append(f"# {declared.env_name}={declared.default}")
    return "\n".join(lines) + "\n"


def known_env_names() -> set[str]:
    """Every environment variable name the settings read."""
    return {name for declared in declared_settings() for name in declared.names}


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
    by_path = {declared.path: declared.env_name for declared in declared_settings()}
    parts = []
    for problem in err.errors():
        message = problem["msg"].removeprefix("Value error, ")
        loc = tuple(str(part) for part in problem["loc"])
        # The setting is the longest declared path the location starts with (a union's
        # member may follow it).
        names = [by_path[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in by_path]
        parts.append(f"{names[0]}: {message}" if names else message)
    return "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, after refusing unknown SORA_* names.

    ``overrides`` are groups of values that win over the environment
    (``polls={"interval": timedelta(seconds=1)}``). Raises SettingsError whose message
    is one line naming the setting and the fix.
    """
    check_environment(os.environ)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise SettingsError(explain(err)) from None


def secret_values(settings: BaseModel) -> list[str]:
    """Every secret the settings hold, for the logs to redact: each ``SecretStr`` (keys,
    tokens, webhook secrets), and the password inside the database URL."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            found.extend(secret_values(value))
        elif isinstance(value, SecretStr):
            secret = value.get_secret_value()
            found.append(secret)
            password = urlsplit(secret).password if "://" in secret else None
            if password:
                found.append(unquote(password))
    return found
