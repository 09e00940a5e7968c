"""Composing the photos into the one input reference the generator takes.

The Videos API accepts a single reference image whose size must equal the video's
exactly, so two people are composed into one frame: side by side for landscape,
stacked for portrait, each scaled to fit its half without stretching (letterboxed on
a blurred copy of itself, so no harsh black bars).

Photos are untrusted bytes: only JPEG, PNG and WebP, a pixel limit checked before
decoding, and JPEGs decoded straight at the size needed (``draft``) so a 48 MP phone
photo costs a few MB, not 150. (Fetching them is ``fetch.py``.)

Pillow is imported inside the functions that decode and compose: only rows with photos
need it, and loading it with the worker would cost every start (and every command).
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
MAX_PIXELS = 40_000_000
REFERENCE_MIME = "image/jpeg"


class ImageError(Exception):
    """A photo cannot be used. ``permanent`` means retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def decode(label: str, data: bytes, fit: tuple[int, int] | None = None) -> Image.Image:
    """Open and decode a photo, honouring its EXIF orientation.

    With ``fit``, a JPEG is decoded at the smallest scale still covering that size.
    """
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise ImageError(
                    f"{label} is {image.format or 'not an image'}; use JPEG, PNG or WebP",
                    permanent=True,
                )
            if fit is not None and image.format == "JPEG":
                image.draft("RGB", (max(fit), max(fit)))  # either orientation after EXIF
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(
                    f"{label} is {image.width}x{image.height}, more than {MAX_PIXELS:,} pixels",
                    permanent=True,
                )
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{label} is too large to decode safely", permanent=True) from err
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{label} is not a readable image ({err})", permanent=True) from err
    return ImageOps.exif_transpose(image).convert("RGB")


def compose_reference(photos: list[Image.Image], width: int, height: int) -> bytes:
    """One JPEG of exactly ``width`` x ``height`` showing every photo whole."""
    from PIL import Image

    canvas = Image.new("RGB", (width, height), (16, 16, 16))
    for photo, box in zip(photos, _cells(len(photos), width, height), strict=True):
        _place(canvas, photo, box)
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=92)
    return out.getvalue()


def _cells(count: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Split the frame: one cell per photo, along the frame's longer side."""
    if count <= 1:
        return [(0, 0, width, height)][:count]
    if width >= height:
        step = width // count
        return [
            (i * step, 0, width if i == count - 1 else (i + 1) * step, height) for i in range(count)
        ]
    step = height // count
    return [
        (0, i * step, width, height if i == count - 1 else (i + 1) * step) for i in range(count)
    ]


def _place(canvas: Image.Image, photo: Image.Image, box: tuple[int, int, int, int]) -> None:
    from PIL import Image, ImageFilter, ImageOps

    left, top, right, bottom = box
    cell = (right - left, bottom - top)
    backdrop = ImageOps.fit(photo, cell).filter(ImageFilter.GaussianBlur(radius=24))
    canvas.paste(backdrop, (left, top))
    fitted = ImageOps.contain(photo, cell, method=Image.Resampling.LANCZOS)
    offset = (left + (cell[0] - fitted.width) // 2, top + (cell[1] - fitted.height) // 2)
    canvas.paste(fitted, offset)
