"""What each known model can do, so a row asking for the impossible fails at once.

A row names a model (or gets ``SORA_MODEL``); this registry knows the sizes, lengths,
photo input and retirement of the models we have facts for, whichever adapter carries
them (a gateway serves Veo through ``/v1/videos`` as well as Google does). A model it
does not know is allowed: gateways serve free-form names and are the judge of them.

Retirement is per host, not per name: OpenAI retired ``sora-2``/``sora-2-pro`` on its
own API (and Azure its deployments) on 2026-09-24, but the name lives on wherever
someone still serves it (the local simulator, a gateway mapping it to another model).
So a sunset applies only when the request goes to one of the model's ``sunset_hosts``.

Each model also carries an estimated price per second of video, for the daily budget
(sql/0011). The sources and dates are beside ``MODELS``; a model without a published
price counts at ``UNKNOWN_USD_PER_SECOND``, the dearest known price. The registry also
says which provider/model pairs rows may ask for by default (``allowlist``): a model it
does not know is refused unless an operator allows it (``SORA_ALLOWED_MODELS``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date

from service.core.costs import AllowedModel
from service.providers.base import RequestRejected

SORA_SECONDS = frozenset({"4", "8", "12"})
SORA_SIZES = frozenset({"720x1280", "1280x720"})
SORA_PRO_SIZES = SORA_SIZES | {"1024x1792", "1792x1024"}
OPENAI_HOSTS = ("api.openai.com", ".openai.azure.com")
VEO_SIZES = frozenset({"1280x720", "720x1280", "1920x1080", "1080x1920"})
"""16:9 and 9:16 at 720p and 1080p: Veo's aspect ratios x resolutions as WIDTHxHEIGHT."""
VEO_SECONDS = frozenset({"4", "6", "8"})
FULL_HD_SIZES = frozenset({"1920x1080", "1080x1920"})


@dataclass(frozen=True)
class ModelSpec:
    """One model's facts. ``provider`` is where it natively lives (the adapter name)."""

    name: str
    provider: str
    sizes: frozenset[str]
    seconds: frozenset[str]
    image_input: bool
    sunset: date | None = None
    sunset_hosts: tuple[str, ...] = ()
    """Hosts (exact, or a ``.suffix``) where ``sunset`` applies; empty: everywhere."""
    instead: str = ""
    """What to use once it is retired, said in the refusal."""
    full_hd_seconds: frozenset[str] | None = None
    """Lengths offered at 1080p, where fewer than at 720p (None: the same)."""
    usd_per_second: float | None = None
    """Estimated US dollars per second of video, at the dearest size it offers; None:
    no published price known (counted at UNKNOWN_USD_PER_SECOND)."""

    @property
    def aspect_ratios(self) -> frozenset[str]:
        return frozenset(_ratio(size) for size in self.sizes)


def _sora(name: str, sizes: frozenset[str], usd_per_second: float) -> ModelSpec:
    """A Sora model: retired on OpenAI's own hosts on 2026-09-24, alive elsewhere."""
    return ModelSpec(
        name,
        "openai",
        sizes,
        SORA_SECONDS,
        image_input=True,
        sunset=date(2026, 9, 24),
        sunset_hosts=OPENAI_HOSTS,
        instead="veo-3.1-generate-preview through a gateway or Google",
        usd_per_second=usd_per_second,
    )


def _veo(name: str, provider: str, usd_per_second: float | None) -> ModelSpec:
    """A Veo 3.1 model. Google's Veo makes 1080p clips of 8 s only; Replicate's listing
    of the same models states no such rule, so there the host judges."""
    full_hd = frozenset({"8"}) if provider == "google_veo" else None
    return ModelSpec(
        name,
        provider,
        VEO_SIZES,
        VEO_SECONDS,
        image_input=True,
        full_hd_seconds=full_hd,
        usd_per_second=usd_per_second,
    )


# Prices, estimates in US dollars per second of video (what a budget needs, not a bill):
# - sora-2 0.10 (720x1280, 1280x720); sora-2-pro 0.30 at those sizes and 0.50 at
#   1024x1792 / 1792x1024, counted at 0.50: OpenAI's API pricing page ("Sora Video API"),
#   as published 2025-10 and quoted unchanged on 2026-04-08. A gateway serving the name
#   now charges its own price; set the budget with that in mind.
# - veo-3.1-generate-preview 0.40, veo-3.1-fast-generate-preview 0.15 (video with audio,
#   720p and 1080p): Google's Gemini API / Vertex AI pricing, 2025-10, quoted unchanged
#   in 2026-03.
# - google/veo-3.1 and google/veo-3.1-fast on Replicate: unknown (no price from Replicate
#   itself was found); counted at UNKNOWN_USD_PER_SECOND.
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _sora("sora-2", SORA_SIZES, 0.10),
        _sora("sora-2-pro", SORA_PRO_SIZES, 0.50),
        _veo("veo-3.1-generate-preview", "google_veo", 0.40),
        _veo("veo-3.1-fast-generate-preview", "google_veo", 0.15),
        _veo("google/veo-3.1", "replicate", None),
        _veo("google/veo-3.1-fast", "replicate", None),
    )
}

