"""A ``videos`` row as the state machine sees it: its id, stage, and the retry policy.

``Stage`` is the worker's fine-grained state; ``Stage.status`` is the one place that
says which coarse ``status`` (the seed's column, read by front ends) each stage shows.
The SQL CHECK ``videos_stage_matches_status`` holds the database to the same pairs,
and a test holds the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NewType
from uuid import UUID

from service.core.request import ErrorKind

RowId = NewType("RowId", UUID)
"""The ``id`` of a ``videos`` row."""

SubmitKey = NewType("SubmitKey", UUID)
"""The idempotency key recorded before a create: the intent to pay for one job."""


class Stage(StrEnum):
    """Where a row is in its life. All but the last two are work the worker owes."""

    PENDING = "pending"
    """Waiting for its first (or a new) submission."""
    SUBMITTING = "submitting"
    """Intent recorded; whether the provider accepted the job may be unknown."""
    GENERATING = "generating"
    """The provider holds the job; poll it."""
    ARCHIVING = "archiving"
    """The provider finished; copy the video into permanent storage before it expires."""
    DESCRIBING = "describing"
    """The video is stored and recorded (its URL, size and checksum): the row already
    shows ``completed``. Its thumbnail, poster, facts and rendition are made now, best
    effort: nothing in this stage can fail the row or let the video expire."""
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def status(self) -> str:
        """The seed's coarse ``status`` this stage shows (front ends read it)."""
        return _STATUS_OF[self]


_STATUS_OF: dict[Stage, str] = {
    Stage.PENDING: "queued",
    Stage.SUBMITTING: "processing",
    Stage.GENERATING: "processing",
    Stage.ARCHIVING: "processing",
    Stage.DESCRIBING: "completed",
    Stage.COMPLETED: "completed",
    Stage.FAILED: "failed",
}


ACTIVE_STAGES: tuple[Stage, ...] = (
    Stage.PENDING,
    Stage.SUBMITTING,
    Stage.GENERATING,
    Stage.ARCHIVING,
    Stage.DESCRIBING,
)


@dataclass(frozen=True)
class Job:
    """The part of a ``videos`` row the machine decides on, as read at ``as_of``."""

    id: RowId
    stage: Stage
    as_of: datetime
    """The database's clock when the row was read: the machine's only "now". Every time
    it compares with (``submitted_at``, lease ends) was written by the same clock."""
    attempts: int = 0
    prompt: str | None = None
    image1_url: str | None = None
    image2_url: str | None = None
    model: str | None = None
    size: str | None = None
    seconds: str | None = None
    provider: str | None = None
    video_id: str | None = None
    submit_key: SubmitKey | None = None
    submitted_at: datetime | None = None
    progress: int = 0
    progress_at: datetime | None = None
    """When ``progress`` was first seen at its value (the job's recent pace)."""
    expires_at: datetime | None = None
    error_kind: ErrorKind | None = None
    """A failed row's outcome (read back for operators; the machine decides on stage)."""


@dataclass(frozen=True)
class Policy:
    """Retry rules, from settings."""

    poll_interval: timedelta
    """The shortest pause between two polls of a job (and the first poll's delay)."""
    max_attempts: int
    retry_base: timedelta
    retry_cap: timedelta
    generation_timeout: timedelta = timedelta(hours=3)
    poll_ceiling: timedelta = timedelta(seconds=60)
    """The longest pause between two polls, whatever the job's pace suggests."""
    typical_generation: timedelta | None = None
    """How long the model usually takes, if known: before its durations are learnt, a
    job that reports no progress yet is next looked at when it should be about done."""
    poll_lateness: float = 0.1
    """The share of the time a job has taken that it may wait, finished, for the poll
    that sees it (never less than ``poll_interval``): every pause between polls is
    bounded by it (``service.core.polls``)."""
    archive_grace: timedelta = timedelta(hours=24)
    """How long after the generation deadline an archive is tried when the provider
    gave no ``expires_at`` (OpenAI documented about a day)."""
    photo_attempts: int = 3
    """Tries a photo host gets before the row fails as ``photo_unavailable`` (never more
    than ``max_attempts``). A host that does not resolve or answer three times running,
    a few seconds apart (each try bounded by SORA_IMAGE_TIMEOUT), is not coming back
    while the row waits; the app can queue it again once the photo is reachable."""
