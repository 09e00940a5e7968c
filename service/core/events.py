"""What can happen to a row (events, from the steps' IO) and what a checkpoint records
(changes, chosen by the machine). Plain data: the machine decides, the shell performs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from service.core.durations import Durations
from service.core.job import SubmitKey
from service.core.request import ErrorKind, PhotosSent, VideoRequest

# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class IntentRecorded:
    """Inputs are ready and valid; ``request`` (keyed by ``submit_key``) goes to
    ``provider`` once the intent is checkpointed."""

    submit_key: SubmitKey
    provider: str
    request: VideoRequest
    reference_print: bytes | None = None
    """The first image sent, reduced to a print (``service.core.likeness``): the evidence
    that later tells this row's job from its identical twins'."""
    photos_sent: PhotosSent | None = None
    """How the photos went: composed, as first and last frames, or as references."""


@dataclass(frozen=True)
class Accepted:
    """The provider created the job (directly, or found by reconciliation)."""

    video_id: str
    progress: int = 0
    likely: Durations | None = None
    """How long the model's recent jobs took (learnt): the first poll waits for the
    earliest likely end."""


@dataclass(frozen=True)
class Rejected:
    """Permanent: the input or the request can never succeed as it is."""

    reason: str
    kind: ErrorKind = "invalid_request"
    """``model_retired`` when the model is gone, ``photo_unavailable`` when a photo's host
    answered that it will not deliver it (404, 403); otherwise the request is wrong."""


@dataclass(frozen=True)
class PhotoUnavailable:
    """A photo's host failed for now (does not resolve, did not answer in time, 5xx or
    429): nothing was sent to any provider. Tried ``Policy.photo_attempts`` times, then
    the row fails as ``photo_unavailable``."""

    reason: str


@dataclass(frozen=True)
class NotSubmitted:
    """Transient, and the provider certainly created nothing (refused, unreachable)."""

    reason: str
    retry_after: timedelta | None = None


@dataclass(frozen=True)
class InDoubt:
    """A create failed in a way that may still have made the job (timeout, 5xx, reset)."""

    reason: str
    retry_after: timedelta | None = None


@dataclass(frozen=True)
class Unreconcilable:
    """A create is in doubt and ``host`` cannot list its jobs: nobody but a person can
    find out whether it made one, so waiting longer only delays that person."""

    reason: str
    host: str
    litellm: bool = False
    """The host is a LiteLLM proxy: a job a person finds upstream is adopted with
    ``--litellm-model`` (the proxy routes only ids it minted)."""


@dataclass(frozen=True)
class NotFoundAtProvider:
    """Reconciliation found no job for our intent: it is safe to submit again."""


@dataclass(frozen=True)
class Progressed:
    """The provider is still working."""

    progress: int
    provider_status: str
    next_poll: timedelta | None = None
    """Poll again after this instead of the policy's interval (webhooks seen to work)."""
    poll_after: timedelta | None = None
    """When the provider asked to be polled again (``openai-poll-after-ms``), if it did."""
    likely: Durations | None = None
    """How long the model's recent jobs took (learnt from the table), if known."""


@dataclass(frozen=True)
class Generated:
    """The provider finished; the video can be downloaded until ``expires_at``."""

    content_url: str
    expires_at: datetime | None
    finished_at: datetime | None = None
    """When the provider says the job finished, if it says (recorded as the job's end,
    from which the model's durations are learnt; else the moment it was seen)."""


@dataclass(frozen=True)
class GenerationFailed:
    """The provider ended the job without a video (safety filter, error, expiry)."""

    reason: str
    kind: ErrorKind = "provider_error"
    """``safety_filtered`` and ``expired`` are outcomes of their own, never retried."""


@dataclass(frozen=True)
class Media:
    """What the archived file is (read from it), and the files made from it. Each part
    is best effort: a row completes whether or not they could be made."""

    duration_seconds: float | None = None
    width: int | None = None
    height: int | None = None
    poster_url: str | None = None
    rendition_url: str | None = None


