"""Prints (``service.core.likeness``) of encoded images and of a video's first frame.

The decoding half of reconciliation's evidence: Pillow and PyAV, run by the caller on
the photo thread. What a print means and how prints are compared is the core's.
"""

from __future__ import annotations

import io

from service.core.likeness import SIDE, Print
from service.media.headers import IMAGE_FORMATS


def print_of_image(data: bytes) -> Print:
    """The print of an encoded image (the composed reference, a thumbnail).

    Raises ValueError for bytes Pillow cannot decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            image.draft("RGB", (SIDE * 4, SIDE * 4))  # JPEG: decode small from the start
            return _reduce(image)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ValueError(f"not a decodable image: {err}") from err


def print_of_video(path: str) -> Print:
    """The print of a video's first decoded frame (a file, perhaps only its start).

    Raises ValueError when no frame can be decoded from it.
    """
    import av

    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                return _reduce(frame.to_image())  # type: ignore[no-untyped-call]
    except (av.FFmpegError, OSError, IndexError) as err:
        raise ValueError(f"no decodable first frame: {err}") from err
    raise ValueError("the video has no frames")


def _reduce(image: object) -> Print:
    from PIL import Image

    assert isinstance(image, Image.Image)
    small = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX)
    return Print(small.tobytes())
