"""Our ``WIDTHxHEIGHT`` sizes as the aspect ratio + resolution pairs Veo-style APIs take.

Rows carry a pixel size (the OpenAI shape, and the size the reference photo is composed
at); Veo and most Replicate video models take ``aspect_ratio`` and ``resolution``
instead. Only exact matches are accepted: a size that would silently become another
one would archive a video that is not what the row asked for.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from service.providers.base import RequestRejected

Aspect = Literal["16:9", "9:16"]
Resolution = Literal["720p", "1080p"]


class Frame(NamedTuple):
    aspect_ratio: Aspect
    resolution: Resolution


FRAMES: dict[str, Frame] = {
    "1280x720": Frame("16:9", "720p"),
    "720x1280": Frame("9:16", "720p"),
    "1920x1080": Frame("16:9", "1080p"),
    "1080x1920": Frame("9:16", "1080p"),
}


def frame_of(size: str, model: str) -> Frame:
    """The aspect ratio and resolution for ``size``; RequestRejected names the choices."""
    frame = FRAMES.get(size)
    if frame is None:
        allowed = ", ".join(FRAMES)
        raise RequestRejected(f"size {size} is not offered by {model}; use one of {allowed}")
    return frame
