"""Production never falls back to a stand-in.

With no settings at all the worker does its whole job on one machine (DESIGN.md,
"Embedded defaults"): an embedded PostgreSQL, a provider's local simulator, local-disk
storage served on loopback, each said loudly in the log. That is a *trial*: none of
``DATABASE_URL``, ``SUPABASE_URL``, ``SORA_STORAGE`` or any provider's key or base URL is
set. As soon as one is, this is a real deployment, and a service left unset stops the
worker with one line naming the setting, instead of quietly writing
``http://127.0.0.1`` URLs into real rows or sending rows to a simulator (issue 28).

``SORA_STAND_INS`` overrides the judgement: ``allow`` lets every unset service have its
stand-in (the tests, a trial against your own PostgreSQL; the demo says it for itself),
``never`` refuses them even on a trial (the image and the systemd unit).
``SORA_STORAGE=local`` is not a stand-in but a choice: the worker's own storage server,
behind a reverse proxy whose public address (``SORA_PUBLIC_URL``, not loopback) the rows
name.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from service.providers.registry import REGISTRY, provider_named
from service.setting import env_names

if TYPE_CHECKING:
    from service.config import Settings

Service = Literal["database", "storage", "provider"]


class StandInRefused(ValueError):
    """A service is unset where its stand-in may not replace it; the message says which
    setting to give (one line)."""


def real_settings(settings: Settings) -> list[str]:
    """The settings given that only a real deployment gives, by environment name."""
    given = []
    if settings.database.url is not None:
        given.append("DATABASE_URL")
    if settings.storage.supabase_url is not None:
        given.append("SUPABASE_URL")
    if settings.storage.backend != "auto":
        given.append("SORA_STORAGE")
    for provider in REGISTRY:
        own = settings.providers.of(provider.name)
        for field in ("api_key", "base_url"):
            if getattr(own, field) is not None:
                given.append(env_names(type(own).model_fields[field])[0])
    return given


def allowed(settings: Settings) -> bool:
    """Whether an unset service may be replaced by its local stand-in."""
    mode = settings.stand_ins.mode
    return mode == "allow" or (mode == "auto" and not real_settings(settings))


def _why(settings: Settings) -> str:
    if settings.stand_ins.mode == "never":
        return "SORA_STAND_INS=never"
    first = real_settings(settings)[0]
    return f"{first} is set, so this is a real deployment"


def is_loopback(url: str) -> bool:
    """``url`` names this machine (localhost, 127.0.0.0/8, ::1, 0.0.0.0): nobody else
    could open it."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost") or not host:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def refusal(settings: Settings, service: Service) -> str | None:
    """Why ``service`` cannot be opened as the settings stand, in one line naming the
    setting to give; None when it can (a real service, or a stand-in that may serve)."""
    may = allowed(settings)
    if service == "database":
        if settings.database.url is not None or may:
            return None
        return (
            f"DATABASE_URL is unset ({_why(settings)}): set it to your PostgreSQL "
            "(Supabase: Dashboard > Connect), or SORA_STAND_INS=allow for an embedded one"
        )
    if service == "storage":
        return _storage_refusal(settings, may)
    provider = provider_named(settings.generation.provider)
    if settings.providers.of(provider.name).api_key is not None or may:
        return None
    return (
        f"{provider.key_name} is unset ({_why(settings)}): set {provider.to_set}, or "
        f"SORA_STAND_INS=allow for the {provider.stand_in.what}"
    )


def _storage_refusal(settings: Settings, may: bool) -> str | None:
    storage, public_url = settings.storage, settings.stand_ins.public_url
    if storage.uses_supabase or may:
        return None
    if storage.backend == "local":
        if public_url and not is_loopback(public_url):
            return None
        said = "names this machine" if public_url else "is unset"
        return (
            f"SORA_STORAGE=local but SORA_PUBLIC_URL {said}: set it to the public address "
            "of the reverse proxy in front of SORA_STORAGE_PORT, or nobody else can open "
            "the videos"
        )
    return (
        f"SUPABASE_URL is unset ({_why(settings)}): set SUPABASE_URL and "
        "SUPABASE_SERVICE_ROLE_KEY, or SORA_STORAGE=local with SORA_PUBLIC_URL; videos "
        "would go to this machine's disk with http://127.0.0.1 URLs in your rows"
    )


def refuse(settings: Settings, *services: Service) -> None:
    """Raise StandInRefused naming every one of ``services`` (all when none given) that
    cannot be opened."""
    wanted: tuple[Service, ...] = services or ("database", "storage", "provider")
    found = [said for service in wanted if (said := refusal(settings, service))]
    if found:
        raise StandInRefused("; ".join(found))
