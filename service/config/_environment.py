"""Where settings come from: each one from its own flat environment name, into its group.

``SORA_LEASE_SECONDS=30`` becomes ``{"worker": {"lease": "30"}}``: the groups are for
the code, while the environment keeps the names operators have always set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from service.setting import env_names, shown_default


@dataclass(frozen=True)
class Declared:
    """One setting: where it sits in the groups and the environment names it is read from."""

    path: tuple[str, ...]
    """``("worker", "lease")`` for ``settings.worker.lease``."""
    field: FieldInfo
    names: tuple[str, ...]
    """``("SORA_LEASE_SECONDS",)``; the first one set wins."""

    @property
    def env_name(self) -> str:
        return self.names[0]

    @property
    def description(self) -> str:
        return self.field.description or ""

    @property
    def default(self) -> str:
        """Its default as an operator would write it; empty when it has none."""
        return shown_default(self.field)


@cache
def declared_in(model: type[BaseModel]) -> tuple[Declared, ...]:
    """Every setting of ``model`` and of its groups, in the order they are declared."""
    return tuple(_walk(model, ()))


def _walk(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[Declared]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _walk(annotation, (*path, name))
        elif names := env_names(field):
            yield Declared((*path, name), field, names)


class FlatEnvironment(PydanticBaseSettingsSource):
    """The settings' source: every setting from its environment names (any case, like
    pydantic-settings' own), empty values skipped under ``env_ignore_empty``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every setting at once

    def __call__(self) -> dict[str, Any]:
        environ = {name.upper(): value for name, value in os.environ.items()}
        skip_empty = bool(self.config.get("env_ignore_empty"))
        values: dict[str, Any] = {}
        for declared in declared_in(self.settings_cls):
            given = [
                environ[name]
                for name in declared.names
                if name in environ and (environ[name] or not skip_empty)
            ]
            if given:
                group = values
                for key in declared.path[:-1]:
                    group = group.setdefault(key, {})
                group[declared.path[-1]] = given[0]
        return values
