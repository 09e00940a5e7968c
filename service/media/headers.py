"""What a photo is and how large, read from its first bytes before any decoder runs.

Handed bytes, Pillow tries the parser of every format it knows until one accepts them,
and learns an image's size only by opening it. A photo is untrusted, so the worker
reads the header itself: the format from the magic bytes (anything but JPEG, PNG and
WebP is refused by name without any parser running, and Pillow is then told the one
format to use), and the width and height of the three it accepts (a photo over the
pixel limit is refused with its real size, whatever Pillow's own bomb threshold).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
"""The formats taken, as ``Image.open(..., formats=...)`` wants them: every image the
worker opens is one of these, so no other parser of Pillow's runs on untrusted bytes."""
ACCEPTED = frozenset(IMAGE_FORMATS)

_PNG = b"\x89PNG\r\n\x1a\n"
_MAGIC = (
    (_PNG, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""SOF markers: the frame header holding the size (C4, C8 and CC are other tables)."""
_JPEG_SEQUENTIAL = frozenset({0xC0, 0xC1, 0xC9})
"""Baseline and extended sequential DCT (Huffman or arithmetic): libjpeg decodes these
at 1/2, 1/4 or 1/8 of their size a band at a time, if all components share one scan.
Progressive, lossless and multi-scan files are held whole (every DCT coefficient)."""
_READ = 64 * 1024


@dataclass(frozen=True)
class Header:
    format: str | None
    """Pillow's name for the format (``JPEG``, ``PNG``, ``WEBP``, ``GIF``...), None if
    the bytes are no image format we know."""
    size: tuple[int, int] | None = None
    """(width, height) for the accepted formats, None if the header does not say."""
    streams: bool = False
    """Decoded at a reduced size a band at a time, never whole: a JPEG whose one scan
    is sequential and holds every component."""


def read_header(photo: BinaryIO) -> Header:
    """The format and size of the photo in ``photo`` (read from its start; left wherever)."""
    photo.seek(0)
    head = photo.read(32)
    kind = format_of(head)
    if kind == "PNG":
        return Header(kind, _png_size(head))
    if kind == "WEBP":
        return Header(kind, _webp_size(head))
    if kind == "JPEG":
        return _jpeg(photo)
    return Header(kind)


def format_of(head: bytes) -> str | None:
    """Pillow's name for the format the first bytes (12 are enough) announce, if known."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(head[8:12], "an ISO media file (HEIC, AVIF or video)")
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[12:16] != b"IHDR" or len(head) < 24:
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """From the first chunk: lossy (VP8), lossless (VP8L) or extended (VP8X)."""
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    return None


def _jpeg(photo: BinaryIO) -> Header:
    """The frame header's size, and whether the first scan holds every component:
    markers are walked from the start to the first scan, each segment skipped by its
    length; bytes between segments are skipped as Pillow skips them."""
    photo.seek(2)
    size: tuple[int, int] | None = None
    sequential, components = False, 0
    while True:
        marker = _next_marker(photo)
        if marker is None or marker == 0xD9:  # the end
            return Header("JPEG", size)
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # no segment follows
            continue
        field = photo.read(2)
        if len(field) < 2 or (length := int.from_bytes(field, "big")) < 2:
            return Header("JPEG", size)
        segment = photo.read(min(length - 2, 6))
        photo.seek(length - 2 - len(segment), 1)
        if marker in _JPEG_FRAMES and size is None and len(segment) == 6:
            _precision, height, width, components = struct.unpack(">BHHB", segment)
            size, sequential = (width, height), marker in _JPEG_SEQUENTIAL
        elif marker == 0xDA:  # the first scan: how many components it holds
            streams = sequential and bool(segment) and segment[0] == components
            return Header("JPEG", size, streams)


def _next_marker(photo: BinaryIO) -> int | None:
    """The code of the next marker (0xFF, any fill bytes, the code), or None at the end."""
    while True:
        block = photo.read(_READ)
        if not block:
            return None
        start = block.find(b"\xff")
        if start < 0:
            continue
        rest = block[start:].lstrip(b"\xff")
        while not rest:  # fill bytes up to the block's end
            more = photo.read(_READ)
            if not more:
                return None
            rest = more.lstrip(b"\xff")
            block = more
        consumed = len(block) - len(rest) + 1
        photo.seek(consumed - len(block), 1)
        return rest[0]
