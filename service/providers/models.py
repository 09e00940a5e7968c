"""What each known model can do, so a row asking for the impossible fails at once.

A row names a model (or gets ``SORA_MODEL``); this registry knows the sizes, lengths,
image inputs, rate limit, price and retirement of the models we have facts for,
whichever adapter carries them (a gateway serves Veo through ``/v1/videos`` as well as
Google does). A model it does not know is allowed where an operator allows it
(``SORA_ALLOWED_MODELS``): gateways serve free-form names and are the judge of them.

Retirement is per host, not per name: OpenAI retired ``sora-2``/``sora-2-pro`` on its
own API (and Azure its deployments) on 2026-09-24, Google the Veo 3.1 previews on the
Gemini API on 2026-10-22, but a name lives on wherever someone still serves it (the
local simulator, a gateway, Vertex AI). So a retirement applies only when the request
goes to one of its hosts, and its refusal names the model to use instead.

Every fact carries where it was read and when (``Source``): the table in
docs/providers.md is this registry, said for people. A price or limit that no stored
public page gave is None ("unknown"), never a guess: an unknown price counts at
``UNKNOWN_USD_PER_SECOND``, the dearest known one, for the daily budget (sql/0011).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date

from service.core.costs import AllowedModel
from service.core.request import FIRST_LAST, NO_IMAGES, ONE_IMAGE, ImageInputs
from service.providers.base import RequestRejected

SORA_SECONDS = frozenset({"4", "8", "12"})
SORA_SIZES = frozenset({"720x1280", "1280x720"})
SORA_PRO_SIZES = SORA_SIZES | {"1024x1792", "1792x1024"}
OPENAI_HOSTS = ("api.openai.com", ".openai.azure.com")
GEMINI_API_HOSTS = ("generativelanguage.googleapis.com",)
VEO_SIZES = frozenset({"1280x720", "720x1280", "1920x1080", "1080x1920"})
"""16:9 and 9:16 at 720p and 1080p: Veo's aspect ratios x resolutions as WIDTHxHEIGHT."""
HD_SIZES = frozenset({"1280x720", "720x1280"})
VEO_SECONDS = frozenset({"4", "6", "8"})
FULL_HD_SIZES = frozenset({"1920x1080", "1080x1920"})
CHECKED = date(2026, 12, 1)
"""When the stored public pages below were read for this registry."""


@dataclass(frozen=True)
class Source:
    """Where a fact was read, and the date it was read (or the page's own date)."""

    where: str
    on: date

    def __str__(self) -> str:
        return f"{self.where} ({self.on})"


@dataclass(frozen=True)
class Retirement:
    """A model's end at some hosts (exact names, or ``.suffix``; empty: everywhere)."""

    on: date
    hosts: tuple[str, ...]
    instead: str
    """What to use instead, said in the refusal."""
    source: Source


@dataclass(frozen=True)
class ReplicateInputs:
    """How a Replicate model names its inputs (each model's own schema on Replicate).

    ``first``/``last``: the first- and last-frame image fields; ``references``: a list
    of reference images; ``duration``: the length field (``num_frames`` when
    ``frames_per_second`` is set: the clip is that many frames); ``aspect_ratio`` and
    ``resolution``: field names (None: the model has none) and the values our
    16:9/9:16 and 720p/1080p become."""

    first: str | None = "image"
    last: str | None = None
    references: str | None = None
    duration: str = "duration"
    frames_per_second: int | None = None
    aspect_ratio: str | None = "aspect_ratio"
    aspect_values: Mapping[str, str] = field(
        default_factory=lambda: {"16:9": "16:9", "9:16": "9:16"}
    )
    resolution: str | None = "resolution"
    resolution_values: Mapping[str, str] = field(
        default_factory=lambda: {"720p": "720p", "1080p": "1080p"}
    )
    image_required: bool = False
    """The model makes no video from text alone (image-to-video only)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model's facts. ``provider`` is where it natively lives (the adapter name)."""

    name: str
    provider: str
    sizes: frozenset[str]
    seconds: frozenset[str]
    images: ImageInputs
    """What photos it takes (``service.media.references`` decides how they are sent)."""
    source: Source
    """Where its sizes, lengths and inputs were read."""
    retired: tuple[Retirement, ...] = ()
    full_hd_seconds: frozenset[str] | None = None
    """Lengths offered at 1080p, where fewer than at 720p (None: the same)."""
    usd_per_second: float | None = None
    """Estimated US dollars per second of video, at the dearest size it offers; None:
    unknown (counted at UNKNOWN_USD_PER_SECOND)."""
    price_source: Source | None = None
    creates_per_minute: int | None = None
    """The host's limit on creates for this model alone (Vertex: per model and
    project); None: unknown, or the provider's limit applies (``registry.Rates``)."""
    replicate: ReplicateInputs | None = None
    """Its input names, for a model on Replicate."""

    @property
    def aspect_ratios(self) -> frozenset[str]:
        return frozenset(_ratio(size) for size in self.sizes)

    @property
    def image_input(self) -> bool:
        return self.images.takes_images


