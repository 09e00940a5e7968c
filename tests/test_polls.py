"""When a running job is polled again (service/core/polls.py): the provider's word, the
job's pace, the model's learnt durations, and a finished video seen within its
allowance at the cost of a few polls."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from service.core.durations import Durations
from service.core.events import Accepted, Progressed
from service.core.job import Job, Policy, RowId, Stage
from service.core.machine import apply
from service.core.polls import allowance, first_poll

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = Policy(
    poll_interval=timedelta(seconds=5),
    max_attempts=4,
    retry_base=timedelta(seconds=2),
    retry_cap=timedelta(seconds=60),
    poll_ceiling=timedelta(seconds=60),
)
PACED = replace(POLICY, typical_generation=timedelta(seconds=120))
ROW = RowId(__import__("uuid").UUID(int=1))


def running(elapsed: float, **fields: object) -> Job:
    return Job(
        ROW,
        Stage.GENERATING,
        NOW,
        video_id="video_1",
        submitted_at=NOW - timedelta(seconds=elapsed),
        **fields,  # type: ignore[arg-type]
    )


def polled_after(
    elapsed: float, event: Progressed, policy: Policy = PACED, **fields: object
) -> float:
    t = apply(running(elapsed, **fields), event, policy=policy, jitter=0.5)
    return t.delay.total_seconds()


def test_the_providers_poll_after_comes_first_within_floor_and_ceiling() -> None:
    hint = Progressed(10, "in_progress", poll_after=timedelta(seconds=12))
    assert polled_after(30, hint) == 12
    assert polled_after(30, replace(hint, poll_after=timedelta(milliseconds=10))) == 5  # floor
    assert polled_after(30, replace(hint, poll_after=timedelta(hours=1))) == 60  # ceiling


def test_a_job_that_reports_progress_waits_part_of_the_time_its_pace_leaves() -> None:
    assert polled_after(30, Progressed(50, "in_progress")) == 18  # 30 s left: 60 % of it
    assert polled_after(90, Progressed(75, "in_progress")) == 18
    assert polled_after(99, Progressed(99, "in_progress")) == 8.91  # the allowance: 90 % of 10 %
    assert polled_after(30, Progressed(95, "in_progress")) == 5  # never under the floor


def test_a_slow_start_is_not_believed_and_a_recent_pace_beats_the_average() -> None:
    # 1 % after 6 s would say 594 s left: below 10 % the pace is not trusted.
    assert polled_after(6, Progressed(1, "in_progress"), POLICY) == 5
    # 20 % after 60 s is 240 s left on average, but it went from 10 % to 20 % in the
    # last 10 s: 80 s left at that pace, 48 s waited.
    recent = {"progress": 10, "progress_at": NOW - timedelta(seconds=10)}
    assert polled_after(60, Progressed(20, "in_progress"), **recent) == 48
    assert polled_after(60, Progressed(20, "in_progress")) == 60  # the average: ceiling


def test_without_progress_or_history_the_typical_duration_or_half_its_age() -> None:
    assert polled_after(100, Progressed(0, "queued")) == 20  # typical 120 s
    assert polled_after(200, Progressed(0, "queued")) == 60  # late: half its age, capped
    assert polled_after(30, Progressed(0, "in_progress"), POLICY) == 15
    assert polled_after(2, Progressed(0, "in_progress"), POLICY) == 5


# A model whose jobs took 40 to 100 s (61 of them, a second apart).
LEARNT = Durations.of(float(s) for s in range(40, 101))


def test_a_new_job_is_first_polled_at_its_models_earliest_likely_end() -> None:
    assert first_poll(LEARNT, POLICY) == timedelta(seconds=43)  # the 5 % quantile
    assert first_poll(None, POLICY) == POLICY.poll_interval
    assert first_poll(Durations.of([30.0] * 9), POLICY) == POLICY.poll_interval  # too few
    t = apply(
        Job(ROW, Stage.SUBMITTING, NOW, submit_key=__import__("uuid").uuid4()),  # type: ignore[arg-type]
        Accepted("video_1", 0, LEARNT),
        policy=POLICY,
        jitter=0.5,
    )
    assert t.delay == timedelta(seconds=43)


def test_with_learnt_durations_a_silent_job_is_polled_every_allowance_near_its_end() -> None:
    silent = Progressed(0, "in_progress", likely=LEARNT)
    assert polled_after(10, silent, POLICY) == 33  # nothing before the earliest likely end
    assert polled_after(60, silent, POLICY) == 5.4  # then every 90 % of 10 % of its time
    assert polled_after(97, silent, POLICY) == 48.5  # past what history knows: half its age


def test_a_finished_video_is_seen_within_its_allowance_across_the_learnt_durations() -> None:
    """Every job that ends within what history knows is seen within 10 % of its time
    (or the floor), whether its host reports progress or not."""
    draw = random.Random(7)
    learnt = Durations.of(60 * math.exp(draw.gauss(0, 0.35)) for _ in range(200))
    low, high = learnt.seconds[4], learnt.seconds[-6]
    for progress in (False, True):
        for step in range(100):
            ends = low + (high - low) * step / 99
            elapsed = first_poll(learnt, POLICY).total_seconds()
            polls = 1
            while elapsed < ends:
                shown = int(100 * elapsed / ends) if progress else 0
                job = running(elapsed)
                event = Progressed(shown, "in_progress", likely=learnt)
                elapsed += apply(job, event, policy=POLICY, jitter=0.5).delay.total_seconds()
                polls += 1
            late = elapsed - ends
            assert late <= allowance(timedelta(seconds=ends), POLICY).total_seconds() + 1e-6
            assert polls <= (6 if progress else 16), (ends, polls)


def test_a_two_minute_job_costs_a_few_polls() -> None:
    """A 2-minute job with linear progress after 2 s in the queue: a few polls cold,
    fewer once its model's durations are learnt, and seen within its allowance."""
    for likely, most in ((None, 7), (Durations.of([122.0] * 20), 3)):
        elapsed = first_poll(likely, POLICY).total_seconds()
        polls = 1
        while elapsed < 122:
            progress = max(0, min(99, int((elapsed - 2) / 120 * 100)))
            status = "queued" if elapsed < 2 else "in_progress"
            event = Progressed(progress, status, likely=likely)
            delay = apply(running(elapsed), event, policy=POLICY, jitter=0.5).delay
            elapsed += delay.total_seconds()
            polls += 1
        assert polls <= most
        assert elapsed - 122 <= 12.2