UNKNOWN_USD_PER_SECOND = max(s.usd_per_second or 0.0 for s in MODELS.values())
"""What a second of a model without a known price counts as: the dearest known price."""


_SNAPSHOT = re.compile(r"^(?P<base>.+)-\d{4}-\d{2}-\d{2}$")


def spec_for(model: str) -> ModelSpec | None:
    """The facts of ``model``, or of the model a dated snapshot (``sora-2-2025-10-06``)
    belongs to; None for a model we know nothing about."""
    if model in MODELS:
        return MODELS[model]
    snapshot = _SNAPSHOT.match(model)
    return MODELS.get(snapshot["base"]) if snapshot else None


def check(
    model: str, size: str, seconds: str, *, image: bool, host: str | None, today: date
) -> None:
    """Raise RequestRejected (``invalid_request`` or ``model_retired``) for a request
    ``model`` cannot take at ``host`` on ``today``, naming what to use instead."""
    spec = spec_for(model)
    if spec is None:
        return
    if spec.sunset is not None and today >= spec.sunset and _at(host, spec.sunset_hosts):
        raise RequestRejected(
            f"model {model} was retired at {host or 'its provider'} on {spec.sunset}; "
            f"set SORA_MODEL (or the row's model) to another, e.g. {spec.instead}",
            kind="model_retired",
        )
    if size not in spec.sizes:
        allowed = ", ".join(sorted(spec.sizes))
        raise RequestRejected(f"size {size} is not offered by {model}; use one of {allowed}")
    if seconds not in spec.seconds:
        allowed = ", ".join(sorted(spec.seconds, key=int))
        raise RequestRejected(f"seconds {seconds} is not offered by {model}; use one of {allowed}")
    full_hd = spec.full_hd_seconds
    if full_hd is not None and size in FULL_HD_SIZES and seconds not in full_hd:
        allowed = ", ".join(sorted(full_hd, key=int))
        raise RequestRejected(
            f"{model} makes 1080p videos of {allowed} seconds only; use one of {allowed} "
            "seconds, or a 720p size"
        )
    if image and not spec.image_input:
        raise RequestRejected(f"{model} takes no photos; use a model that does, or no photos")


def _at(host: str | None, hosts: tuple[str, ...]) -> bool:
    if not hosts:
        return True
    if host is None:
        return False
    return any(host == h or (h.startswith(".") and host.endswith(h)) for h in hosts)


def _ratio(size: str) -> str:
    width, height = (int(n) for n in size.split("x"))
    common = math.gcd(width, height)
    return f"{width // common}:{height // common}"


def parse_allowed(text: str, providers: Collection[str]) -> tuple[bool, list[tuple[str, str]]]:
    """``SORA_ALLOWED_MODELS``: whether it includes ``default``, and its provider:model
    pairs. Raises ValueError naming a bad entry."""
    default = False
    pairs: list[tuple[str, str]] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if entry == "default":
            default = True
            continue
        provider, colon, model = entry.partition(":")
        if not colon or not model.strip() or provider.strip() not in providers:
            raise ValueError(
                f"{entry!r} is not default or PROVIDER:MODEL with PROVIDER one of "
                f"{', '.join(sorted(providers))} (e.g. openai:my-gateway-model)"
            )
        pairs.append((provider.strip(), model.strip()))
    return default, pairs


def allowlist(
    text: str, configured: Collection[str], default: tuple[str, str], providers: Collection[str]
) -> tuple[AllowedModel, ...]:
    """What rows may ask for. ``default`` in ``text`` stands for every model the registry
    knows for the ``configured`` providers, plus the default model (``default``: the
    default provider and model; always allowed, or rows naming no model could not be
    made); the other entries are added, with the registry's facts where it knows them."""
    include_default, pairs = parse_allowed(text, providers)
    wanted = [default, *pairs]
    if include_default:
        wanted += [(s.provider, s.name) for s in MODELS.values() if s.provider in configured]
    allowed: dict[tuple[str, str], AllowedModel] = {}
    for provider, model in wanted:
        spec = spec_for(model)
        allowed[provider, model] = AllowedModel(
            provider,
            model,
            None if spec is None else spec.sizes,
            None if spec is None else spec.seconds,
            None if spec is None else spec.usd_per_second,
        )
    return tuple(allowed.values())
