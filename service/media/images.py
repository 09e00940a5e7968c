"""Composing the photos into the one input reference the generator takes.

The Videos API accepts a single reference image whose size must equal the video's
exactly, so two people are composed into one frame: side by side for landscape,
stacked for portrait, each scaled to fit its half without stretching (letterboxed on
a blurred copy of itself, so no harsh black bars).

Photos are untrusted bytes, and the one input whose memory grows with what someone
wrote into a row, so:

- only JPEG, PNG and WebP, known by their first bytes (``headers``): Pillow is told
  the one format to parse, so no other parser of Pillow's ever sees a photo;
- a pixel limit checked on the header, before decoding, stated in the refusal with
  the photo's real size (``MAX_PIXELS``; a JPEG decoded a band at a time may be larger,
  ``MAX_STREAMED_JPEG_PIXELS``; WebP smaller, ``MAX_WEBP_PIXELS``);
- each photo decoded no larger than needed: JPEGs at the reduced size (``draft``);
  PNGs a strip of rows at a time, each strip reduced as it comes (``png_strips``:
  the whole photo never exists at full size); WebP, which Pillow can only decode
  whole (four full-size buffers), has a lower limit instead. Other PNGs (16-bit,
  interlaced, animated: rare for photos) are decoded whole and then reduced;
- the photos are read from files (the fetcher spills them to disk), decoded and placed
  into the frame one at a time (``Reference``), each dropped once placed;
- all of it runs on one dedicated thread (``in_photo_thread``): one photo at a time in
  the whole process, and one malloc arena whose memory is reused from row to row (the
  default thread pool gives each of its threads an arena of its own, and RSS grew with
  every thread that ever decoded a photo); and large buffers go back to the system
  when freed (``_return_large_buffers``).

Pillow is imported inside the functions that decode and compose: only rows with photos
need it, and loading it with the worker would cost every start (and every command).

(Fetching them is ``fetch.py``.)
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO, NoReturn, TypeVar

from service.media import headers, png_strips

if TYPE_CHECKING:
    from PIL import Image

ACCEPTED_FORMATS = headers.ACCEPTED
MAX_PIXELS = 40_000_000
"""Most pixels a photo may have, and most decoded from one: 40 MP, so a 6000x6000 PNG
(36 MP) is taken; see bench/photo_memory.py for what that costs. On the photo's own
size, whatever it is decoded at: a progressive JPEG costs its full size even when
decoded small (libjpeg keeps every coefficient: about 3 bytes a pixel, 157 MiB for a
50 MP one)."""
MAX_STREAMED_JPEG_PIXELS = 200_000_000
"""Most pixels of a JPEG that libjpeg decodes at 1/2 to 1/8 of its size a band at a
time (one sequential scan, ``headers.Header.streams``): a 50 MP phone photo costs
14 MiB so. What it is decoded at must still be within ``MAX_PIXELS``."""
MAX_WEBP_PIXELS = 10_000_000
"""Most pixels of a WebP photo: Pillow decodes WebP whole, into four full-size buffers
(about 16 bytes a pixel: 164 MiB at 10 MP, 552 MiB at 36 MP), with no reduced decode;
as much as the worst other photo within MAX_PIXELS (a 40 MP interlaced PNG, 163 MiB)."""
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

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter (malloc.h)."""
LARGE_ALLOCATION = 1024 * 1024
"""Allocations this large or larger are mapped afresh and unmapped when freed."""


def _return_large_buffers() -> None:
    """Once, as the photo thread starts (process-wide): glibc serves every allocation of
    1 MiB or more straight from the system and gives it back when it is freed.

    By default glibc raises that threshold to the size of the largest block ever freed
    (a reduced photo: 9 MB), after which every buffer below it (a video's chunks, a
    download's) comes from the arena of whichever thread touches it, and arenas
    fragment and keep their pages: bench/photo_memory.py peaked at 224, 244 and 244 MiB
    over rows 1-10, 11-20 and 21-30 without this, 167, 171 and 169 with it.
    ``MALLOC_MMAP_THRESHOLD_`` in the environment wins; without glibc (musl, macOS)
    there is no ``mallopt`` and nothing to do.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION)


_PHOTO_THREAD = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="sora-photos", initializer=_return_large_buffers
)
T = TypeVar("T")


async def in_photo_thread(work: Callable[[], T]) -> T:
    """Run decoding or composing on the one photo thread (see the module docstring)."""
    return await asyncio.get_running_loop().run_in_executor(_PHOTO_THREAD, work)


class ImageError(Exception):
    """A photo cannot be used. ``permanent`` means retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def inspect(label: str, photo: bytes | BinaryIO) -> headers.Header:
    """The photo's header; ImageError if it is not a format we take, or has more pixels
    than its limit (said with its real size). No decoder runs."""
    source = io.BytesIO(photo) if isinstance(photo, bytes) else photo
    header = headers.read_header(source)
    if header.format is None:
        raise ImageError(f"{label} is not a readable image; use JPEG, PNG or WebP", permanent=True)
    if header.format not in ACCEPTED_FORMATS:
        raise ImageError(f"{label} is {header.format}; use JPEG, PNG or WebP", permanent=True)
    if header.size is not None:
        _check_pixels(label, header, header.size)
    return header


