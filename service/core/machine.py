"""The pure state machine: a row's state plus what just happened gives its next state.

Nothing here does IO, reads a clock or draws a random number: the caller passes the
jitter in, and the only "now" is the database's, carried by the row itself
(``Job.as_of``). That is what lets every transition be tested exhaustively, what makes
a crash harmless (the row holds the state, this module only decides), and what keeps a
worker whose clock is wrong from deciding anything on it.

The machine speaks the domain: it returns a ``Transition`` whose ``change`` is one of a
few typed records (``RecordIntent``, ``RecordJob``, ...). Which columns those land in is
the repository's business alone.

Stages (mirrored by CHECK constraints in ``sql/0001_videos.sql``, ``sql/0012``)::

    pending ──intent──> submitting ──accepted──> generating ──done──> archiving
                         │ ^  outcome unknown: reconcile with the provider's list;
                         └─┘  nothing there: drop the key and submit again
    archiving ──stored──> describing ──media (or given up)──> completed
    any stage but describing ── permanent error / retries exhausted ──> failed (+ error_kind)

``archiving`` ends the moment the video is stored: its URL, size and checksum are the
checkpoint (status ``completed`` already), and the thumbnail, poster, facts and
rendition are a later stage, ``describing``, that ends ``completed`` whatever happens
in it. A crash between the upload and that checkpoint leaves the row ``archiving``;
the next attempt stores the video again (the store replaces what is at the key) or,
when the provider can no longer give it, finds it stored (``Archived.recovered``). A
video is failed as ``expired`` only when the store said it does not hold it: while the
store cannot say (``StoreSilent``), the row keeps trying.

``submitting`` is the "intent recorded" checkpoint: the row holds an idempotency key
before the provider is called, so after a crash the worker reconciles instead of
paying twice. A host that can never reconcile (``Unreconcilable``) fails the row at
once as ``in_doubt``, saying what a person needs to settle it.

A failed transition always says which outcome it is (``Transition.error_kind``): the
request was wrong, a photo's host could not deliver it, a safety filter stopped it,
the model is retired, the provider failed, nobody can tell whether a job exists, or
the video expired unarchived.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from service.core.events import (
    Accepted,
    Archived,
    Change,
    Described,
    Event,
    ForgetIntent,
    Generated,
    GenerationFailed,
    InDoubt,
    IntentRecorded,
    NotFoundAtProvider,
    NotSubmitted,
    OverBudget,
    PhotoUnavailable,
    Progressed,
    RecordArchive,
    RecordDownload,
    RecordIntent,
    RecordJob,
    RecordMedia,
    RecordProgress,
    Rejected,
    StoreSilent,
    Throttled,
    Transient,
    Unreconcilable,
    Vanished,
    Waiting,
)
from service.core.job import ACTIVE_STAGES, Job, Policy, Stage
from service.core.polls import first_poll, poll_delay
from service.core.request import ErrorKind

FALLIBLE = tuple(stage for stage in ACTIVE_STAGES if stage is not Stage.DESCRIBING)
"""The stages a row can fail in: all active ones but ``describing`` (its video is stored)."""


@dataclass(frozen=True)
class Transition:
    """The checkpoint to write: the new stage, when the row is next due, what changed.

    ``error`` is always written: the reason a person reads for a failed, retried or
    waiting row, or None once a step succeeded. ``error_kind`` is set exactly when the
    row fails: which outcome it is, for an app to act on without parsing ``error``.
    """

    stage: Stage
    attempts: int
    delay: timedelta
    log_event: str
    error: str | None = None
    change: Change | None = None
    error_kind: ErrorKind | None = None

    @property
    def finished(self) -> bool:
        return self.stage in (Stage.COMPLETED, Stage.FAILED)


class IllegalTransition(Exception):
    """An event arrived that the row's stage cannot take: a bug in the shell."""


NOW = timedelta(0)


