"""How a row's photos are sent (``service.media.references``): as the model takes them,
with the print of the first image sent (the twins' evidence)."""

from __future__ import annotations

import io

from PIL import Image

from service.core import likeness
from service.core.request import FIRST_LAST, ONE_IMAGE, ImageInputs
from service.media import prints, references

RED, BLUE = (220, 30, 30), (30, 30, 220)


def photos() -> list[references.Decode]:
    """Two photos, each decoded when asked (as the worker hands them over)."""
    return [
        lambda: Image.new("RGB", (900, 700), RED),
        lambda: Image.new("RGB", (500, 800), BLUE),
    ]


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_two_photos_for_first_and_last_frames_are_two_frames_of_the_videos_size() -> None:
    sent = references.arrange(photos(), FIRST_LAST, 1280, 720)
    assert sent.how == "first_last"
    assert [i.role for i in sent.images] == ["first_frame", "last_frame"]
    assert all(size_of(i.data) == (1280, 720) for i in sent.images)
    # The print is of the first frame sent: photo 1, not a composition of both.
    assert sent.first_print == prints.print_of_image(sent.images[0].data)
    alone = references.arrange(photos()[:1], ONE_IMAGE, 1280, 720)
    assert likeness.distance(sent.first_print, alone.first_print) < 5


def test_one_image_models_and_single_photos_get_one_composed_frame() -> None:
    for inputs, pictures in ((ONE_IMAGE, photos()), (FIRST_LAST, photos()[:1])):
        sent = references.arrange(pictures, inputs, 720, 1280)
        assert sent.how == "composed" and [i.role for i in sent.images] == ["first_frame"]
        assert size_of(sent.images[0].data) == (720, 1280)


def test_each_photo_is_decoded_once_and_one_at_a_time() -> None:
    """At most one decoded photo exists at once: the arrangement asks for a photo only
    when it uses it, never both before placing the first."""
    for inputs in (FIRST_LAST, ONE_IMAGE, ImageInputs("references", 3)):
        asked: list[int] = []

        def decoder(index: int, colour: tuple[int, int, int], log: list[int]) -> references.Decode:
            def decode() -> Image.Image:
                log.append(index)
                return Image.new("RGB", (600, 600), colour)

            return decode

        references.arrange([decoder(0, RED, asked), decoder(1, BLUE, asked)], inputs, 1280, 720)
        assert asked == [0, 1], inputs


def test_models_taking_references_get_each_photo_up_to_their_number() -> None:
    sent = references.arrange(photos(), ImageInputs("references", 3), 1280, 720)
    assert sent.how == "references" and [i.role for i in sent.images] == ["reference"] * 2
