"""What the Replicate fake's video models accept as input, checked as Replicate checks
it (``422`` with ``invalid_fields``), and the frame the output gets; the fake's errors
are RFC 7807 problem details (``Problem``)."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from aiohttp import web
from PIL import Image


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra

    def response(self) -> web.Response:
        body = {"title": self.title, "detail": self.detail, "status": self.status, **self.extra}
        return web.json_response(body, status=self.status, content_type="application/problem+json")


def invalid(field_name: str, description: str) -> Problem:
    return Problem(
        422,
        "Input validation failed",
        f"- input.{field_name}: {description}",
        invalid_fields=[
            {"type": "invalid", "field": f"input.{field_name}", "description": description}
        ],
    )


def check_input(shape: str, inputs: dict[str, Any]) -> bytes | None:
    """Validate ``inputs`` against the model's schema; return the decoded image, if any."""
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("prompt", "prompt is required")
    if shape == "sora":
        if inputs.get("seconds", 4) not in (4, 8, 12):
            raise invalid("seconds", "seconds must be one of the following: 4, 8, 12")
        if inputs.get("aspect_ratio", "portrait") not in ("portrait", "landscape"):
            raise invalid("aspect_ratio", "aspect_ratio must be one of: portrait, landscape")
        image = inputs.get("input_reference")
    else:
        if inputs.get("duration", 8) not in (4, 6, 8):
            raise invalid("duration", "duration must be one of the following: 4, 6, 8")
        if inputs.get("aspect_ratio", "16:9") not in ("16:9", "9:16"):
            raise invalid("aspect_ratio", "aspect_ratio must be one of: 16:9, 9:16")
        if inputs.get("resolution", "1080p") not in ("720p", "1080p"):
            raise invalid("resolution", "resolution must be one of: 720p, 1080p")
        image = inputs.get("image")
    if image is None:
        return None
    return _data_uri_image(image, "input_reference" if shape == "sora" else "image")


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


def geometry(shape: str, inputs: dict[str, Any]) -> tuple[int, int, int]:
    if shape == "sora":
        landscape = inputs.get("aspect_ratio", "portrait") == "landscape"
        return (
            (1280, 720, int(inputs.get("seconds", 4)))
            if landscape
            else (720, 1280, int(inputs.get("seconds", 4)))
        )
    long_side, short_side = (
        (1920, 1080) if inputs.get("resolution", "1080p") == "1080p" else (1280, 720)
    )
    seconds = int(inputs.get("duration", 8))
    if inputs.get("aspect_ratio", "16:9") == "16:9":
        return long_side, short_side, seconds
    return short_side, long_side, seconds
