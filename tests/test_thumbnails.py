"""Thumbnails are stored only when their bytes are an image; else the first frame."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from service.local.simulator.media import render_mp4
from service.media import probe as media
from service.media import thumbnails


def encoded(kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format=kind)
    return out.getvalue()


@pytest.mark.parametrize(("kind", "name"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp")])
def test_images_are_told_by_their_first_bytes(kind: str, name: str) -> None:
    data = encoded(kind)
    assert thumbnails.image_type(data[:16]) == name
    webp = thumbnails.as_webp(data)
    assert thumbnails.image_type(webp) == "webp"
    with Image.open(io.BytesIO(webp)) as image:
        assert image.size == (64, 48)


def test_an_mp4_or_a_page_is_not_an_image() -> None:
    mp4 = render_mp4(64, 48, 1, prompt="x", reference=None, seed="s")
    assert thumbnails.image_type(mp4[:16]) is None and thumbnails.is_mp4(mp4[:16])
    page = b"<html><body>not found</body></html>"
    assert thumbnails.image_type(page[:16]) is None and not thumbnails.is_mp4(page[:16])


def test_the_poster_is_the_first_frame_as_a_webp_of_its_size(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(render_mp4(128, 96, 1, prompt="x", reference=None, seed="s"))
    poster = media.probe(video).poster_webp
    assert thumbnails.image_type(poster) == "webp"
    with Image.open(io.BytesIO(poster)) as image:
        assert image.size == (128, 96)


def test_a_file_that_is_no_video_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(media.MediaError):
        media.probe(junk)