_OPENAI_PRICING = Source(
    "OpenAI API pricing page, Sora Video API (as published 2025-10)", date(2026, 4, 8)
)
_SORA_END = Retirement(
    date(2026, 9, 24),
    OPENAI_HOSTS,
    "veo-3.1-generate-001 through a gateway or Google",
    Source("OpenAI deprecation notice; contracts/providers.md", date(2026, 11, 1)),
)
_VERTEX_VEO = Source(
    "docs.cloud.google.com/vertex-ai/generative-ai/docs/models/veo/3-1-generate", CHECKED
)
_VERTEX_VEO_PREVIEW = Source(
    "cloud.google.com/vertex-ai/generative-ai/docs/models/veo/3-1-generate (updated 2025-11-07)",
    date(2025, 11, 7),
)
_VEO_PRICE = Source(
    "third-party summaries of Google's Veo pricing (aifreeapi.com, 2026-03); "
    "contracts/providers.md 2026-12",
    date(2026, 3, 1),
)
_VEO_LITE_PRICE = Source("contracts/providers.md, December 2026 (Google's notice)", CHECKED)
_GEMINI_SHUTDOWN = Source(
    "Google's Gemini API shutdown notice (contracts/providers.md, December 2026)", CHECKED
)


def _sora(name: str, sizes: frozenset[str], usd_per_second: float) -> ModelSpec:
    """A Sora model: retired on OpenAI's own hosts on 2026-09-24, alive elsewhere."""
    return ModelSpec(
        name,
        "openai",
        sizes,
        SORA_SECONDS,
        ONE_IMAGE,
        Source("openai SDK 3.51 types; contracts/openai-videos.md", date(2026, 11, 1)),
        retired=(_SORA_END,),
        usd_per_second=usd_per_second,
        price_source=_OPENAI_PRICING,
    )


def _veo(
    name: str,
    *,
    usd_per_second: float | None,
    price_source: Source | None,
    per_minute: int | None,
    source: Source,
    retired: tuple[Retirement, ...] = (),
) -> ModelSpec:
    """A Veo 3.1 model on Google (Vertex AI): 4, 6 or 8 s, 1080p at 8 s only; a first
    and a last frame (reference images only at 16:9 and 8 s, so not used here)."""
    return ModelSpec(
        name,
        "google_veo",
        VEO_SIZES,
        VEO_SECONDS,
        FIRST_LAST,
        source,
        retired=retired,
        full_hd_seconds=frozenset({"8"}),
        usd_per_second=usd_per_second,
        price_source=price_source,
        creates_per_minute=per_minute,
    )


def _preview_end(instead: str) -> tuple[Retirement, ...]:
    """The Veo 3.1 previews, shut down on the Gemini API on 2026-10-22 (a retired model
    answers 404 "... is no longer available"). Vertex AI lists the GA ``-001`` models;
    no stored page gives a date for the previews there, so they are not refused there."""
    return (Retirement(date(2026, 10, 22), GEMINI_API_HOSTS, instead, _GEMINI_SHUTDOWN),)


def _veo_preview(name: str, usd_per_second: float, ga: str) -> ModelSpec:
    """A Veo 3.1 preview: 10 creates a minute on Vertex AI (its page of 2025-11-07),
    retired on the Gemini API in favour of ``ga``."""
    return _veo(
        name,
        usd_per_second=usd_per_second,
        price_source=_VEO_PRICE,
        per_minute=10,
        source=_VERTEX_VEO_PREVIEW,
        retired=_preview_end(ga),
    )


def _replicate(
    name: str,
    sizes: frozenset[str],
    seconds: frozenset[str],
    images: ImageInputs,
    inputs: ReplicateInputs,
    source: str,
) -> ModelSpec:
    """A video model on Replicate. Prices: Replicate's own per-model prices were not in
    the stored pages, so unknown (counted at the dearest known price). Limits: the
    provider's (600 creates a minute per account, ``registry``)."""
    return ModelSpec(
        name,
        "replicate",
        sizes,
        seconds,
        images,
        Source(source, CHECKED),
        replicate=inputs,
    )


def _seconds(first: int, last: int) -> frozenset[str]:
    return frozenset(str(n) for n in range(first, last + 1))


