"""What the Replicate fake's video models accept as input, checked as Replicate checks
it (``422`` with ``invalid_fields``), and the frame the output gets; the fake's errors
are RFC 7807 problem details (``Problem``)."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra

    def response(self) -> web.Response:
        headers = self.extra.pop("headers", None)
        body = {"title": self.title, "detail": self.detail, "status": self.status, **self.extra}
        return web.json_response(
            body, status=self.status, content_type="application/problem+json", headers=headers
        )


def invalid(field_name: str, description: str) -> Problem:
    return Problem(
        422,
        "Input validation failed",
        f"- input.{field_name}: {description}",
        invalid_fields=[
            {"type": "invalid", "field": f"input.{field_name}", "description": description}
        ],
    )


@dataclass(frozen=True)
class Schema:
    """One Replicate model's inputs, as its page on Replicate states them (the fake's
    own copy, written from those pages, not from the worker's registry: a registry
    that names a field wrongly must fail against it)."""

    first: str | None
    last: str | None = None
    references: str | None = None
    duration: str = "duration"
    durations: tuple[int, ...] = (4, 6, 8)
    aspect_ratio: str | None = "aspect_ratio"
    aspects: tuple[str, ...] = ("16:9", "9:16")
    resolution: str | None = "resolution"
    resolutions: dict[str, int] = field(default_factory=lambda: {"720p": 720, "1080p": 1080})
    """Resolution value -> the short side of the frame it makes."""
    extra: tuple[str, ...] = ()
    """Other fields it takes (``frames_per_second``, ``generate_audio``...)."""
    image_required: bool = False


SCHEMAS: dict[str, Schema] = {
    "veo": Schema("image", "last_frame", "reference_images"),
    "veo-fast": Schema("image", "last_frame"),
    "sora": Schema(
        "input_reference",
        duration="seconds",
        durations=(4, 8, 12),
        aspects=("portrait", "landscape"),
        resolution=None,
    ),
    "kling-v3": Schema(
        "start_image",
        "end_image",
        durations=tuple(range(3, 16)),
        aspects=("16:9", "9:16", "1:1"),
        resolution="mode",
        resolutions={"standard": 720, "pro": 1080},
        extra=("negative_prompt", "generate_audio", "multi_prompt"),
    ),
    "seedance-2": Schema(
        "image",
        "last_frame_image",
        "reference_images",
        durations=tuple(range(-1, 16)),
        aspects=("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "adaptive"),
        resolutions={"480p": 480, "720p": 720},
        extra=("generate_audio", "seed", "reference_videos", "reference_audios"),
    ),
    "hailuo-02": Schema(
        "first_frame_image",
        "last_frame_image",
        durations=(6, 10),
        aspect_ratio=None,
        resolutions={"512p": 512, "768p": 768, "1080p": 1080},
        extra=("prompt_optimizer",),
    ),
    "wan-2.2-i2v": Schema(
        "image",
        "last_image",
        duration="num_frames",
        durations=tuple(range(81, 122)),
        resolutions={"480p": 480, "720p": 720},
        extra=("frames_per_second", "go_fast", "sample_shift", "seed"),
        image_required=True,
    ),
}
"""By model family: the fake's ``models`` maps each model to one of these."""


def check_input(shape: str, inputs: dict[str, Any]) -> dict[str, bytes]:
    """Validate ``inputs`` against the model's schema (unknown fields refused, as a
    model's input validation refuses them); return the decoded images by field."""
    schema = SCHEMAS[shape]
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("prompt", "prompt is required")
    image_fields = [f for f in (schema.first, schema.last) if f is not None]
    known = {"prompt", schema.duration, *image_fields, *schema.extra}
    known |= {f for f in (schema.references, schema.aspect_ratio, schema.resolution) if f}
    for name in inputs:
        if name not in known:
            raise invalid(name, f"{name} is not an input of this model")
    _check_values(schema, inputs)
    images = {f: _data_uri_image(inputs[f], f) for f in image_fields if inputs.get(f) is not None}
    if schema.references and inputs.get(schema.references):
        refs = inputs[schema.references]
        if not isinstance(refs, list):
            raise invalid(schema.references, "must be a list of images")
        for index, ref in enumerate(refs):
            images[f"{schema.references}[{index}]"] = _data_uri_image(ref, schema.references)
    if schema.last and schema.last in images and schema.first not in images:
        raise invalid(schema.last, f"{schema.last} needs {schema.first} as well")
    if schema.image_required and schema.first not in images:
        raise invalid(str(schema.first), f"{schema.first} is required")
    return images


def _check_values(schema: Schema, inputs: dict[str, Any]) -> None:
    duration = inputs.get(schema.duration, schema.durations[0])
    if duration not in schema.durations:
        shown = ", ".join(str(d) for d in schema.durations)
        raise invalid(schema.duration, f"{schema.duration} must be one of: {shown}")
    if (
        schema.aspect_ratio
        and inputs.get(schema.aspect_ratio, schema.aspects[0]) not in schema.aspects
    ):
        raise invalid(schema.aspect_ratio, f"must be one of: {', '.join(schema.aspects)}")
    if schema.resolution:
        value = inputs.get(schema.resolution, next(iter(schema.resolutions)))
        if value not in schema.resolutions:
            raise invalid(schema.resolution, f"must be one of: {', '.join(schema.resolutions)}")


def _data_uri_image(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("data:") or ";base64," not in value:
        raise invalid(name, "this fake takes images as data: URIs only")
    try:
        data = base64.b64decode(value.partition(";base64,")[2], validate=True)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
    except (binascii.Error, ValueError, OSError):
        raise invalid(name, "the image could not be decoded") from None
    return data


def geometry(shape: str, inputs: dict[str, Any], first: bytes | None) -> tuple[int, int, int]:
    """The frame and length the output gets. A model without an aspect ratio field (or
    given a first frame where Kling ignores the field) follows its first frame."""
    schema = SCHEMAS[shape]
    if shape == "sora":
        landscape = inputs.get("aspect_ratio", "portrait") == "landscape"
        seconds = int(inputs.get("seconds", 4))
        return (1280, 720, seconds) if landscape else (720, 1280, seconds)
    short = 720
    if schema.resolution:
        short = schema.resolutions[inputs.get(schema.resolution, next(iter(schema.resolutions)))]
    long_side = short * 16 // 9
    if schema.duration == "num_frames":
        seconds = max(
            1, (int(inputs.get("num_frames", 81)) - 1) // int(inputs.get("frames_per_second", 16))
        )
    else:
        seconds = max(1, int(inputs.get(schema.duration, schema.durations[0])))
    portrait = inputs.get(schema.aspect_ratio or "", "16:9") == "9:16"
    if first is not None and (schema.aspect_ratio is None or shape == "kling-v3"):
        with Image.open(io.BytesIO(first)) as image:
            portrait = image.height > image.width
    return (short, long_side, seconds) if portrait else (long_side, short, seconds)
