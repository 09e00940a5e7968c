"""Synthetic but real media for the simulator: a playable H.264 MP4 and its preview images.

Everything is rendered in memory with Pillow and PyAV (no numpy), so a test can open the
bytes with ``av``/Pillow and check size, duration and codec exactly as it would for a
real provider's output. The functions are pure and CPU-bound: call them from a worker
thread (``asyncio.to_thread``) when serving.
"""

from __future__ import annotations

import hashlib
import io
from typing import IO

import av
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["FPS", "render_mp4", "render_spritesheet", "render_thumbnail"]

FPS = 24
_SPRITE_COLUMNS = 4
_SPRITE_ROWS = 2
_SPRITE_SCALE = 4  # each spritesheet tile is 1/4 of the video's width and height


class _Painter:
    """Draws frame ``i`` of a clip: a static background plus a moving ball and captions."""

    def __init__(
        self, width: int, height: int, seconds: int, prompt: str, reference: bytes | None, seed: str
    ) -> None:
        digest = hashlib.sha256(seed.encode()).digest()
        self.width, self.height = width, height
        self.frames = FPS * seconds
        self.accent = tuple(digest[6:9])
        self.margin = max(12, min(width, height) // 24)
        self.font = ImageFont.load_default(size=self.margin)
        self.reference = None if reference is None else _letterboxed(reference, width, height)
        self.background = (
            self.reference.copy()
            if self.reference is not None
            else _gradient(width, height, tuple(digest[0:3]), tuple(digest[3:6]))
        )
        self._caption(ImageDraw.Draw(self.background), 0, prompt[:40])  # static: drawn once

    def frame(self, index: int) -> Image.Image:
        """Return frame ``index``; the ball and the progress bar make every frame different.

        With a reference, frame 0 is the reference itself, nothing drawn on it: an
        image-to-video generator starts from its reference (Sora's ``input_reference``
        is the first frame), and the worker tells twins' jobs apart by exactly that.
        """
        if index == 0 and self.reference is not None:
            return self.reference.copy()
        image = self.background.copy()
        draw = ImageDraw.Draw(image)
        progress = index / max(1, self.frames - 1)
        radius = min(self.width, self.height) // 10
        x, y = radius + int(progress * (self.width - 2 * radius)), self.height // 2
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=self.accent)
        draw.rectangle(
            (0, self.height - 8, int(progress * self.width), self.height), fill=self.accent
        )
        self._caption(draw, 1, f"frame {index + 1}/{self.frames}")
        return image

    def _caption(self, draw: ImageDraw.ImageDraw, line: int, text: str) -> None:
        """Outlined text, readable on any background."""
        position = (self.margin, self.margin * (1 + 2 * line))
        draw.text(position, text, font=self.font, fill="white", stroke_width=2, stroke_fill="black")


def _gradient(
    width: int, height: int, top: tuple[int, ...], bottom: tuple[int, ...]
) -> Image.Image:
    """A vertical two-colour gradient, so videos with different seeds look different."""
    mask = Image.linear_gradient("L").resize((width, height))
    return Image.composite(
        Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), mask
    )


def _letterboxed(reference: bytes, width: int, height: int) -> Image.Image:
    """The reference image scaled to fit the frame without distortion, padded with black."""
    with Image.open(io.BytesIO(reference)) as source:
        return ImageOps.pad(source.convert("RGB"), (width, height), color="black")


def render_mp4(
    width: int, height: int, seconds: int, *, prompt: str, reference: bytes | None, seed: str
) -> bytes:
    """Encode a ``seconds``-long 24 fps H.264/yuv420p MP4 with its index up front (faststart).

    The mp4 muxer implements faststart by re-opening its output for reading, which fails
    on an in-memory buffer; ``io_open`` hands it a snapshot of the bytes written so far,
    which is exactly what it reads while it shifts the media data behind the index.
    yuv420p needs even ``width`` and ``height``.
    """
    painter = _Painter(width, height, seconds, prompt, reference, seed)
    buffer = io.BytesIO()

    def snapshot(_url: str, _flags: int, _options: dict[str, str]) -> IO[bytes]:
        return io.BytesIO(buffer.getvalue())

    with av.open(
        buffer, mode="w", format="mp4", options={"movflags": "+faststart"}, io_open=snapshot
    ) as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(painter.frames):
            frame = av.VideoFrame.from_image(painter.frame(index))  # type: ignore[no-untyped-call]
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def render_thumbnail(
    width: int, height: int, seconds: int, *, prompt: str, reference: bytes | None, seed: str
) -> bytes:
    """The clip's first frame as a WebP image at the video's size (the reference, if any)."""
    out = io.BytesIO()
    _Painter(width, height, seconds, prompt, reference, seed).frame(0).save(out, format="WEBP")
    return out.getvalue()


def render_spritesheet(
    width: int, height: int, seconds: int, *, prompt: str, reference: bytes | None, seed: str
) -> bytes:
    """A JPEG grid (4 columns x 2 rows) of evenly spaced frames at a quarter of the size."""
    painter = _Painter(width, height, seconds, prompt, reference, seed)
    tile = (max(1, width // _SPRITE_SCALE), max(1, height // _SPRITE_SCALE))
    count = _SPRITE_COLUMNS * _SPRITE_ROWS
    sheet = Image.new("RGB", (tile[0] * _SPRITE_COLUMNS, tile[1] * _SPRITE_ROWS))
    for slot in range(count):
        frame = painter.frame(slot * (painter.frames - 1) // (count - 1)).resize(tile)
        sheet.paste(
            frame, ((slot % _SPRITE_COLUMNS) * tile[0], (slot // _SPRITE_COLUMNS) * tile[1])
        )
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=80)
    return out.getvalue()
