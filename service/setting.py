"""How one setting is declared: the environment names it is read from, its default, its
description, and durations written in seconds but held as ``timedelta``.

Settings come in groups (``Group``): ``service.config`` composes them, and each
provider's own group (key, host, webhook secret) is declared beside its registry entry
(``service.providers.registry``), below the configuration in the layers. Both declare
their fields through ``setting``, so ``sora-worker --help``, ``.env.example``, the
refusal of unknown ``SORA_*`` names and the one-line errors all read one declaration.
The environment names are the ones operators have always set (``DATABASE_URL``,
``SORA_LEASE_SECONDS``): the groups are for the code, never for the environment.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, core_schema


class Group(BaseModel):
    """A group of settings: frozen like the whole, and no name it does not declare."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def setting(
    default: Any = PydanticUndefined,
    *,
    env: str | tuple[str, ...],
    description: str,
    shown: str | None = None,
    **constraints: Any,
) -> Any:
    """A field read from ``env`` (the first name set wins), described for the operator.

    ``shown``: the default as ``--help`` says it, for one computed at start (host:pid).
    ``constraints`` go to pydantic (``gt``, ``le``, ``default_factory``, ...).
    """
    names = (env,) if isinstance(env, str) else env
    extra: dict[str, Any] = {"env": list(names)}
    if shown is not None:
        extra["shown"] = shown
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def env_names(field: FieldInfo) -> tuple[str, ...]:
    """The environment names ``field`` is read from; none for a field that is no setting."""
    extra = field.json_schema_extra
    names = extra.get("env") if isinstance(extra, dict) else None
    return tuple(str(name) for name in names) if isinstance(names, list) else ()


def shown_default(field: FieldInfo) -> str:
    """A setting's default as an operator would write it in the environment."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("shown"), str):
        return str(extra["shown"])
    default = field.get_default(call_default_factory=False)
    if default is None or default is PydanticUndefined:
        return ""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, timedelta):
        return str(default.total_seconds())
    return str(default)


class Seconds:
    """A duration the environment gives in seconds (``30``, ``2.5``), held as a
    ``timedelta``: ``lease: Annotated[timedelta, Seconds(gt=0)]``.

    A ``timedelta`` is taken as it is (and checked the same way), so code may pass one.
    """

    def __init__(self, *, gt: float | None = None, ge: float | None = None) -> None:
        self.gt = gt
        self.ge = ge

    def __get_pydantic_core_schema__(
        self, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        number = core_schema.float_schema(gt=self.gt, ge=self.ge, allow_inf_nan=False)
        return core_schema.no_info_before_validator_function(
            _seconds_of,
            core_schema.no_info_after_validator_function(_duration, number),
            # As written in the environment (seconds) in JSON; as it is in Python.
            serialization=core_schema.plain_serializer_function_ser_schema(_dumped, info_arg=True),
        )


def _seconds_of(value: object) -> object:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _dumped(value: timedelta, info: core_schema.SerializationInfo) -> object:
    return value.total_seconds() if info.mode_is_json() else value


def _duration(seconds: float) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError("is too long for a duration") from None


Duration = Annotated[timedelta, Seconds(gt=0)]
"""A duration longer than nothing, written in seconds."""
Port = Annotated[int, Field(ge=0, le=65535)]
"""A TCP port; 0 takes any free one."""