_REPLICATE_VEO = ReplicateInputs(first="image", last="last_frame", references="reference_images")

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _sora("sora-2", SORA_SIZES, 0.10),
        _sora("sora-2-pro", SORA_PRO_SIZES, 0.50),
        _veo(
            "veo-3.1-generate-001",
            usd_per_second=0.40,
            price_source=_VEO_PRICE,
            per_minute=50,
            source=_VERTEX_VEO,
        ),
        _veo(
            "veo-3.1-fast-generate-001",
            usd_per_second=0.15,
            price_source=_VEO_PRICE,
            per_minute=50,
            source=_VERTEX_VEO,
        ),
        _veo_preview("veo-3.1-generate-preview", 0.40, "veo-3.1-generate-001"),
        _veo_preview("veo-3.1-fast-generate-preview", 0.15, "veo-3.1-fast-generate-001"),
        _veo(
            "veo-3.1-lite-generate-preview",
            usd_per_second=0.08,
            price_source=_VEO_LITE_PRICE,
            per_minute=None,
            source=_GEMINI_SHUTDOWN,
            retired=_preview_end("veo-3.1-fast-generate-001"),
        ),
        _replicate(
            "google/veo-3.1",
            VEO_SIZES,
            VEO_SECONDS,
            FIRST_LAST,
            _REPLICATE_VEO,
            "replicate.com/google/veo-3.1 API schema (version ed5b1767)",
        ),
        _replicate(
            "google/veo-3.1-fast",
            VEO_SIZES,
            VEO_SECONDS,
            FIRST_LAST,
            ReplicateInputs(first="image", last="last_frame"),
            "replicate.com/google/veo-3.1-fast (input list as mirrored by api.core.today)",
        ),
        _replicate(
            "openai/sora-2",
            SORA_SIZES,
            SORA_SECONDS,
            ONE_IMAGE,
            ReplicateInputs(
                first="input_reference",
                duration="seconds",
                aspect_values={"16:9": "landscape", "9:16": "portrait"},
                resolution=None,
            ),
            "the Sora-like shape the adapter already used (replicate.com/openai/sora-2; "
            "not read again in 2026-12)",
        ),
        _replicate(
            "kwaivgi/kling-v3-video",
            VEO_SIZES,
            _seconds(3, 15),
            FIRST_LAST,
            ReplicateInputs(
                first="start_image",
                last="end_image",
                resolution="mode",
                resolution_values={"720p": "standard", "1080p": "pro"},
            ),
            "replicate.com/kwaivgi/kling-v3-video API schema (version 4a8ba274)",
        ),
        _replicate(
            "bytedance/seedance-2.0",
            HD_SIZES,
            _seconds(4, 15),
            FIRST_LAST,
            ReplicateInputs(first="image", last="last_frame_image", references="reference_images"),
            "replicate.com/bytedance/seedance-2.0 API schema (version d456b64a)",
        ),
        _replicate(
            "minimax/hailuo-02",
            frozenset({"1920x1080"}),
            frozenset({"6"}),
            FIRST_LAST,
            ReplicateInputs(
                first="first_frame_image",
                last="last_frame_image",
                aspect_ratio=None,
                resolution_values={"1080p": "1080p"},
            ),
            "replicate.com/minimax/hailuo-02 API schema (version c43b610e)",
        ),
        _replicate(
            "wan-video/wan-2.2-i2v-fast",
            HD_SIZES,
            frozenset({"5"}),
            FIRST_LAST,
            ReplicateInputs(
                first="image",
                last="last_image",
                duration="num_frames",
                frames_per_second=16,
                image_required=True,
            ),
            "Replicate's wan-2.2-i2v-fast inputs as mirrored by segmind.com and "
            "scenario.com (last_image unverified on Replicate itself)",
        ),
    )
}
"""Prices, limits and inputs with their sources are listed in docs/providers.md."""

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


def image_inputs(provider: str, model: str) -> ImageInputs:
    """What photos ``model`` takes when sent through ``provider``: its own inputs on
    its own provider; through another (a gateway's ``/v1/videos`` carries one
    ``input_reference``) at most one image; a model we know nothing of, one image (the
    host judges)."""
    spec = spec_for(model)
    if spec is None:
        return ONE_IMAGE
    if spec.provider == provider:
        return spec.images
    return ONE_IMAGE if spec.images.takes_images else NO_IMAGES


def retirement(model: str, host: str | None, today: date) -> Retirement | None:
    """The retirement that applies to ``model`` at ``host`` on ``today``, if any."""
    spec = spec_for(model)
    if spec is None:
        return None
    return next((r for r in spec.retired if today >= r.on and _at(host, r.hosts)), None)


def check(
    model: str, size: str, seconds: str, *, image: bool, host: str | None, today: date
) -> None:
    """Raise RequestRejected (``invalid_request`` or ``model_retired``) for a request
    ``model`` cannot take at ``host`` on ``today``, naming what to use instead."""
    spec = spec_for(model)
    if spec is None:
        return
    gone = retirement(model, host, today)
    if gone is not None:
        raise RequestRejected(
            f"model {model} was retired at {host or 'its provider'} on {gone.on}; "
            f"set SORA_MODEL (or the row's model) to another, e.g. {gone.instead}",
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
    if not image and spec.replicate is not None and spec.replicate.image_required:
        raise RequestRejected(
            f"{model} makes videos from a photo only; give the row a photo, or use a model "
            "that takes text alone"
        )


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
