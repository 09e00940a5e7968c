"""Every transition of the pure state machine, without IO."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from service.core.actions import Action, next_action
from service.core.costs import over_budget_wait
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
    Media,
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
    Transient,
    Unreconcilable,
    Vanished,
    Waiting,
)
from service.core.job import ACTIVE_STAGES, Job, Policy, RowId, Stage, SubmitKey
from service.core.machine import (
    FALLIBLE,
    IllegalTransition,
    Transition,
    apply,
    retry_delay,
)
from service.core.request import VideoRequest

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = Policy(
    poll_interval=timedelta(seconds=5),
    max_attempts=4,
    retry_base=timedelta(seconds=2),
    retry_cap=timedelta(seconds=60),
)
KEY = SubmitKey(uuid.UUID(int=7))
REQUEST = VideoRequest("a hug", "sora-2", "720x1280", "4", str(KEY))
INTENT = IntentRecorded(KEY, "openai", REQUEST)

EVENTS: list[Event] = [
    INTENT,
    Accepted("video_1", 3),
    Rejected("bad input"),
    NotSubmitted("refused", timedelta(seconds=9)),
    PhotoUnavailable("image1_url names a host that does not resolve: photos.invalid"),
    InDoubt("timeout"),
    NotFoundAtProvider(),
    Progressed(40, "in_progress"),
    Generated("http://provider/videos/video_1/content", NOW + timedelta(hours=1)),
    GenerationFailed("moderation_blocked"),
    Archived("http://store/v.mp4", 1234, "ab" * 32),
    StoreSilent("storage answers 503 to every request"),
    Described("http://store/v.webp", Media(4.0, 720, 1280, "http://store/v.poster.webp")),
    Transient("network"),
    Vanished("gone"),
    Waiting("an identical request is in doubt", timedelta(seconds=1)),
    OverBudget("the daily budget is spent", timedelta(minutes=10)),
    Unreconcilable("its list fails (HTTP 400: LLM Provider NOT provided)", "http://gw/v1"),
]

S = Stage
# (stage, keyed?) -> {event type: (the stage it leads to, the kind of change it records)}
# for a fresh row (no attempts yet, no deadline near). Every pair not listed is illegal.
EXPECTED: dict[tuple[Stage, bool], dict[type, tuple[Stage, type[Change] | None]]] = {
    (S.PENDING, False): {
        IntentRecorded: (S.SUBMITTING, RecordIntent),
        Rejected: (S.FAILED, None),
        NotSubmitted: (S.PENDING, None),
        PhotoUnavailable: (S.PENDING, None),
        Transient: (S.PENDING, None),
        Waiting: (S.PENDING, None),
        OverBudget: (S.PENDING, None),
    },
    (S.SUBMITTING, False): {
        IntentRecorded: (S.SUBMITTING, RecordIntent),
        Accepted: (S.GENERATING, RecordJob),
        Rejected: (S.FAILED, None),
        NotSubmitted: (S.SUBMITTING, ForgetIntent),
        PhotoUnavailable: (S.SUBMITTING, None),
        InDoubt: (S.SUBMITTING, None),
        NotFoundAtProvider: (S.SUBMITTING, ForgetIntent),
        Transient: (S.SUBMITTING, None),
        Waiting: (S.SUBMITTING, None),
        OverBudget: (S.SUBMITTING, None),
    },
    (S.GENERATING, False): {
        Progressed: (S.GENERATING, RecordProgress),
        Generated: (S.ARCHIVING, RecordDownload),
        GenerationFailed: (S.FAILED, None),
        Vanished: (S.GENERATING, None),
        Rejected: (S.FAILED, None),
        Transient: (S.GENERATING, None),
    },
    (S.ARCHIVING, False): {
        Archived: (S.DESCRIBING, RecordArchive),
        StoreSilent: (S.ARCHIVING, None),
        GenerationFailed: (S.FAILED, None),
        Vanished: (S.ARCHIVING, None),
        Rejected: (S.FAILED, None),
        Transient: (S.ARCHIVING, None),
    },
    # The video is stored: nothing here can fail the row.
    (S.DESCRIBING, False): {
        Described: (S.COMPLETED, RecordMedia),
        Transient: (S.DESCRIBING, None),
    },
    (S.COMPLETED, False): {},
    (S.FAILED, False): {},
}
# A keyed row takes the same events, except a second intent (its key is not dropped yet)
# and the budget's word and a photo's host (both met only before an intent).
EXPECTED[(S.SUBMITTING, True)] = {
    event: outcome
    for event, outcome in EXPECTED[(S.SUBMITTING, False)].items()
    if event not in (IntentRecorded, OverBudget, PhotoUnavailable)
}
# Only a create in doubt can be unreconcilable.
EXPECTED[(S.SUBMITTING, True)][Unreconcilable] = (S.FAILED, None)


def job(stage: Stage, *, keyed: bool = False, attempts: int = 0, **kw: object) -> Job:
    return Job(
        id=RowId(uuid.UUID(int=1)),
        stage=stage,
        as_of=NOW,
        attempts=attempts,
        submit_key=KEY if keyed else None,
        video_id="video_1"
        if stage in (Stage.GENERATING, Stage.ARCHIVING, Stage.DESCRIBING)
        else None,
        **kw,  # type: ignore[arg-type]
    )


def run(j: Job, event: Event, *, policy: Policy = POLICY) -> Transition:
    return apply(j, event, policy=policy, jitter=1.0)


@pytest.mark.parametrize(("case", "event"), list(itertools.product(EXPECTED, EVENTS)))
def test_every_stage_event_pair_leads_where_the_table_says_or_is_refused(
    case: tuple[Stage, bool], event: Event
) -> None:
    stage, keyed = case
    j = job(stage, keyed=keyed)
    expected = EXPECTED[case].get(type(event))
    if expected is None:
        with pytest.raises(IllegalTransition):
            run(j, event)
        return
    t = run(j, event)
    assert (t.stage, type(t.change) if t.change is not None else None) == expected
    assert (t.error is None) == (t.change is not None and not isinstance(t.change, ForgetIntent))


def test_next_action_per_stage() -> None:
    assert next_action(job(Stage.PENDING), intent=None) is Action.PREPARE
    assert next_action(job(Stage.SUBMITTING, keyed=True), intent=INTENT) is Action.CREATE
    assert next_action(job(Stage.SUBMITTING, keyed=True), intent=None) is Action.RECONCILE
    assert next_action(job(Stage.SUBMITTING), intent=None) is Action.PREPARE
    assert next_action(job(Stage.GENERATING), intent=None) is Action.POLL
    assert next_action(job(Stage.ARCHIVING), intent=None) is Action.ARCHIVE
    assert next_action(job(Stage.DESCRIBING), intent=None) is Action.DESCRIBE
    assert next_action(job(Stage.COMPLETED), intent=None) is None
    assert next_action(job(Stage.FAILED), intent=None) is None


def test_an_intent_for_another_key_never_licenses_a_create() -> None:
    """A row re-queued under a running task has a new key: the old request is not its."""
    other = IntentRecorded(SubmitKey(uuid.UUID(int=8)), "openai", REQUEST)
    assert next_action(job(Stage.SUBMITTING, keyed=True), intent=other) is Action.RECONCILE


def test_intent_records_key_and_parameters_before_any_submission() -> None:
    t = run(job(Stage.PENDING), INTENT)
    assert t.stage is Stage.SUBMITTING
    assert t.delay == timedelta(0)
    assert t.change == RecordIntent(KEY, "openai", "sora-2", "720x1280", "4")


def test_accepted_moves_to_generating_and_schedules_first_poll() -> None:
    t = run(job(Stage.SUBMITTING, keyed=True, attempts=2), Accepted("video_9", 5))
    assert t.stage is Stage.GENERATING
    assert t.change == RecordJob("video_9", 5)
    assert t.attempts == 0
    assert t.delay == POLICY.poll_interval


def test_a_create_in_doubt_keeps_the_key_so_the_next_try_reconciles() -> None:
    t = run(job(Stage.SUBMITTING, keyed=True), InDoubt("read timeout"))
    assert t.stage is Stage.SUBMITTING
    assert t.change is None  # the key stays
    assert t.attempts == 1 and t.delay > timedelta(0)
    assert next_action(job(Stage.SUBMITTING, keyed=True), intent=None) is Action.RECONCILE


def test_not_submitted_drops_the_key_so_the_next_try_submits_afresh() -> None:
    t = run(job(Stage.SUBMITTING, keyed=True), NotSubmitted("429", timedelta(seconds=30)))
    assert t.stage is Stage.SUBMITTING
    assert t.change == ForgetIntent()
    assert t.delay == timedelta(seconds=30)  # the provider's retry-after wins over backoff


def test_not_found_at_provider_resubmits_immediately() -> None:
    t = run(job(Stage.SUBMITTING, keyed=True), NotFoundAtProvider())
    assert t.stage is Stage.SUBMITTING
    assert t.change == ForgetIntent()
    assert t.delay == timedelta(0)
    assert t.attempts == 1


def test_progress_is_clamped_and_polling_continues() -> None:
    t = run(job(Stage.GENERATING, attempts=2), Progressed(140, "in_progress"))
    assert t.stage is Stage.GENERATING
    assert t.change == RecordProgress(99)
    assert t.attempts == 0
    assert t.delay == POLICY.poll_interval


def test_generated_goes_straight_to_archiving_with_expiry() -> None:
    expires = NOW + timedelta(hours=1)
    t = run(job(Stage.GENERATING), Generated("http://p/c", expires))
    assert t.stage is Stage.ARCHIVING
    assert t.delay == timedelta(0)
    assert t.change == RecordDownload("http://p/c", expires)


def test_a_stored_video_is_recorded_at_once_and_shows_completed() -> None:
    """Issue 28, finding 2: the row records the video the moment it is stored; its
    media come in a stage of their own, which apps already see as completed."""
    t = run(job(Stage.ARCHIVING), Archived("http://s/v.mp4", 99, "f" * 64))
    assert (t.stage, t.stage.status, t.delay, t.error) == (
        Stage.DESCRIBING,
        "completed",
        timedelta(0),
        None,
    )
    assert not t.finished  # the same claim goes straight on to the media
    assert t.change == RecordArchive("http://s/v.mp4", 99, "f" * 64)
    assert next_action(job(Stage.DESCRIBING), intent=None) is Action.DESCRIBE


def test_the_media_complete_the_row() -> None:
    media = Media(4.0, 720, 1280, "http://s/v.poster.webp")
    t = run(job(Stage.DESCRIBING), Described("http://s/v.webp", media))
    assert (t.stage, t.finished, t.error, t.error_kind) == (Stage.COMPLETED, True, None, None)
    assert t.change == RecordMedia("http://s/v.webp", media)


def test_media_that_keep_failing_complete_the_row_without_them() -> None:
    """A stored video is never failed, never expired, never retried for ever."""
    delays = []
    for attempts in range(POLICY.max_attempts - 1):
        t = run(job(Stage.DESCRIBING, attempts=attempts), Transient("storage 503"))
        assert (t.stage, t.attempts, t.error_kind) == (Stage.DESCRIBING, attempts + 1, None)
        assert t.stage.status == "completed" and "storage 503" in (t.error or "")
        delays.append(t.delay)
    assert delays == sorted(delays) and delays[0] > timedelta(0)
    last = run(job(Stage.DESCRIBING, attempts=POLICY.max_attempts - 1), Transient("again"))
    assert (last.stage, last.change, last.error, last.error_kind) == (
        Stage.COMPLETED,
        None,
        None,
        None,
    )
    expired = job(Stage.DESCRIBING, submitted_at=NOW - timedelta(days=30), expires_at=NOW)
    assert run(expired, Transient("still down")).stage is Stage.DESCRIBING


@pytest.mark.parametrize("event", [Rejected("bad"), Vanished("gone"), GenerationFailed("no")])
def test_nothing_fails_a_row_whose_video_is_stored(event: Event) -> None:
    with pytest.raises(IllegalTransition):
        run(job(Stage.DESCRIBING), event)


def test_a_video_the_store_may_hold_is_never_given_up_on() -> None:
    """Past every deadline, a row whose store cannot say whether it holds the video
    keeps trying: ``expired`` is written only for a video known not to be stored."""
    long_ago = NOW - POLICY.generation_timeout - POLICY.archive_grace - timedelta(days=1)
    silent = job(Stage.ARCHIVING, attempts=500, submitted_at=long_ago, expires_at=long_ago)
    t = run(silent, StoreSilent("storage answers 503"))
    assert (t.stage, t.attempts, t.error_kind) == (Stage.ARCHIVING, 501, None)
    assert t.delay <= POLICY.retry_cap
    assert run(silent, Transient("not stored, provider down")).error_kind == "expired"


def test_the_stages_a_row_can_fail_in_are_all_active_ones_but_describing() -> None:
    assert set(FALLIBLE) == set(ACTIVE_STAGES) - {Stage.DESCRIBING}
    assert Stage.DESCRIBING.status == Stage.COMPLETED.status == "completed"


@pytest.mark.parametrize("stage", FALLIBLE)
def test_permanent_errors_fail_with_the_reason(stage: Stage) -> None:
    t = run(job(stage), Rejected("image1_url answered HTTP 404"))
    assert t.stage is Stage.FAILED and t.finished
    assert t.error == "image1_url answered HTTP 404"


def test_generation_failure_keeps_the_providers_reason() -> None:
    t = run(job(Stage.GENERATING), GenerationFailed("moderation_blocked: no"))
    assert t.stage is Stage.FAILED
    assert "moderation_blocked" in (t.error or "")


UNPAID = [job(Stage.PENDING), job(Stage.SUBMITTING)]  # the provider holds nothing yet


@pytest.mark.parametrize("unpaid", UNPAID, ids=["pending", "submitting-without-key"])
def test_before_submission_transient_errors_retry_with_growing_delay_then_fail(
    unpaid: Job,
) -> None:
    delays = []
    for attempts in range(POLICY.max_attempts - 1):
        t = run(replace(unpaid, attempts=attempts), Transient("connection reset"))
        assert t.stage is unpaid.stage and t.attempts == attempts + 1
        assert "connection reset" in (t.error or "")
        delays.append(t.delay)
    assert delays == sorted(delays) and delays[0] < delays[-1]
    last = run(replace(unpaid, attempts=POLICY.max_attempts - 1), Transient("connection reset"))
    assert last.stage is Stage.FAILED
    assert last.error == f"gave up after {POLICY.max_attempts} attempts: connection reset"
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
    assert message in (t.error or "") and "still down" in (t.error or "")


@pytest.mark.parametrize("stage", [Stage.GENERATING, Stage.ARCHIVING])
def test_a_vanished_job_is_retried_a_few_times_then_failed(stage: Stage) -> None:
    t = run(job(stage, submitted_at=RECENT), Vanished("job video_1 no longer exists"))
    assert t.stage is stage and t.attempts == 1
    last = run(job(stage, attempts=POLICY.max_attempts - 1, submitted_at=RECENT), Vanished("gone"))
    assert last.stage is Stage.FAILED and "gone" in (last.error or "")


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
    assert "did not finish" in (t.error or "") and "NOT_START" in (t.error or "")
    fresh = job(Stage.GENERATING, submitted_at=NOW - timedelta(minutes=5))
    assert run(fresh, Progressed(50, "in_progress")).stage is Stage.GENERATING


def test_a_create_the_provider_certainly_refused_is_an_unpaid_retry() -> None:
    refused = job(
        Stage.SUBMITTING, keyed=True, attempts=POLICY.max_attempts - 1, submitted_at=RECENT
    )
    t = run(refused, NotSubmitted("HTTP 401: check OPENAI_API_KEY"))
    assert t.stage is Stage.FAILED and "gave up after" in (t.error or "")


def test_waiting_is_not_a_failed_attempt() -> None:
    t = run(
        job(Stage.SUBMITTING, keyed=True, attempts=3), Waiting("in flight", timedelta(seconds=2))
    )
    assert t.stage is Stage.SUBMITTING and t.attempts == 3
    assert t.delay == timedelta(seconds=2) and t.error == "waiting: in flight"


def test_a_create_in_flight_is_looked_for_as_often_as_a_job_is_polled() -> None:
    """A create that lands a minute into a two-minute timeout is adopted then, not later."""
    t = run(job(Stage.SUBMITTING, keyed=True), Waiting("in flight", timedelta(seconds=100)))
    assert t.delay == POLICY.poll_interval


# ---------------------------------------------------------------- outcomes (error_kind)


@pytest.mark.parametrize(("case", "event"), list(itertools.product(EXPECTED, EVENTS)))
def test_a_row_has_an_error_kind_exactly_when_it_fails(
    case: tuple[Stage, bool], event: Event
) -> None:
    stage, keyed = case
    try:
        t = run(job(stage, keyed=keyed, submitted_at=RECENT), event)
    except IllegalTransition:
        return
    assert (t.error_kind is not None) == (t.stage is Stage.FAILED), (t, event)


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (Rejected("size 640x480 is not offered"), "invalid_request"),
        (Rejected("sora-2 was retired", kind="model_retired"), "model_retired"),
        (Rejected("blocked", kind="safety_filtered"), "safety_filtered"),
        (Rejected("image1_url answered HTTP 404", kind="photo_unavailable"), "photo_unavailable"),
    ],
)
def test_a_rejection_fails_with_its_kind(event: Rejected, kind: str) -> None:
    t = run(job(Stage.PENDING), event)
    assert (t.stage, t.error_kind, t.attempts) == (Stage.FAILED, kind, 0)


@pytest.mark.parametrize("stage", [Stage.GENERATING, Stage.ARCHIVING])
def test_a_safety_filtered_result_is_its_own_outcome_never_retried(stage: Stage) -> None:
    t = run(job(stage), GenerationFailed("filtered: 1 video blocked", "safety_filtered"))
    assert (t.stage, t.error_kind, t.attempts) == (Stage.FAILED, "safety_filtered", 0)
    assert not isinstance(t.change, RecordArchive)


@pytest.mark.parametrize("unpaid", UNPAID, ids=["pending", "submitting-without-key"])
def test_a_photo_host_that_keeps_failing_is_the_photos_outcome_after_three_tries(
    unpaid: Job,
) -> None:
    """Issue 24, finding 8: no provider was called, so it is not a provider_error, and a
    dead photo host gets three tries (Policy.photo_attempts), not SORA_MAX_ATTEMPTS."""
    policy = replace(POLICY, max_attempts=6)
    reason = "image1_url did not download within 20 s"
    for attempts in range(2):
        t = run(replace(unpaid, attempts=attempts), PhotoUnavailable(reason), policy=policy)
        assert (t.stage, t.attempts, t.error_kind) == (unpaid.stage, attempts + 1, None)
    last = run(replace(unpaid, attempts=2), PhotoUnavailable(reason), policy=policy)
    assert (last.stage, last.attempts, last.error_kind) == (Stage.FAILED, 3, "photo_unavailable")
    assert last.error == f"gave up after 3 attempts: {reason}"
    # Never more tries than SORA_MAX_ATTEMPTS allows.
    once = run(unpaid, PhotoUnavailable(reason), policy=replace(POLICY, max_attempts=1))
    assert (once.stage, once.error_kind) == (Stage.FAILED, "photo_unavailable")


def test_a_provider_failure_is_a_provider_error() -> None:
    t = run(job(Stage.GENERATING), GenerationFailed("internal_error"))
    assert t.error_kind == "provider_error"


def test_an_unreconcilable_create_fails_at_once_with_what_a_person_needs() -> None:
    doubtful = job(
        Stage.SUBMITTING,
        keyed=True,
        submitted_at=RECENT,
        prompt="two friends hug",
        model="sora-2",
        size="720x1280",
        seconds="4",
    )
    t = run(doubtful, Unreconcilable("its list fails (HTTP 400)", "http://gw.example/v1"))
    assert (t.stage, t.error_kind, t.attempts) == (Stage.FAILED, "in_doubt", 0)
    error = t.error or ""
    for needed in (
        "'two friends hug'",
        RECENT.isoformat(),
        str(KEY),
        "http://gw.example/v1",
        f"sora-worker adopt {doubtful.id} VIDEO_ID",
        "status to queued",
    ):
        assert needed in error, (needed, error)


@pytest.mark.parametrize(
    ("paid", "kind"),
    [
        (job(Stage.SUBMITTING, keyed=True), "in_doubt"),
        (job(Stage.GENERATING), "provider_error"),
        (job(Stage.ARCHIVING), "expired"),
    ],
)
def test_a_paid_job_given_up_on_says_which_outcome(paid: Job, kind: str) -> None:
    long_ago = NOW - POLICY.generation_timeout - POLICY.archive_grace - timedelta(seconds=1)
    t = run(replace(paid, submitted_at=long_ago), Transient("still down"))
    assert (t.stage, t.error_kind) == (Stage.FAILED, kind)


def test_a_video_gone_before_it_was_archived_expired() -> None:
    last = run(job(Stage.ARCHIVING, attempts=POLICY.max_attempts - 1), Vanished("gone"))
    assert (last.stage, last.error_kind) == (Stage.FAILED, "expired")


# Poll spacing: tests/test_polls.py


def test_waiting_to_tell_twins_apart_spends_no_attempt_until_the_paid_deadline() -> None:
    submitted = NOW - timedelta(minutes=5)
    doubt = job(Stage.SUBMITTING, keyed=True, attempts=2, submitted_at=submitted)
    t = run(doubt, Waiting("cannot tell yet", None))
    assert (t.stage, t.attempts, t.delay) == (Stage.SUBMITTING, 2, POLICY.poll_interval)
    late = replace(doubt, submitted_at=NOW - POLICY.generation_timeout)
    t = run(late, Waiting("cannot tell yet which one (video_1, video_2)", None))
    assert t.stage is Stage.FAILED
    assert t.error is not None and "video_1, video_2" in t.error


def test_a_row_over_budget_waits_for_the_budget_without_spending_attempts() -> None:
    t = run(job(Stage.PENDING, attempts=2), OverBudget("spent", timedelta(minutes=10)))
    assert (t.stage, t.attempts, t.delay, t.change) == (
        Stage.PENDING,
        2,
        timedelta(minutes=10),
        None,
    )
    assert t.error == "waiting: spent" and t.error_kind is None
    assert over_budget_wait(datetime(2026, 11, 5, 23, 55, tzinfo=UTC)) == timedelta(minutes=5)
    assert over_budget_wait(datetime(2026, 11, 5, 12, 0, tzinfo=UTC)) == timedelta(minutes=10)
