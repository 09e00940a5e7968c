"""A finished video's thumbnail: the provider's, when it really is an image, else the
poster made from the archived video's first frame (``media.py``).

Hosts differ: OpenAI serves a WebP at ``content?variant=thumbnail``; a LiteLLM proxy
drops the variant and sends the whole MP4 again; others have none. Bytes are never
stored as a thumbnail on the word of a URL or a header: their first bytes must say
JPEG, PNG or WebP.

Every thumbnail is stored as WebP, the one image type the video bucket accepts (an
existing bucket is never widened, see ``storage/supabase.py``). PyAV and Pillow are
imported only here, when a thumbnail is made, and the decoding runs on the one photo
thread (``images.in_photo_thread``), one at a time, like every other decode.
"""

from __future__ import annotations

import io
from typing import Literal

from service.media.headers import IMAGE_FORMATS, format_of

ImageType = Literal["jpeg", "png", "webp"]
_TYPES: dict[str, ImageType] = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
MAX_SIDE = 1920
"""A thumbnail larger than this on either side is scaled down."""
WEBP_QUALITY = 80
WEBP_METHOD = 0
"""libwebp's effort (0 fastest, 6 smallest). Every archived row makes a poster, and at
the default effort (4) its encode was three quarters of the CPU a row costs the worker
(3.3 of 4.2 ms for a 320x180 frame); effort 0 encodes 4-5x faster for a file about a
quarter larger, which a poster of a few KB can afford."""


def image_type(head: bytes) -> ImageType | None:
    """What the first bytes of a file say it is, if an image we store."""
    kind = format_of(head)
    return _TYPES.get(kind) if kind is not None else None


def is_mp4(head: bytes) -> bool:
    """An ISO media file (MP4, MOV) announces itself with an ``ftyp`` box first."""
    return head[4:8] == b"ftyp"


def as_webp(data: bytes) -> bytes:
    """A provider's image as WebP (kept byte for byte when it already is one)."""
    if image_type(data[:16]) == "webp":
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
        image.draft("RGB", (MAX_SIDE, MAX_SIDE))
        return webp(image)


def webp(image: object) -> bytes:
    """A Pillow image as WebP, scaled down to MAX_SIDE; the one format of every
    thumbnail and poster."""
    from PIL import Image

    assert isinstance(image, Image.Image)
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    return out.getvalue()
