"""Composing two photos into the one reference frame the generator accepts."""

from __future__ import annotations

import io
import threading

import pytest
from PIL import Image

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
        (b"GIF89a" + b"\x00" * 100, "not a readable image"),
        (b"hello", "not a readable image"),
        (solid(RED, (10, 10), "GIF"), "GIF"),
        (solid(RED, (10, 10), "BMP"), "BMP"),
    ],
)
def test_non_photos_are_refused_permanently_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as caught:
        decode("image1_url", data)
    assert caught.value.permanent
    assert "image1_url" in str(caught.value)
    # Finding 4: Pillow's own text names the BytesIO object and its address.
    assert "BytesIO" not in str(caught.value) and "0x" not in str(caught.value)


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
