"""Fetching the two photos and composing the one input reference the generator takes.

The Videos API accepts a single reference image whose size must equal the video's
exactly, so two people are composed into one frame: side by side for landscape,
stacked for portrait, each scaled to fit its half without stretching (letterboxed on
a blurred copy of itself, so no harsh black bars).

Photos come from URLs anyone can put in a row, so fetching is defensive: http(s) only,
a byte limit enforced while streaming, a total timeout, and Pillow's decompression-
bomb guard. Each failure says whether retrying could help.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image, ImageFilter, ImageOps

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
MAX_PIXELS = 40_000_000
REFERENCE_MIME = "image/jpeg"


class ImageError(Exception):
    """A photo could not be used. ``permanent`` means retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    timeout: float


async def fetch_image(client: httpx.AsyncClient, label: str, url: str, limits: Limits) -> bytes:
    """Download one photo, refusing anything too large or not an image."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageError(f"{label} must be an http(s) URL, got {url[:100]!r}", permanent=True)
    try:
        async with asyncio.timeout(limits.timeout):
            return await _download(client, label, url, limits.max_bytes)
    except TimeoutError as err:
        raise ImageError(
            f"{label} did not download within {limits.timeout:g} s", permanent=False
        ) from err
    except httpx.InvalidURL as err:
        raise ImageError(f"{label} is not a valid URL: {err}", permanent=True) from err
    except httpx.TooManyRedirects as err:
        raise ImageError(f"{label} redirects too many times", permanent=True) from err
    except httpx.HTTPError as err:
        raise ImageError(f"{label} could not be fetched: {err!r}", permanent=False) from err


async def _download(client: httpx.AsyncClient, label: str, url: str, max_bytes: int) -> bytes:
    async with client.stream("GET", url, follow_redirects=True) as response:
        if response.status_code >= 400:
            retry = response.status_code in (408, 425, 429) or response.status_code >= 500
            raise ImageError(f"{label} answered HTTP {response.status_code}", permanent=not retry)
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ImageError(
                f"{label} is {int(declared):,} bytes; the limit is {max_bytes:,}", permanent=True
            )
        buffer = bytearray()
        async for chunk in response.aiter_bytes():
            buffer.extend(chunk)
            if len(buffer) > max_bytes:
                raise ImageError(f"{label} is larger than {max_bytes:,} bytes", permanent=True)
    return bytes(buffer)


def decode(label: str, data: bytes) -> Image.Image:
    """Open and fully decode a photo, honouring its EXIF orientation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise ImageError(
                    f"{label} is {image.format or 'not an image'}; use JPEG, PNG or WebP",
                    permanent=True,
                )
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
    left, top, right, bottom = box
    cell = (right - left, bottom - top)
    backdrop = ImageOps.fit(photo, cell).filter(ImageFilter.GaussianBlur(radius=24))
    canvas.paste(backdrop, (left, top))
    fitted = ImageOps.contain(photo, cell, method=Image.Resampling.LANCZOS)
    offset = (left + (cell[0] - fitted.width) // 2, top + (cell[1] - fitted.height) // 2)
    canvas.paste(fitted, offset)