def decode(label: str, photo: bytes | BinaryIO, fit: tuple[int, int] | None = None) -> Image.Image:
    """Open and decode a photo (bytes, or a file read from its start), honouring its
    EXIF orientation.

    With ``fit``, the photo is decoded or reduced to the smallest scale whose shorter
    side still covers ``max(fit)`` (either orientation fits after EXIF rotation).
    """
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(photo) if isinstance(photo, bytes) else photo
    header = inspect(label, source)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning starts at 89 MP; ours is lower and says the limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image, orientation = _decoded(label, source, header, fit)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        # Only when Pillow reads a larger size than the header said.
        raise ImageError(
            f"{label} has more pixels than its header says; the limit is {MAX_PIXELS / 1e6:g} MP",
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
    if orientation in _TRANSPOSE:
        image = image.transpose(Image.Transpose[_TRANSPOSE[orientation]])
    return image if image.mode == "RGB" else image.convert("RGB")


def _decoded(
    label: str, source: BinaryIO, header: headers.Header, fit: tuple[int, int] | None
) -> tuple[Image.Image, object]:
    """The photo decoded (reduced when ``fit`` allows) and its EXIF orientation."""
    from PIL import Image

    kind = header.format or ""
    source.seek(0)
    image = Image.open(source, formats=[kind])
    own = image.size
    _check_pixels(label, header, own)  # what Pillow read counts too
    factor = 1 if fit is None else _factor(image.size, max(fit))
    if kind == "PNG" and factor >= 2:
        try:
            reduced, exif = png_strips.decode_reduced(source, factor, _reducible)
        except png_strips.CannotStrip:
            source.seek(0)
            image = Image.open(source, formats=[kind])
        else:
            # Orientation as Pillow reads it (an eXIf chunk anywhere, else XMP), from
            # what the header held and the eXIf chunk the strips passed.
            described = Image.new("1", (1, 1))
            described.info = dict(image.info)
            if exif is not None:
                described.info["exif"] = b"Exif\x00\x00" + exif
            return reduced, described.getexif().get(_ORIENTATION)
    if kind == "JPEG" and factor >= 2:
        width, height = image.size
        image.draft("RGB", (-(-width // factor), -(-height // factor)))
    if image.width * image.height > MAX_PIXELS:  # a JPEG that cannot be decoded smaller
        _refuse(label, header, own, MAX_PIXELS)
    image.load()
    orientation = image.getexif().get(_ORIENTATION)
    factor = 1 if fit is None else _factor(image.size, max(fit))  # what draft left
    if factor < 2:
        return image, orientation
    return _reducible(image).reduce(factor), orientation  # the full size dropped at once


def _check_pixels(label: str, header: headers.Header, size: tuple[int, int]) -> None:
    """Refuse a photo over its format's limit, saying its size and the limit."""
    limit = MAX_PIXELS
    if header.format == "WEBP":
        limit = MAX_WEBP_PIXELS
    elif header.streams:
        limit = MAX_STREAMED_JPEG_PIXELS
    if size[0] * size[1] > limit:
        _refuse(label, header, size, limit)


def _refuse(label: str, header: headers.Header, size: tuple[int, int], limit: int) -> NoReturn:
    width, height = size
    which = " for WebP (decoded whole)" if header.format == "WEBP" else ""
    raise ImageError(
        f"{label} is {width}x{height} ({width * height / 1e6:.1f} MP); "
        f"the limit{which} is {limit / 1e6:g} MP",
        permanent=True,
    )


def _factor(size: tuple[int, int], side: int) -> int:
    """The whole factor to shrink by while the shorter side stays at least ``side``."""
    return max(min(size) // side, 1)


def _reducible(image: Image.Image) -> Image.Image:
    """The image in a mode ``Image.reduce`` takes (palette and 1-bit images are not)."""
    if image.mode in _REDUCIBLE_MODES:
        return image
    return image.convert("RGBA" if "transparency" in image.info else "RGB")


class Reference:
    """The reference frame, composed one photo at a time: a photo can be dropped as
    soon as it is placed, so at most one decoded photo exists at once."""

    def __init__(self, count: int, width: int, height: int) -> None:
        from PIL import Image

        self._canvas = Image.new("RGB", (width, height), (16, 16, 16))
        self._cells = _cells(count, width, height)

    def place(self, index: int, photo: Image.Image) -> None:
        _place(self._canvas, photo, self._cells[index])

    def jpeg(self) -> bytes:
        out = io.BytesIO()
        self._canvas.save(out, format="JPEG", quality=92)
        return out.getvalue()


def compose_reference(photos: list[Image.Image], width: int, height: int) -> bytes:
    """One JPEG of exactly ``width`` x ``height`` showing every photo whole."""
    reference = Reference(len(photos), width, height)
    for index, photo in enumerate(photos):
        reference.place(index, photo)
    return reference.jpeg()


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
