"""What is asked of a video generator, and the outcomes a failed row can have.

Core types: the state machine decides on them and every provider adapter speaks them,
so they live below both (an adapter may import the core, never the reverse).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PROMPT_MAX = 4000
"""Characters a request's prompt may have (sql/0001's videos_prompt_length)."""
SECONDS_MAX = 60
SIDE_MAX = 4096
"""What any request may ask for, whatever the model (sql/0011's bounds)."""
SIZE_PATTERN = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")

ErrorKind = Literal[
    "invalid_request",
    "photo_unavailable",
    "safety_filtered",
    "model_retired",
    "provider_error",
    "in_doubt",
    "expired",
]
"""Why a row failed, in words an app can show (the row's ``error_kind`` column)."""


PhotosSent = Literal["composed", "first_last", "references"]
"""How a row's photos went to the generator (the row's ``photos_sent``, sql/0015):
composed into one reference image, as the first and last frames, or as a list of
references."""

ImageRole = Literal["first_frame", "last_frame", "reference"]
"""What an image sent with a request is to the model."""


@dataclass(frozen=True)
class ImageInputs:
    """What photos a model takes. ``first_last``: a first frame and, optionally, a last
    frame; ``references``: up to ``max_references`` images it keeps the subjects of;
    ``one``: a single image (the first frame); ``none``: no image at all."""

    kind: Literal["none", "one", "first_last", "references"]
    max_references: int = 0

    @property
    def takes_images(self) -> bool:
        return self.kind != "none"


NO_IMAGES = ImageInputs("none")
ONE_IMAGE = ImageInputs("one")
FIRST_LAST = ImageInputs("first_last")


@dataclass(frozen=True)
class RequestImage:
    """One image sent with a request, and what it is to the model."""

    role: ImageRole
    data: bytes
    content_type: str = "image/jpeg"
    filename: str = "reference.jpg"


@dataclass(frozen=True)
class VideoRequest:
    """One submission. ``idempotency_key`` is recorded in the row before submitting.

    ``images`` are the photos as the model takes them (``service.media.references``):
    one composed first frame, a first and a last frame, or references."""

    prompt: str
    model: str
    size: str
    seconds: str
    idempotency_key: str
    images: tuple[RequestImage, ...] = ()

    def image(self, role: ImageRole) -> RequestImage | None:
        """The first image sent as ``role``, if any."""
        return next((i for i in self.images if i.role == role), None)

    @property
    def references(self) -> tuple[RequestImage, ...]:
        return tuple(i for i in self.images if i.role == "reference")


def request_problem(prompt: str, size: str | None, seconds: str | None) -> str | None:
    """What the database would refuse in a request (sql/0001, sql/0011), said first and
    in a line; None if nothing. The model's own sizes and lengths are the database's and
    the adapter's to judge."""
    text = prompt.strip()
    if not text:
        return "the prompt is empty: say what the video shows"
    if len(text) > PROMPT_MAX:
        return f"the prompt has {len(text)} characters; at most {PROMPT_MAX}"
    if size is not None:
        if not SIZE_PATTERN.match(size):
            return "the size must be WIDTHxHEIGHT in pixels, like 1280x720"
        if any(int(side) > SIDE_MAX for side in size.split("x")):
            return f"the size may be at most {SIDE_MAX} pixels a side"
    if seconds is not None and not (seconds.isdigit() and 1 <= int(seconds) <= SECONDS_MAX):
        return f"the length must be a whole number of seconds from 1 to {SECONDS_MAX}"
    return None