def retry_delay(attempt: int, policy: Policy, jitter: float) -> timedelta:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, scaled by 0.5-1.0."""
    exponent = min(max(attempt - 1, 0), 30)
    raw: timedelta = min(policy.retry_base * (2**exponent), policy.retry_cap)
    return raw * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


def apply(job: Job, event: Event, *, policy: Policy, jitter: float) -> Transition:
    """Decide the checkpoint that follows ``event`` for ``job``. Pure and total.

    Time is ``job.as_of``, the database's clock: never the worker's.
    Raises IllegalTransition for an event the row's stage cannot take.
    """
    match event:
        case Transient() if job.stage is Stage.DESCRIBING:
            return _retry_media(job, event.reason, policy, jitter)
        case Rejected() if job.stage in FALLIBLE:
            return _fail(job, event.reason, event.kind)
        case Transient() if job.stage in FALLIBLE:
            return _retry(job, event.reason, event.retry_after, policy, jitter)
        case Waiting() if job.stage in (Stage.PENDING, Stage.SUBMITTING):
            deadline = _paid_deadline(job, policy) if job.submit_key is not None else None
            if deadline is not None and job.as_of >= deadline:
                # A paid job that could not be settled in time: say which one it was.
                return _fail(job, _too_late(job, policy, event.reason), "in_doubt")
            return Transition(
                job.stage,
                job.attempts,  # not a failure: the attempt budget is untouched
                min(policy.poll_interval, event.retry_after or policy.poll_interval),
                "video.waiting",
                error=f"waiting: {event.reason}",
            )
        case OverBudget() if _unsent(job):
            # Nothing was sent and nothing failed: the row waits for the budget's next
            # day (or a raised budget), its attempts untouched.
            return _put_off(job, event.retry_after, "video.over_budget", event.reason)
        case Throttled() if _unsent(job) or job.stage is Stage.GENERATING:
            # Nothing was sent: the rate every replica shares has no room yet. Not a
            # failure (attempts untouched); a generating row's deadline still holds at
            # its next poll, and its error stays clear (it is not waiting on anything
            # wrong).
            polling = job.stage is Stage.GENERATING
            reason = None if polling else event.reason
            return _put_off(job, event.retry_after, "video.throttled", reason)
        case (
            IntentRecorded()
            | Accepted()
            | NotFoundAtProvider()
            | NotSubmitted()
            | PhotoUnavailable()
            | InDoubt()
            | Unreconcilable()
        ):
            transition = _on_submission(job, event, policy=policy, jitter=jitter)
        case _:
            transition = _on_generation(job, event, policy=policy, jitter=jitter)
    if transition is None:
        raise IllegalTransition(f"{type(event).__name__} cannot happen in stage {job.stage}")
    return transition


def _unsent(job: Job) -> bool:
    """Nothing was sent for this row yet (no intent, or one withdrawn)."""
    return job.stage is Stage.PENDING or (job.stage is Stage.SUBMITTING and job.submit_key is None)


def _put_off(job: Job, delay: timedelta, log_event: str, reason: str | None) -> Transition:
    """Look again after ``delay``, stage and attempts as they are: not a failure."""
    error = None if reason is None else f"waiting: {reason}"
    return Transition(job.stage, job.attempts, delay, log_event, error=error)


def _on_submission(job: Job, event: Event, *, policy: Policy, jitter: float) -> Transition | None:
    """Events of the submit step: intent, the provider's answer, reconciliation."""
    stage = job.stage
    match event:
        case IntentRecorded() if stage is Stage.PENDING or (
            stage is Stage.SUBMITTING and job.submit_key is None
        ):
            return Transition(
                Stage.SUBMITTING,
                job.attempts,
                NOW,
                "video.submitting",
                change=RecordIntent(
                    event.submit_key,
                    event.provider,
                    event.request.model,
                    event.request.size,
                    event.request.seconds,
                    event.reference_print,
                    event.photos_sent,
                ),
            )
        case Accepted() if stage is Stage.SUBMITTING:
            return Transition(
                Stage.GENERATING,
                0,
                first_poll(event.likely, policy),
                "video.submitted",
                change=RecordJob(event.video_id, _percent(event.progress)),
            )
        case NotFoundAtProvider() if stage is Stage.SUBMITTING:
            return _retry_afresh(
                job,
                "no job found at the provider for the earlier submission; submitting again",
                None,
                policy,
                jitter,
                immediate=True,
            )
        case NotSubmitted() if stage is Stage.PENDING:
            return _retry(job, event.reason, event.retry_after, policy, jitter)
        case PhotoUnavailable() if stage is Stage.PENDING or (
            stage is Stage.SUBMITTING and job.submit_key is None
        ):
            # Photos are fetched only while preparing: the provider holds nothing.
            return _retry(
                job,
                event.reason,
                None,
                policy,
                jitter,
                most=min(policy.photo_attempts, policy.max_attempts),
                kind="photo_unavailable",
            )
        case NotSubmitted() if stage is Stage.SUBMITTING:
            return _retry_afresh(job, event.reason, event.retry_after, policy, jitter)
        case InDoubt() if stage is Stage.SUBMITTING:
            # Not "will retry": nothing is sent again until the provider's list says the
            # job does not exist (a host that cannot list fails the row at the next step).
            looked = _retry(job, event.reason, event.retry_after, policy, jitter)
            if looked.finished:
                return looked
            return replace(
                looked,
                log_event="video.in_doubt",
                error=f"attempt {looked.attempts}: the create got no clear answer "
                f"({event.reason}); looking for the job at the provider before anything "
                "is sent again",
            )
        case Unreconcilable() if stage is Stage.SUBMITTING and job.submit_key is not None:
            return _fail(job, _settle_by_hand(job, event), "in_doubt")
    return None


