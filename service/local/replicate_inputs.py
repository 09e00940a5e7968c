"""The inputs of the video models the local Replicate stand-in serves, checked as their
schemas on Replicate check them, and the video each asks for.

Two shapes (``ReplicateConfig.models`` maps a model to one): "veo" (``prompt``,
``duration`` 4/6/8, ``aspect_ratio`` 16:9|9:16, ``resolution`` 720p|1080p, ``image``)
and "sora" (``prompt``, ``seconds`` 4/8/12, ``aspect_ratio`` portrait|landscape,
``input_reference``). Images arrive as ``data:`` URIs only (what the worker sends).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image


class InvalidInput(Exception):
    """One input field the model's schema refuses (the server answers 422 with it)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"input.{field}: {description}")
        self.field, self.description = field, description


def check_input(shape: str, inputs: dict[str, Any]) -> bytes | None:
    """Validate ``inputs`` against the model's schema; return the decoded image, if any."""
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("prompt", "prompt is required")
    if shape == "sora":
        if inputs.get("seconds", 4) not in (4, 8, 12):
            raise InvalidInput("seconds", "seconds must be one of the following: 4, 8, 12")
        if inputs.get("aspect_ratio", "portrait") not in ("portrait", "landscape"):
            raise InvalidInput("aspect_ratio", "aspect_ratio must be one of: portrait, landscape")
        image = inputs.get("input_reference")
    else:
        if inputs.get("duration", 8) not in (4, 6, 8):
            raise InvalidInput("duration", "duration must be one of the following: 4, 6, 8")
        if inputs.get("aspect_ratio", "16:9") not in ("16:9", "9:16"):
            raise InvalidInput("aspect_ratio", "aspect_ratio must be one of: 16:9, 9:16")
        if inputs.get("resolution", "1080p") not in ("720p", "1080p"):
            raise InvalidInput("resolution", "resolution must be one of: 720p, 1080p")
        image = inputs.get("image")
    if image is None:
        return None
    return _data_uri_image(image, "input_reference" if shape == "sora" else "image")


def _data_uri_image(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("data:") or ";base64," not in value:
        raise InvalidInput(name, "this fake takes images as data: URIs only")
    try:
        data = base64.b64decode(value.partition(";base64,")[2], validate=True)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
    except (binascii.Error, ValueError, OSError):
        raise InvalidInput(name, "the image could not be decoded") from None
    return data


def geometry(shape: str, inputs: dict[str, Any]) -> tuple[int, int, int]:
    """(width, height, seconds) of the video that checked ``inputs`` ask for."""
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
