"""Composing the photos into the one input reference the generator takes.

The Videos API accepts a single reference image whose size must equal the video's
exactly, so two people are composed into one frame: side by side for landscape,
stacked for portrait, each scaled to fit its half without stretching (letterboxed on
a blurred copy of itself, so no harsh black bars).

Photos are untrusted bytes, and the one input whose memory grows with what someone
wrote into a row, so:

- only JPEG, PNG and WebP;
- a pixel limit checked on the header, before decoding (``MAX_PIXELS``, stated in the
  refusal);
- JPEGs are decoded straight at the size needed (``draft``), so a 48 MP phone photo
  costs a few MB; PNG and WebP cannot be decoded smaller, so they are decoded whole
  (at most ``MAX_PIXELS`` x 4 bytes) and reduced at once, before the next one starts;
- all decoding and composing runs on one dedicated thread (``in_photo_thread``): one
  photo at a time in the whole process, and one malloc arena whose memory is reused
  from row to row (the default thread pool gives each of its threads an arena of its
  own, and RSS grew with every thread that ever decoded a photo).

Pillow is imported inside the functions that decode and compose: only rows with photos
need it, and loading it with the worker would cost every start (and every command).

(Fetching them is ``fetch.py``.)
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from PIL import Image

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
MAX_PIXELS = 40_000_000
"""Most pixels decoded from one photo (after a JPEG's reduced decode): 40 MP, so a
6000x6000 PNG (36 MP) is decoded; see bench/photo_memory.py for what that costs."""
REFERENCE_MIME = "image/jpeg"
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"})
_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the Image.Transpose that undoes it
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}

_PHOTO_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sora-photos")
T = TypeVar("T")


async def in_photo_thread(work: Callable[[], T]) -> T:
    """Run decoding or composing on the one photo thread (see the module docstring)."""
    return await asyncio.get_running_loop().run_in_executor(_PHOTO_THREAD, work)


class ImageError(Exception):
    """A photo cannot be used. ``permanent`` means retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def decode(label: str, data: bytes, fit: tuple[int, int] | None = None) -> Image.Image:
    """Open and decode a photo, honouring its EXIF orientation.

    With ``fit``, the photo is decoded or reduced to the smallest scale whose shorter
    side still covers ``max(fit)`` (either orientation fits after EXIF rotation).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning starts at 89 MP; ours is lower and says the limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise ImageError(
                    f"{label} is {image.format or 'not an image'}; use JPEG, PNG or WebP",
                    permanent=True,
                )
            width, height = image.size
            if fit is not None and image.format == "JPEG":
                image.draft("RGB", (max(fit), max(fit)))
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(
                    f"{label} is {width}x{height} ({width * height / 1e6:.1f} MP); "
                    f"the limit is {MAX_PIXELS / 1e6:g} MP",
                    permanent=True,
                )
            image.load()
            orientation = image.getexif().get(_ORIENTATION)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"{label} has more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP; "
            f"the limit is {MAX_PIXELS / 1e6:g} MP",
            permanent=True,
        ) from err
    except UnidentifiedImageError as err:
        # Pillow's text names the BytesIO object and its address: nothing to show.
        raise ImageError(
            f"{label} is not a readable image; use JPEG, PNG or WebP", permanent=True
        ) from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(
            f"{label} is not a readable image (its data is damaged or cut short)",
            permanent=True,
        ) from err
    if fit is not None:
        image = _reduce(image, max(fit))
    if orientation in _TRANSPOSE:
        image = image.transpose(Image.Transpose[_TRANSPOSE[orientation]])
    return image if image.mode == "RGB" else image.convert("RGB")


def _reduce(image: Image.Image, side: int) -> Image.Image:
    """Shrink by a whole factor while the shorter side stays at least ``side``; the
    full-size decode is dropped as soon as the small copy exists."""
    factor = min(image.size) // side
    if factor < 2:
        return image
    if image.mode not in _REDUCIBLE_MODES:
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return image.reduce(factor)


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