def _settle_by_hand(job: Job, event: Unreconcilable) -> str:
    """Everything a person needs to find the job the worker could not (and what to do)."""
    attempted = job.submitted_at.isoformat() if job.submitted_at else "an unknown time"
    adopt = f"sora-worker adopt {job.id} VIDEO_ID"
    if event.litellm:
        # The proxy routes only ids it minted: an upstream id must be wrapped as it would.
        adopt += (
            f" (VIDEO_ID as {event.host} returned it), or sora-worker adopt {job.id} "
            f"UPSTREAM_ID --litellm-model {job.model} (the id at the host behind it)"
        )
    return (
        f"in doubt: the create sent to {event.host} at {attempted} got no clear answer, and "
        f"{event.host} cannot list its jobs ({event.reason}), so the worker cannot tell "
        f"whether it made one. Look at {event.host} for a job created then with prompt "
        f"{job.prompt!r} (model {job.model}, size {job.size}, {job.seconds} s; idempotency "
        f"key {job.submit_key}). If there is one: {adopt}. "
        "If there is none: set status to queued to try again."
    )


def _on_generation(job: Job, event: Event, *, policy: Policy, jitter: float) -> Transition | None:
    """Events of polling and archiving."""
    stage = job.stage
    match event:
        case Progressed() if stage is Stage.GENERATING and _overdue(job, policy):
            return _fail(
                job,
                f"the provider did not finish within {policy.generation_timeout} "
                f"(last status {event.provider_status!r}, {event.progress}%)",
                "provider_error",
            )
        case Progressed() if stage is Stage.GENERATING:
            return Transition(
                Stage.GENERATING,
                0,
                poll_delay(job, event, policy),
                "video.progress",
                change=RecordProgress(_percent(event.progress)),
            )
        case Generated() if stage is Stage.GENERATING:
            return Transition(
                Stage.ARCHIVING,
                0,
                NOW,
                "video.generated",
                change=RecordDownload(event.content_url, event.expires_at, event.finished_at),
            )
        case Archived() if stage is Stage.ARCHIVING:
            return Transition(
                Stage.DESCRIBING,
                0,
                NOW,
                "video.archived",
                change=RecordArchive(event.video_url, event.video_bytes, event.video_sha256),
            )
        case StoreSilent() if stage is Stage.ARCHIVING:
            # It may be stored already: never given up on while that is unknown.
            return _retry(job, event.reason, None, policy, jitter, deadline=False)
        case Described() if stage is Stage.DESCRIBING:
            return Transition(
                Stage.COMPLETED,
                0,
                NOW,
                "video.completed",
                change=RecordMedia(event.thumbnail_url, event.media),
            )
        case GenerationFailed() if stage in (Stage.GENERATING, Stage.ARCHIVING):
            return _fail(job, event.reason, event.kind)
        case Vanished() if stage in (Stage.GENERATING, Stage.ARCHIVING):
            # Gone is usually final, but a provider (or a replica's simulator) can answer
            # 404 for a moment: give it max_attempts tries before failing the row.
            return _retry(job, event.reason, None, policy, jitter, bounded=True)
    return None


def _percent(progress: int) -> int:
    """A provider's progress as a running job's: 0-99 (100 means archived), whatever it
    reported (gateways send odd values)."""
    return max(0, min(progress, 99))


def _overdue(job: Job, policy: Policy) -> bool:
    """A job the provider keeps "running" for ever (a lost job, an odd gateway status)."""
    return job.submitted_at is not None and job.as_of - job.submitted_at > policy.generation_timeout


def _retry_afresh(
    job: Job,
    reason: str,
    retry_after: timedelta | None,
    policy: Policy,
    jitter: float,
    *,
    immediate: bool = False,
) -> Transition:
    """The provider certainly holds no job for this row: an unpaid retry (bounded by
    max_attempts) that drops the key, so the next try submits afresh.

    The row stays ``submitting`` rather than going back to ``pending`` because going
    back to status ``queued`` is how a person asks for a fresh start (attempts reset).
    """
    unpaid = replace(job, submit_key=None)
    transition = _retry(unpaid, reason, retry_after, policy, jitter, immediate=immediate)
    if transition.finished:
        return transition
    return replace(transition, change=ForgetIntent())


