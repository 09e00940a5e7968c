"""Which provider job was made from which row's photos: evidence from the first frame.

The Videos API echoes a job's prompt, model, size and length, never our key, so two
rows with the same prompt and different photos that are both in doubt (a crash, a
timeout) match the same jobs. But an image-to-video generator starts the video from
the reference image (Sora's ``input_reference`` is the first frame; Veo's ``image``
likewise), so a job's first frame looks like the reference it was made from. Each row
records a small print of the reference it sent (``reference_print``); reconciliation
compares candidates' first frames with the prints of every twin in doubt and gives a
row a job only when the job is clearly nearest to that row. What stays ambiguous
stays in doubt, as before.

A print is the image reduced to 16x16 RGB (768 bytes): enough to tell two photo pairs
apart (different people, clothes, light), and blind to what an encoder changes
(compression noise, a few pixels of scaling). The distance is the mean absolute
difference per channel, 0 (same) to 255.

Pure: prints are made from images and videos by ``service.media.prints``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NewType

Print = NewType("Print", bytes)
"""A reference or a frame reduced to SIDE x SIDE RGB pixels."""

SIDE = 16
PRINT_BYTES = SIDE * SIDE * 3

SAME = 1.0
"""Prints this close come from the same reference: their rows are interchangeable."""
CAP = 24.0
"""A first frame further than this from a print was not made from it, whatever else."""
MARGIN = 4.0
"""A job is a row's when its distance to every other twin is at least twice its
distance to this row plus this (compression noise on flat images is about 1-3)."""
UNLIKE = 20.0
"""A text-only row takes a job only if it is at least this far from every photo twin."""


def distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference per channel (0-255); prints of another shape are far."""
    if len(a) != PRINT_BYTES or len(b) != PRINT_BYTES:
        return 255.0
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / PRINT_BYTES


@dataclass(frozen=True)
class Twin:
    """A row in doubt with the same request: its print, or why it has none."""

    key: object
    """Whatever names the row (its id)."""
    photos: bool
    print: bytes | None
    """None with ``photos``: made before prints existed, so it could match anything."""


def choose(
    me: Twin,
    twins: Iterable[Twin],
    candidates: Sequence[str],
    frames: Mapping[str, bytes | None],
) -> str | None:
    """The candidate job (oldest first in ``candidates``) that is clearly ``me``'s.

    ``twins`` are every row in doubt with the same request, ``me`` among them or not;
    ``frames`` holds each candidate's first-frame print (None: unavailable yet).
    Twins with the same print as ``me`` are interchangeable with it, so a job made
    from that print may go to any of them (the unique video_id settles who). None
    means nothing is clearly ours: stay in doubt.
    """
    others = [t for t in twins if t.key != me.key]
    if any(t.photos and t.print is None for t in others):
        return None  # a twin of unknown look: any job could be its
    if me.photos and me.print is None:
        return None
    if me.print is None:
        # Text only: a job is ours if it resembles no photo twin (its frame is not theirs).
        prints = [t.print for t in others if t.print is not None]
        for video_id in candidates:
            frame = frames.get(video_id)
            if frame is not None and all(distance(p, frame) >= UNLIKE for p in prints):
                return video_id
        return None
    rivals = [t.print for t in others if t.print is not None and distance(t.print, me.print) > SAME]
    for video_id in candidates:
        frame = frames.get(video_id)
        if frame is None:
            continue
        mine = distance(me.print, frame)
        if mine > CAP:
            continue
        if all(distance(p, frame) >= 2 * mine + MARGIN for p in rivals):
            return video_id
    return None
