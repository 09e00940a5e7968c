"""Composing two photos into the one reference frame the generator accepts."""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import zlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageChops

from service.media import png_strips
from service.media.images import ImageError, compose_reference, decode, in_photo_thread


def solid(color: tuple[int, int, int], size: tuple[int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


RED, BLUE = (230, 20, 20), (20, 20, 230)


@pytest.mark.parametrize(
    "size", [(720, 1280), (1280, 720), (1024, 1792), (1792, 1024), (1920, 1080)]
)
def test_the_reference_has_exactly_the_video_size(size: tuple[int, int]) -> None:
    photos = [decode("a", solid(RED, (500, 700))), decode("b", solid(BLUE, (900, 600)))]
    out = Image.open(io.BytesIO(compose_reference(photos, *size)))
    assert out.size == size and out.format == "JPEG"


def test_portrait_stacks_the_two_people_and_landscape_puts_them_side_by_side() -> None:
    photos = [decode("a", solid(RED, (400, 400))), decode("b", solid(BLUE, (400, 400)))]
    portrait = Image.open(io.BytesIO(compose_reference(photos, 720, 1280))).convert("RGB")
    assert _is(portrait.getpixel((360, 320)), RED) and _is(portrait.getpixel((360, 960)), BLUE)
    landscape = Image.open(io.BytesIO(compose_reference(photos, 1280, 720))).convert("RGB")
    assert _is(landscape.getpixel((320, 360)), RED) and _is(landscape.getpixel((960, 360)), BLUE)


def test_photos_are_letterboxed_not_stretched() -> None:
    # A tall photo in a wide frame keeps its shape: the red square at its top must stay
    # square (stretched to 1280x720 it would become a wide band).
    src = Image.new("RGB", (200, 800), (0, 0, 0))
    src.paste(Image.new("RGB", (200, 200), RED), (0, 0))
    out = io.BytesIO()
    src.save(out, format="PNG")
    composed = Image.open(io.BytesIO(compose_reference([decode("a", out.getvalue())], 1280, 720)))
    composed = composed.convert("RGB")
    # Scaled to height 720 the photo is 180 wide, centred: the square is 180x180.
    red_columns = [x for x in range(1280) if _is(composed.getpixel((x, 90)), RED)]
    red_rows = [y for y in range(720) if _is(composed.getpixel((640, y)), RED)]
    assert abs(len(red_columns) - len(red_rows)) <= 6
    assert 170 <= len(red_columns) <= 190


def test_a_single_photo_fills_the_frame() -> None:
    composed = compose_reference([decode("a", solid(RED, (720, 1280)))], 720, 1280)
    image = Image.open(io.BytesIO(composed)).convert("RGB")
    assert _is(image.getpixel((10, 10)), RED) and _is(image.getpixel((710, 1270)), RED)


def test_exif_orientation_is_honoured() -> None:
    image = Image.new("RGB", (400, 200), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    assert decode("a", out.getvalue()).size == (200, 400)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a" + b"\x00" * 100, "is GIF; use JPEG, PNG or WebP"),
        (b"hello", "not a readable image"),
        (solid(RED, (10, 10), "GIF"), "GIF"),
        (solid(RED, (10, 10), "BMP"), "BMP"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "is HEIC"),
    ],
)
def test_non_photos_are_refused_permanently_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as caught:
        decode("image1_url", data)
    assert caught.value.permanent
    assert "image1_url" in str(caught.value)
    # Finding 4: Pillow's own text names the BytesIO object and its address.
    assert "BytesIO" not in str(caught.value) and "0x" not in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [
        solid(RED, (10, 10), "BMP"),
        solid(RED, (10, 10), "GIF"),
        solid(RED, (10, 10), "TIFF"),
        b"P6\n2 2\n255\n" + b"\x00" * 12,  # PPM
        b"hello, not an image at all" * 4,
        solid(RED, (10, 10), "PNG"),
    ],
    ids=["bmp", "gif", "tiff", "ppm", "junk", "png"],
)
def test_no_parser_but_the_accepted_formats_ever_sees_a_photo(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24, finding 8: Image.open tried every parser Pillow has before the format
    was checked. Every parser Pillow has is watched; only JPEG's, PNG's and WebP's may run."""
    Image.init()
    ran: list[str] = []
    for name, (factory, accept) in list(Image.OPEN.items()):

        def watched(*args: object, _name: str = name, _factory: object = factory) -> object:
            ran.append(_name)
            return _factory(*args)  # type: ignore[operator]

        monkeypatch.setitem(Image.OPEN, name, (watched, accept))
    with contextlib.suppress(ImageError):
        decode("image1_url", data)
    assert set(ran) <= {"JPEG", "PNG", "WEBP"}, ran


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` (and holds next to nothing)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I4s", len(data), kind) + data + struct.pack(">I", zlib.crc32(kind + data))


def _jpeg_header(width: int, height: int, frame: int = 0xC0) -> bytes:
    """A JPEG's start: SOI, an APP0 segment, the frame header (SOF0: baseline, SOF2:
    progressive) and a scan of its three components."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01" + b"\x00" * 7
    sof = bytes([0xFF, frame]) + struct.pack(">HBHHB", 17, 8, height, width, 3)
    sof += b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + app0 + sof + sos + b"\x00" * 64 + b"\xff\xd9"


def _progressive_jpeg_header(width: int, height: int) -> bytes:
    return _jpeg_header(width, height, 0xC2)


@pytest.mark.parametrize(
    ("header", "limit"),
    [(_png_header, "40 MP"), (_progressive_jpeg_header, "40 MP"), (_jpeg_header, "200 MP")],
    ids=["png", "progressive-jpeg", "baseline-jpeg"],
)
def test_a_bomb_is_refused_with_its_real_pixel_count(
    header: Callable[[int, int], bytes], limit: str
) -> None:
    """Issue 24, finding 8: Pillow's own bomb check fired first and the refusal said
    "more than 179 MP"; the photo's real size is what a person needs. (A JPEG decoded a
    band at a time at 1/8 of its size may be larger than 40 MP: 50 MP phone photos.)"""
    with pytest.raises(ImageError) as caught:
        decode("image1_url", header(50_000, 50_000), fit=(720, 1280))
    assert str(caught.value) == f"image1_url is 50000x50000 (2500.0 MP); the limit is {limit}"
    assert caught.value.permanent


def test_decompression_bombs_are_refused() -> None:
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")
    with pytest.raises(ImageError, match=r"the limit is 40 MP") as caught:
        decode("image2_url", bomb.getvalue())
    assert caught.value.permanent


def test_a_photo_over_the_pixel_limit_is_refused_with_its_size_and_the_limit() -> None:
    big = io.BytesIO()
    Image.new("L", (7000, 7000)).save(big, format="PNG")
    with pytest.raises(ImageError) as caught:
        decode("image1_url", big.getvalue(), fit=(720, 1280))
    assert str(caught.value) == "image1_url is 7000x7000 (49.0 MP); the limit is 40 MP"


def noisy(mode: str, size: tuple[int, int]) -> Image.Image:
    """An image in ``mode`` whose rows differ (so every PNG filter type turns up)."""
    grey = Image.effect_noise(size, 60)
    if mode == "P":
        return Image.merge("RGB", (grey, grey.rotate(90, expand=False), grey)).quantize(64)
    return Image.merge(
        "RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey)
    ).convert(mode)


def png_of(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **params)
    return out.getvalue()


def whole_then_reduced(data: bytes, factor: int) -> Image.Image:
    """What decoding the whole PNG and then reducing it gives."""
    image = Image.open(io.BytesIO(data))
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return image.reduce(factor).convert("RGB")


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        ("RGB", {}),
        ("RGBA", {}),
        ("L", {}),
        ("LA", {}),
        ("P", {}),
        ("P", {"transparency": 3}),
        ("RGB", {"transparency": (10, 20, 30)}),
    ],
    ids=["rgb", "rgba", "grey", "grey-alpha", "palette", "palette-trns", "rgb-trns"],
)
def test_a_png_decoded_in_strips_is_pixel_for_pixel_the_whole_photo_reduced(
    mode: str, params: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24, finding 7: a large PNG is decoded a strip of rows at a time, each strip
    reduced as it comes (png_strips); the result is what the whole decode would give.
    Small strips (a few rows each) and a size the factor does not divide test every
    seam, the last partial block included."""
    monkeypatch.setattr(png_strips, "STRIP_BYTES", 4096)
    data = png_of(noisy(mode, (1283, 997)), **params)
    decoded = decode("image1_url", data, fit=(300, 200))  # factor 997 // 300 = 3
    expected = whole_then_reduced(data, 3)
    assert decoded.size == expected.size == (428, 333)
    assert ImageChops.difference(decoded, expected).getbbox() is None


def test_a_large_png_never_exists_whole_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24, finding 7: a 6000x6000 PNG was decoded whole (137 MiB at 4 bytes a
    pixel) before being reduced. Every image Pillow's loaders and Image.new allocate is
    watched: none is near the photo's size."""
    data = png_of(Image.new("RGB", (6000, 6000), RED))
    largest = _largest_allocation(monkeypatch, lambda: decode("image1_url", data, fit=(720, 1280)))
    assert largest <= 1500 * 1500  # the reduced photo; each strip is smaller still


@pytest.mark.parametrize("kind", ["interlaced", "16-bit"])
def test_a_png_that_cannot_be_cut_into_strips_is_decoded_whole(kind: str) -> None:
    """Interlaced and 16-bit PNGs (rare for photos) are decoded whole, then reduced."""
    if kind == "interlaced":
        data = _interlaced_png(Image.new("RGB", (1200, 900), RED))
        assert Image.open(io.BytesIO(data)).info.get("interlace") == 1
    else:
        data = png_of(Image.new("I;16", (1200, 900), 300))
    decoded = decode("image1_url", data, fit=(300, 200))
    assert decoded.size == (400, 300)
    if kind == "interlaced":
        assert _is(decoded.getpixel((200, 150)), RED)


def _interlaced_png(image: Image.Image) -> bytes:
    """``image`` (RGB) as an Adam7-interlaced PNG (Pillow writes none): seven passes,
    each a small image of every n-th pixel, its rows unfiltered."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
    passes += ((0, 1, 1, 2),)
    width, height = image.size
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        for y in range(y0, height, dy):
            columns = range(x0, width, dx)
            if columns:
                row = image.crop((0, y, width, y + 1)).tobytes()
                raw += b"\x00" + b"".join(row[3 * x : 3 * x + 3] for x in columns)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", zlib.compress(bytes(raw))),
            _chunk(b"IEND", b""),
        )
    )


def _largest_allocation(monkeypatch: pytest.MonkeyPatch, work: Callable[[], object]) -> int:
    """The most pixels of any image Pillow allocated for decoding or Image.new in ``work``."""
    allocated: list[int] = []
    new = Image.core.new

    def watched(mode: str, size: tuple[int, int]) -> object:
        allocated.append(size[0] * size[1])
        return new(mode, size)

    monkeypatch.setattr(Image.core, "new", watched)
    work()
    return max(allocated)


@pytest.mark.parametrize("where", ["before", "after"], ids=["exif-first", "exif-last"])
def test_the_orientation_of_a_png_decoded_in_strips_is_honoured(where: str) -> None:
    """An eXIf chunk may come before the pixels or after them (Pillow reads both)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    data = png_of(Image.new("RGB", (2600, 1300), RED), exif=exif)
    if where == "after":
        data = _exif_after_pixels(data)
    assert decode("image1_url", data, fit=(640, 640)).size == (650, 1300)


def _exif_after_pixels(data: bytes) -> bytes:
    chunks, pos, exif = [], 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunk = data[pos : pos + 12 + length]
        pos += 12 + length
        if chunk[4:8] == b"eXIf":
            exif = chunk
        else:
            chunks.append(chunk)
    assert exif and chunks[-1][4:8] == b"IEND"
    return data[:8] + b"".join(chunks[:-1]) + exif + chunks[-1]


def test_a_webp_is_held_to_its_own_lower_limit() -> None:
    """Pillow decodes WebP whole, into four full-size buffers (no reduced decode): a
    36 MP WebP took 550 MiB. WebP photos stop at 10 MP."""
    out = io.BytesIO()
    Image.new("RGB", (4000, 3000), RED).save(out, format="WEBP", lossless=True)
    with pytest.raises(ImageError) as caught:
        decode("image1_url", out.getvalue(), fit=(720, 1280))
    assert str(caught.value) == (
        "image1_url is 4000x3000 (12.0 MP); the limit for WebP (decoded whole) is 10 MP"
    )
    small = io.BytesIO()
    Image.new("RGB", (3000, 2000), RED).save(small, format="WEBP")
    assert decode("image1_url", small.getvalue(), fit=(720, 1280)).size == (3000, 2000)


def test_a_large_png_is_reduced_to_the_size_needed() -> None:
    """Finding 3: PNG has no reduced decode, so it is reduced straight after decoding
    (the full-size copy is dropped before the next photo is decoded)."""
    big = io.BytesIO()
    Image.new("RGBA", (5000, 4000), (*RED, 255)).save(big, format="PNG")
    decoded = decode("image1_url", big.getvalue(), fit=(720, 1280))
    assert decoded.mode == "RGB"
    assert min(decoded.size) >= 1280 and decoded.size == (1667, 1334)  # reduced by 3


async def test_photos_are_decoded_on_one_dedicated_thread() -> None:
    """Finding 3: one thread (one malloc arena) for all decoding, not the default pool."""
    names = {await in_photo_thread(lambda: threading.current_thread().name) for _ in range(8)}
    assert len(names) == 1 and next(iter(names)).startswith("sora-photos")


def _is(pixel: object, color: tuple[int, int, int]) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(int(a) - b) < 40 for a, b in zip(pixel, color, strict=False))


def test_a_large_jpeg_is_decoded_at_the_size_needed() -> None:
    big = io.BytesIO()
    Image.new("RGB", (6000, 8000), RED).save(big, format="JPEG", quality=80)
    decoded = decode("image1_url", big.getvalue(), fit=(720, 1280))
    assert decoded.width < 6000 and decoded.height >= 1280
