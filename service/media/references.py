"""How a row's photos are sent: as the model takes them.

A row has up to two photos (for the flagship use, two people who meet). Models take
images in different ways (``ImageInputs``, from the model registry), and this module
decides, from the decoded photos alone:

- a model that takes a first and a last frame gets photo 1 as the first frame and
  photo 2 as the last ("photo 1 is the start, photo 2 the end"), each fitted to the
  video's size (scaled to fit whole, on a blurred copy of itself);
- a model that takes references gets each photo, fitted the same way, as a reference
  (up to as many as it takes);
- a model that takes one image, or a row with one photo, gets them composed into one
  frame of the video's size (``images.compose_reference``), the first frame.

What was sent is recorded with the row (``photos_sent``), and so is a print of the
first image sent (``prints``): a video starts from its first frame, so reconciliation
tells twins' jobs apart by it (``service.core.likeness``). Runs on the photo thread
(``images.in_photo_thread``), like decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.core.likeness import Print
from service.core.request import ImageInputs, ImageRole, PhotosSent, RequestImage
from service.media import images, prints

if TYPE_CHECKING:
    from PIL import Image


Decode = Callable[[], "Image.Image"]
"""A photo, decoded when called: photos are decoded one at a time, each dropped once
placed (a 36 MP photo decodes to over 100 MB; two at once would double the peak)."""


@dataclass(frozen=True)
class Sent:
    """What goes to the generator, how, and the print of its first image."""

    images: tuple[RequestImage, ...]
    how: PhotosSent
    first_print: Print


def arrange(photos: Sequence[Decode], inputs: ImageInputs, width: int, height: int) -> Sent:
    """The photos as ``inputs`` takes them, each image ``width`` x ``height``; each photo
    is decoded (called) once, when it is used, and dropped after."""
    if not photos:
        raise ValueError("arrange needs at least one photo")
    if len(photos) >= 2 and inputs.kind == "first_last":
        roles: tuple[ImageRole, ...] = ("first_frame", "last_frame")
        return _each(photos[:2], roles, "first_last", width, height)
    if len(photos) >= 2 and inputs.kind == "references" and inputs.max_references >= 2:
        kept = photos[: inputs.max_references]
        roles = tuple("reference" for _ in kept)
        return _each(kept, roles, "references", width, height)
    reference = images.Reference(len(photos), width, height)
    for index, decode in enumerate(photos):
        reference.place(index, decode())
    composed = reference.jpeg()
    first = RequestImage("first_frame", composed, images.REFERENCE_MIME)
    return Sent((first,), "composed", prints.print_of_image(composed))


def _each(
    photos: Sequence[Decode],
    roles: Sequence[ImageRole],
    how: PhotosSent,
    width: int,
    height: int,
) -> Sent:
    sent = tuple(
        RequestImage(
            role,
            images.compose_reference([decode()], width, height),
            images.REFERENCE_MIME,
            f"{role}.jpg",
        )
        for decode, role in zip(photos, roles, strict=True)
    )
    return Sent(sent, how, prints.print_of_image(sent[0].data))