@dataclass(frozen=True)
class Archived:
    """The video is in permanent storage: recorded at once, before anything else is
    done with it (its media come in the next stage)."""

    video_url: str
    video_bytes: int
    video_sha256: str
    recovered: bool = False
    """Found already stored (an earlier attempt uploaded it and crashed before its
    checkpoint) and measured by reading it back, instead of copied from the provider."""


@dataclass(frozen=True)
class StoreSilent:
    """The archive failed, and the store could not say whether it already holds the
    video (an earlier attempt may have stored it and crashed before its checkpoint).
    Retried with capped backoff for as long as that lasts, never failed as expired:
    ``expired`` is written only for a video the store said it does not hold."""

    reason: str


@dataclass(frozen=True)
class Described:
    """The stored video's media, as far as they could be made (each part best effort)."""

    thumbnail_url: str | None
    media: Media = Media()


@dataclass(frozen=True)
class Waiting:
    """Nothing failed; the step cannot go on yet (an earlier create may still be in
    flight, twins' jobs cannot be told apart yet). Look again as often as a job is
    polled, or at ``retry_after`` when that comes sooner (the moment an in-flight create
    would have timed out), until a paid job's deadline. Looking often is what lets a
    create that lands late be adopted in seconds instead of after the whole timeout."""

    reason: str
    retry_after: timedelta | None


@dataclass(frozen=True)
class OverBudget:
    """Nothing was sent: the day's estimated spend leaves no room for this video
    (SORA_DAILY_BUDGET_USD). The row waits, spending no attempts, and looks again at
    ``retry_after`` (the budget's day ends at midnight UTC)."""

    reason: str
    retry_after: timedelta


@dataclass(frozen=True)
class Throttled:
    """Nothing was sent: the provider's request rate, shared by every replica
    (``service.database.limits``), has no room now. The row waits ``retry_after``,
    spending no attempts (a create not yet asked, or a poll put off)."""

    reason: str
    retry_after: timedelta


@dataclass(frozen=True)
class Vanished:
    """The provider says the job or its file does not exist (deleted, expired, lost)."""

    reason: str


@dataclass(frozen=True)
class Transient:
    """A step failed in a way worth retrying (network, 429, 5xx, storage hiccup)."""

    reason: str
    retry_after: timedelta | None = None


Event = (
    IntentRecorded
    | Accepted
    | Rejected
    | PhotoUnavailable
    | NotSubmitted
    | InDoubt
    | Unreconcilable
    | NotFoundAtProvider
    | Progressed
    | Generated
    | GenerationFailed
    | Archived
    | StoreSilent
    | Described
    | Vanished
    | Waiting
    | OverBudget
    | Throttled
    | Transient
)


# ---------------------------------------------------------------- transitions


@dataclass(frozen=True)
class RecordIntent:
    """Remember the key and parameters before the create (and when, by the DB's clock)."""

    submit_key: SubmitKey
    provider: str
    model: str
    size: str
    seconds: str
    reference_print: bytes | None = None
    photos_sent: PhotosSent | None = None


@dataclass(frozen=True)
class ForgetIntent:
    """The provider certainly holds no job for the key: drop it, so the next try is fresh."""


@dataclass(frozen=True)
class RecordJob:
    """The provider's job that this row now owns."""

    video_id: str
    progress: int


@dataclass(frozen=True)
class RecordProgress:
    progress: int


@dataclass(frozen=True)
class RecordDownload:
    """Where the provider's finished video can be fetched, and until when."""

    content_url: str
    expires_at: datetime | None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class RecordArchive:
    """The permanent copy (and the moment of completion, by the DB's clock): written the
    moment the video is stored, so no later step can lose track of it."""

    video_url: str
    video_bytes: int
    video_sha256: str


@dataclass(frozen=True)
class RecordMedia:
    """The thumbnail and media facts made from the stored video; a part that could not
    be made (None) leaves what the row holds."""

    thumbnail_url: str | None
    media: Media = Media()


Change = (
    RecordIntent
    | ForgetIntent
    | RecordJob
    | RecordProgress
    | RecordDownload
    | RecordArchive
    | RecordMedia
)
