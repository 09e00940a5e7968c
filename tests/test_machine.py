"""Every transition of the pure state machine, without IO."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from service.machine import (
    ACTIVE_STAGES,
    STATUS_OF,
    Accepted,
    Action,
    Archived,
    Event,
    Generated,
    GenerationFailed,
    IllegalTransition,
    IntentRecorded,
    Job,
    NotFoundAtProvider,
    NotSubmitted,
    OutcomeUnknown,
    Policy,
    Progressed,
    Rejected,
    Stage,
    Transient,
    Vanished,
    Waiting,
    apply,
    next_action,
    retry_delay,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = Policy(
    poll_interval=timedelta(seconds=5),
    max_attempts=4,
    retry_base=timedelta(seconds=2),
    retry_cap=timedelta(seconds=60),
)
KEY = uuid.UUID(int=7)

EVENTS: list[Event] = [
    IntentRecorded(KEY, "openai", "sora-2", "720x1280", "4"),
    Accepted("video_1", 3),
    Rejected("bad input"),
    NotSubmitted("refused", timedelta(seconds=9)),
    OutcomeUnknown("timeout"),
    NotFoundAtProvider(),
    Progressed(40, "in_progress"),
    Generated("http://provider/videos/video_1/content", NOW + timedelta(hours=1)),
    GenerationFailed("moderation_blocked"),
    Archived("http://store/v.mp4", 1234, "ab" * 32, None),
    Transient("network"),
    Vanished("gone"),
    Waiting("an identical request is in doubt", timedelta(seconds=1)),
]

# (stage, keyed?) -> event types the stage takes; everything else is illegal.
LEGAL: dict[tuple[Stage, bool], set[type]] = {
    (Stage.PENDING, False): {IntentRecorded, Rejected, NotSubmitted, Transient, Waiting},
    (Stage.SUBMITTING, False): {
        IntentRecorded,
        Accepted,
        Rejected,
        NotSubmitted,
        OutcomeUnknown,
        NotFoundAtProvider,
        Transient,
        Waiting,
    },
    (Stage.SUBMITTING, True): {
        Accepted,
        Rejected,
        NotSubmitted,
        OutcomeUnknown,
        NotFoundAtProvider,
        Transient,
        Waiting,
    },
    (Stage.GENERATING, False): {
        Progressed,
        Generated,
        GenerationFailed,
        Vanished,
        Rejected,
        Transient,
    },
    (Stage.ARCHIVING, False): {Archived, GenerationFailed, Vanished, Rejected, Transient},
    (Stage.COMPLETED, False): set(),
    (Stage.FAILED, False): set(),
}


def job(stage: Stage, *, keyed: bool = False, attempts: int = 0, **kw: object) -> Job:
    return Job(
        id=uuid.UUID(int=1),
        stage=stage,
        attempts=attempts,
        submit_key=KEY if keyed else None,
        video_id="video_1" if stage in (Stage.GENERATING, Stage.ARCHIVING) else None,
        **kw,  # type: ignore[arg-type]
    )


def run(j: Job, event: Event) -> object:
    return apply(j, event, now=NOW, policy=POLICY, jitter=1.0)


@pytest.mark.parametrize(("case", "event"), list(itertools.product(LEGAL, EVENTS)))
def test_every_stage_event_pair_is_either_a_transition_or_refused(
    case: tuple[Stage, bool], event: Event
) -> None:
    stage, keyed = case
    j = job(stage, keyed=keyed)
    if type(event) in LEGAL[case]:
        t = run(j, event)
        assert t.status == STATUS_OF[t.stage]
    else:
        with pytest.raises(IllegalTransition):
            run(j, event)


def test_next_action_per_stage() -> None:
    assert next_action(job(Stage.PENDING), inputs_in_hand=False) is Action.SUBMIT
    assert next_action(job(Stage.SUBMITTING, keyed=True), inputs_in_hand=True) is Action.CREATE
    assert next_action(job(Stage.SUBMITTING, keyed=True), inputs_in_hand=False) is Action.RECONCILE
    assert next_action(job(Stage.SUBMITTING), inputs_in_hand=False) is Action.SUBMIT
    assert next_action(job(Stage.GENERATING), inputs_in_hand=False) is Action.POLL
    assert next_action(job(Stage.ARCHIVING), inputs_in_hand=False) is Action.ARCHIVE
    assert next_action(job(Stage.COMPLETED), inputs_in_hand=False) is None
    assert next_action(job(Stage.FAILED), inputs_in_hand=False) is None


def test_intent_records_key_and_parameters_before_any_submission() -> None:
    t = run(job(Stage.PENDING), EVENTS[0])
    assert t.stage is Stage.SUBMITTING and t.status == "processing"
    assert t.delay == timedelta(0)
    assert t.changes["submit_key"] == KEY
    assert t.changes["mark_submitted"] is True
    assert (t.changes["model"], t.changes["size"], t.changes["seconds"]) == (
        "sora-2",
        "720x1280",
        "4",
    )


def test_accepted_moves_to_generating_and_schedules_first_poll() -> None:
    t = run(job(Stage.SUBMITTING, keyed=True, attempts=2), Accepted("video_9", 5))
    assert t.stage is Stage.GENERATING
    assert t.changes["video_id"] == "video_9"
    assert t.attempts == 0
    assert t.delay == POLICY.poll_interval


def test_outcome_unknown_keeps_the_key_so_the_next_try_reconciles() -> None:
    t = run(job(Stage.SUBMITTING, keyed=True), OutcomeUnknown("read timeout"))
    assert t.stage is Stage.SUBMITTING
    assert "submit_key" not in t.changes
    assert t.attempts == 1 and t.delay > timedelta(0)
    assert next_action(job(Stage.SUBMITTING, keyed=True), inputs_in_hand=False) is Action.RECONCILE


def test_not_submitted_drops_the_key_so_the_next_try_submits_afresh() -> None:
    t = run(job(Stage.SUBMITTING, keyed=True), NotSubmitted("429", timedelta(seconds=30)))
    assert t.stage is Stage.SUBMITTING
    assert t.changes["submit_key"] is None
    assert t.delay == timedelta(seconds=30)  # the provider's retry-after wins over backoff


def test_not_found_at_provider_resubmits_immediately() -> None:
    t = run(job(Stage.SUBMITTING, keyed=True), NotFoundAtProvider())
    assert t.stage is Stage.SUBMITTING
    assert t.changes["submit_key"] is None
    assert t.delay == timedelta(0)
    assert t.attempts == 1


def test_progress_is_clamped_and_polling_continues() -> None:
    t = run(job(Stage.GENERATING, attempts=2), Progressed(140, "in_progress"))
    assert t.stage is Stage.GENERATING
    assert t.changes["progress"] == 99
    assert t.attempts == 0
    assert t.delay == POLICY.poll_interval


def test_generated_goes_straight_to_archiving_with_expiry() -> None:
    expires = NOW + timedelta(hours=1)
    t = run(job(Stage.GENERATING), Generated("http://p/c", expires))
    assert t.stage is Stage.ARCHIVING
    assert t.delay == timedelta(0)
    assert t.changes["openai_expires_at"] == expires
    assert t.changes["openai_url"] == "http://p/c"


def test_archived_completes_with_permanent_url_and_checksum() -> None:
    t = run(job(Stage.ARCHIVING), Archived("http://s/v.mp4", 99, "f" * 64, "http://s/v.webp"))
    assert t.stage is Stage.COMPLETED and t.status == "completed" and t.finished
    assert t.changes["video_url"] == "http://s/v.mp4"
    assert t.changes["video_sha256"] == "f" * 64
    assert t.changes["mark_completed"] is True
    assert t.changes["error"] is None


@pytest.mark.parametrize("stage", ACTIVE_STAGES)
def test_permanent_errors_fail_with_the_reason(stage: Stage) -> None:
    t = run(job(stage), Rejected("image1_url answered HTTP 404"))
    assert t.stage is Stage.FAILED and t.status == "failed"
    assert t.changes["error"] == "image1_url answered HTTP 404"


def test_generation_failure_keeps_the_providers_reason() -> None:
    t = run(job(Stage.GENERATING), GenerationFailed("moderation_blocked: no"))
    assert t.stage is Stage.FAILED
    assert "moderation_blocked" in (t.changes["error"] or "")


UNPAID = [job(Stage.PENDING), job(Stage.SUBMITTING)]  # the provider holds nothing yet


@pytest.mark.parametrize("unpaid", UNPAID, ids=["pending", "submitting-without-key"])
def test_before_submission_transient_errors_retry_with_growing_delay_then_fail(
    unpaid: Job,
) -> None:
    delays = []
    for attempts in range(POLICY.max_attempts - 1):
        t = run(replace(unpaid, attempts=attempts), Transient("connection reset"))
        assert t.stage is unpaid.stage and t.attempts == attempts + 1
        assert "connection reset" in (t.changes["error"] or "")
        delays.append(t.delay)
    assert delays == sorted(delays) and delays[0] < delays[-1]
    last = run(replace(unpaid, attempts=POLICY.max_attempts - 1), Transient("connection reset"))
    assert last.stage is Stage.FAILED
    assert (
        last.changes["error"] == f"gave up after {POLICY.max_attempts} attempts: connection reset"
    )
    assert last.attempts == POLICY.max_attempts


RECENT = NOW - timedelta(minutes=10)
PAID = [
    job(Stage.SUBMITTING, keyed=True, submitted_at=RECENT),
    job(Stage.GENERATING, submitted_at=RECENT),
    job(Stage.ARCHIVING, submitted_at=RECENT),
    job(Stage.ARCHIVING, submitted_at=RECENT, expires_at=NOW + timedelta(minutes=30)),
]


@pytest.mark.parametrize("paid", PAID, ids=["in-doubt", "generating", "archiving", "expiring"])
def test_an_outage_never_fails_a_job_the_provider_may_hold(paid: Job) -> None:
    t = run(replace(paid, attempts=500), Transient("cannot reach the provider"))
    assert t.stage is paid.stage and t.attempts == 501
    assert t.delay <= POLICY.retry_cap


@pytest.mark.parametrize(
    ("paid", "message"),
    [
        (job(Stage.SUBMITTING, keyed=True), "idempotency key"),
        (job(Stage.GENERATING), "did not finish"),
        (job(Stage.ARCHIVING), "before the provider's link expired"),
    ],
)
def test_a_paid_job_fails_once_the_provider_can_no_longer_deliver(paid: Job, message: str) -> None:
    long_ago = NOW - POLICY.generation_timeout - POLICY.archive_grace - timedelta(seconds=1)
    t = run(replace(paid, submitted_at=long_ago), Transient("still down"))
    assert t.stage is Stage.FAILED
    assert message in (t.changes["error"] or "") and "still down" in (t.changes["error"] or "")


@pytest.mark.parametrize("stage", [Stage.GENERATING, Stage.ARCHIVING])
def test_a_vanished_job_is_retried_a_few_times_then_failed(stage: Stage) -> None:
    t = run(job(stage, submitted_at=RECENT), Vanished("job video_1 no longer exists"))
    assert t.stage is stage and t.attempts == 1
    last = run(job(stage, attempts=POLICY.max_attempts - 1, submitted_at=RECENT), Vanished("gone"))
    assert last.stage is Stage.FAILED and "gone" in (last.changes["error"] or "")


def test_an_archive_is_retried_past_max_attempts_while_the_video_is_still_downloadable() -> None:
    j = job(Stage.ARCHIVING, attempts=50, expires_at=NOW + timedelta(minutes=30))
    t = run(j, Transient("storage 503"))
    assert t.stage is Stage.ARCHIVING and t.attempts == 51
    expired = job(Stage.ARCHIVING, attempts=50, expires_at=NOW - timedelta(minutes=1))
    assert run(expired, Transient("storage 503")).stage is Stage.FAILED


@pytest.mark.parametrize("jitter", [0.0, 0.3, 1.0])
def test_retry_delay_is_exponential_capped_and_jittered(jitter: float) -> None:
    for attempt in range(1, 20):
        full = min(POLICY.retry_base * 2 ** (attempt - 1), POLICY.retry_cap)
        delay = retry_delay(attempt, POLICY, jitter)
        assert full * 0.5 <= delay <= full
    assert retry_delay(1, POLICY, 1.0) == POLICY.retry_base
    assert retry_delay(1000, POLICY, 1.0) == POLICY.retry_cap


def test_a_job_the_provider_never_finishes_fails_after_the_generation_timeout() -> None:
    submitted = NOW - POLICY.generation_timeout - timedelta(seconds=1)
    t = run(job(Stage.GENERATING, submitted_at=submitted), Progressed(50, "NOT_START"))
    assert t.stage is Stage.FAILED
    assert "did not finish" in (t.changes["error"] or "") and "NOT_START" in (
        t.changes["error"] or ""
    )
    fresh = job(Stage.GENERATING, submitted_at=NOW - timedelta(minutes=5))
    assert run(fresh, Progressed(50, "in_progress")).stage is Stage.GENERATING


def test_a_create_the_provider_certainly_refused_is_an_unpaid_retry() -> None:
    refused = job(
        Stage.SUBMITTING, keyed=True, attempts=POLICY.max_attempts - 1, submitted_at=RECENT
    )
    t = run(refused, NotSubmitted("HTTP 401: check OPENAI_API_KEY"))
    assert t.stage is Stage.FAILED and "gave up after" in (t.changes["error"] or "")


def test_waiting_is_not_a_failed_attempt() -> None:
    t = run(
        job(Stage.SUBMITTING, keyed=True, attempts=3), Waiting("in flight", timedelta(seconds=7))
    )
    assert t.stage is Stage.SUBMITTING and t.attempts == 3
    assert t.delay == timedelta(seconds=7) and t.changes["error"] == "waiting: in flight"
