"""Large PNGs decoded a strip of rows at a time, each strip reduced as it comes.

PNG has no reduced decode (JPEG has ``draft``) and Pillow decodes a PNG whole, at 4
bytes a pixel: 137 MiB for a 6000x6000 photo before it can be reduced. But a PNG's
pixels are one zlib stream of rows, each filtered against the row above it alone. So
the stream is inflated here a strip at a time, and each strip goes to Pillow as a
small PNG of its own: the photo's header (width, depth, colour type) and palette, the
strip's rows as they were filtered, after the unfiltered row above them (filter
"none"), so Pillow unfilters and decodes exactly the rows the whole image holds. Each
strip is reduced by the same whole factor and pasted into the reduced image: pixel for
pixel what decoding whole and then ``Image.reduce`` gives (tests/test_images.py), while
memory holds a strip, never the whole photo.

That holds for 8 bits a sample, not interlaced, not animated (``None`` otherwise: the
caller decodes those whole, within the pixel limit). Pillow does all the decoding;
this module only cuts the stream, so every pixel still comes from Pillow's decoder.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Colour type -> samples a pixel (grey, RGB, palette, grey + alpha, RGBA)."""
_KEPT = (b"PLTE", b"tRNS")
"""The chunks before the pixels that change what the pixels mean: copied to each strip."""
STRIP_BYTES = 128 * 1024
"""About how much of the inflated stream one strip holds: small enough that each
buffer of a strip is reused from the photo thread's arena, never mapped afresh
(larger strips cost more system time in page faults and are no faster)."""
_PIECE = 128 * 1024
"""The most inflated at once (a zlib stream may expand a thousandfold)."""


class CannotStrip(Exception):
    """This PNG is not one that can be decoded in strips: decode it whole."""


def decode_reduced(
    photo: BinaryIO, factor: int, prepare: Callable[[Image.Image], Image.Image]
) -> tuple[Image.Image, bytes | None]:
    """``photo`` reduced by ``factor``, decoded strip by strip, and its eXIf chunk.

    ``prepare`` turns each decoded strip into a mode ``reduce`` takes (the same rule the
    whole photo would get). Raises CannotStrip for a PNG this cannot decode (before any
    strip was made), ValueError for one that is damaged or cut short.
    """
    photo.seek(0)
    if photo.read(8) != SIGNATURE:
        raise CannotStrip("not a PNG")
    chunks = _chunks(photo)
    kind, length = next(chunks, (b"", 0))
    ihdr = photo.read(length)
    if kind != b"IHDR" or len(ihdr) != 13 or len(photo.read(4)) != 4:
        raise CannotStrip("no header")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    if depth != 8 or interlace != 0 or colour not in _CHANNELS or not width or not height:
        raise CannotStrip("not 8 bits a sample, or interlaced")
    strips = _Strips(ihdr, width * _CHANNELS[colour], height, factor, prepare)
    exif: bytes | None = None
    for kind, length in chunks:
        if kind in _KEPT and not strips.started:
            strips.keep(kind, photo.read(length))
        elif kind == b"acTL":
            raise CannotStrip("animated")
        elif kind == b"eXIf":
            exif = photo.read(length)
        elif kind == b"IDAT" and not strips.done:
            strips.feed(_read(photo, length))
        elif kind == b"IEND":
            break
        else:
            photo.seek(length, 1)
        if len(photo.read(4)) < 4 and not strips.done:  # the chunk's CRC
            raise ValueError("the PNG is cut short")
    return strips.finish(), exif


def _chunks(photo: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """(type, length) of each chunk; the caller reads or skips its data and CRC."""
    while len(head := photo.read(8)) == 8:
        length, kind = struct.unpack(">I4s", head)
        yield kind, length


def _read(photo: BinaryIO, length: int) -> Iterator[bytes]:
    while length > 0:
        piece = photo.read(min(length, _PIECE))
        if not piece:
            raise ValueError("the PNG is cut short")
        length -= len(piece)
        yield piece


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I4s", len(data), kind) + data + struct.pack(">I", zlib.crc32(kind + data))


class _Strips:
    """The rows as they arrive, decoded and reduced a strip at a time."""

    def __init__(
        self,
        ihdr: bytes,
        row: int,
        height: int,
        factor: int,
        prepare: Callable[[Image.Image], Image.Image],
    ) -> None:
        self._ihdr = ihdr
        self._row = row
        self._width = struct.unpack(">I", ihdr[:4])[0]
        self._height = height
        self._factor = factor
        self._prepare = prepare
        self._rows_per_strip = max(factor, STRIP_BYTES // (row + 1) // factor * factor)
        self._kept: list[bytes] = []
        self._inflater = zlib.decompressobj()
        self._pending = bytearray()
        self._above: bytes | None = None
        self._done_rows = 0
        self._reduced: Image.Image | None = None

    @property
    def started(self) -> bool:
        return self._reduced is not None or bool(self._pending)

    @property
    def done(self) -> bool:
        return self._done_rows >= self._height

    def keep(self, kind: bytes, data: bytes) -> None:
        self._kept.append(_chunk(kind, data))

    def feed(self, pieces: Iterator[bytes]) -> None:
        try:
            for piece in pieces:
                data = piece
                while data and not self.done and not self._inflater.eof:
                    self._take(self._inflater.decompress(data, _PIECE))
                    data = self._inflater.unconsumed_tail
            # Output zlib still holds for input it has already consumed.
            while not self.done and (more := self._inflater.decompress(b"", _PIECE)):
                self._take(more)
        except zlib.error as err:
            raise ValueError("the PNG's data is damaged") from err

    def finish(self) -> Image.Image:
        if not self.done or self._reduced is None:
            raise ValueError("the PNG is cut short")
        return self._reduced

    def _take(self, inflated: bytes) -> None:
        self._pending += inflated
        stride = self._row + 1
        while not self.done:
            rows = min(self._rows_per_strip, self._height - self._done_rows)
            if len(self._pending) < rows * stride:
                return
            with memoryview(self._pending) as pending:
                filtered = pending[: rows * stride].tobytes()
            del self._pending[: rows * stride]
            self._strip(filtered, rows)

    def _strip(self, filtered: bytes, rows: int) -> None:
        from PIL import Image

        above = self._above
        body = filtered if above is None else b"\x00" + above + filtered
        height = rows + (above is not None)
        png = b"".join(
            (
                SIGNATURE,
                _chunk(b"IHDR", struct.pack(">II", self._width, height) + self._ihdr[8:]),
                *self._kept,
                _chunk(b"IDAT", zlib.compress(body, 0)),
                _chunk(b"IEND", b""),
            )
        )
        with Image.open(io.BytesIO(png), formats=["PNG"]) as decoded:
            decoded.load()
            last = decoded.crop((0, height - 1, self._width, height)).tobytes()
            if len(last) != self._row:  # Pillow's mode does not hold the raw samples
                raise CannotStrip(f"mode {decoded.mode} does not keep a row as it was")
            rows_of_strip = (0, height - rows, self._width, height)  # without the row above
            small = self._prepare(decoded).reduce(self._factor, box=rows_of_strip)
        if self._reduced is None:
            size = (-(-self._width // self._factor), -(-self._height // self._factor))
            self._reduced = Image.new(small.mode, size)
        self._reduced.paste(small, (0, self._done_rows // self._factor))
        self._above = last
        self._done_rows += rows