def _fail(job: Job, reason: str, kind: ErrorKind, attempts: int | None = None) -> Transition:
    return Transition(
        Stage.FAILED,
        job.attempts if attempts is None else attempts,
        NOW,
        "video.failed",
        error=reason,
        error_kind=kind,
    )


def _retry(
    job: Job,
    reason: str,
    retry_after: timedelta | None,
    policy: Policy,
    jitter: float,
    *,
    immediate: bool = False,
    bounded: bool = False,
    deadline: bool = True,
    most: int | None = None,
    kind: ErrorKind | None = None,
) -> Transition:
    """Count a failed try of the current step; fail the row once it is hopeless.

    Before the provider may hold a job, ``max_attempts`` (or ``most``) bounds the tries,
    and the row then fails as ``kind`` (by default the provider's failure, or an expired
    video while archiving). Once the provider may hold a job (a submission in doubt, a
    job generating, a video to archive) the job is paid for, so an outage, however
    long, must not lose it: the worker keeps trying, with capped backoff, until the
    provider can no longer deliver (``_paid_deadline``). ``bounded`` tries (the provider
    says the job is gone) count towards ``max_attempts`` anyway; ``deadline=False``
    tries (the video may already be stored) are never given up.
    """
    attempts = job.attempts + 1
    ends = _paid_deadline(job, policy) if deadline else None
    paid = job.stage in (Stage.GENERATING, Stage.ARCHIVING) or (
        job.stage is Stage.SUBMITTING and job.submit_key is not None
    )
    if (not paid or bounded) and attempts >= (most or policy.max_attempts):
        if kind is None:
            kind = "expired" if job.stage is Stage.ARCHIVING else "provider_error"
        return _fail(job, f"gave up after {attempts} attempts: {reason}", kind, attempts)
    if paid and ends is not None and job.as_of >= ends:
        return _fail(job, _too_late(job, policy, reason), _late_kind(job.stage), attempts)
    delay = NOW if immediate else retry_delay(attempts, policy, jitter)
    if retry_after is not None and not immediate:
        delay = max(delay, min(retry_after, policy.retry_cap))
    return Transition(
        job.stage,
        attempts,
        delay,
        "video.retry",
        error=f"attempt {attempts} failed, will retry: {reason}",
    )


def _retry_media(job: Job, reason: str, policy: Policy, jitter: float) -> Transition:
    """A failed try at the media of a stored video: a few more (``max_attempts``), then
    the row completes without them. Never failed, never expired: the video is stored."""
    attempts = job.attempts + 1
    if attempts >= policy.max_attempts:
        return Transition(Stage.COMPLETED, attempts, NOW, "video.completed_without_media")
    return Transition(
        Stage.DESCRIBING,
        attempts,
        retry_delay(attempts, policy, jitter),
        "video.retry",
        error=f"attempt {attempts} at the media failed, will retry: {reason}",
    )


def _paid_deadline(job: Job, policy: Policy) -> datetime | None:
    """Until when a job the provider may hold is still worth trying for."""
    if job.stage is Stage.ARCHIVING and job.expires_at is not None:
        return job.expires_at
    if job.submitted_at is None:
        return None
    if job.stage is Stage.ARCHIVING:
        return job.submitted_at + policy.generation_timeout + policy.archive_grace
    return job.submitted_at + policy.generation_timeout


def _late_kind(stage: Stage) -> ErrorKind:
    """A paid job given up on: the video lapsed, the create stayed in doubt, or the
    provider never finished."""
    match stage:
        case Stage.ARCHIVING:
            return "expired"
        case Stage.SUBMITTING:
            return "in_doubt"
        case _:
            return "provider_error"


def _too_late(job: Job, policy: Policy, reason: str) -> str:
    match job.stage:
        case Stage.ARCHIVING:
            return f"could not archive the video before the provider's link expired: {reason}"
        case Stage.SUBMITTING:
            return (
                f"could not learn within {policy.generation_timeout} whether the provider "
                f"accepted the job (idempotency key {job.submit_key}); check the provider's "
                f"dashboard before asking again. Last error: {reason}"
            )
        case _:
            return f"the provider did not finish within {policy.generation_timeout}: {reason}"
