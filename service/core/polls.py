"""When to look at a running job again: soon enough that a finished video waits little
for the poll that sees it, seldom enough that a job costs a few polls.

What a person waits for is the time from the provider finishing to the row holding
its permanent URL, and most of it is the wait for the next poll. So every pause is
bounded by an *allowance*: most (``SEEN_SHARE``) of the share ``Policy.poll_lateness``
(10 %) of the time the job has taken, never under ``poll_interval``; a job that
finishes between two polls then waits at most that for the second, and its archive
has the rest. Within that bound, polls are as late as the
job's pace allows, in this order:

1. the host's own word (``openai-poll-after-ms``);
2. the job's progress, once it reports at least ``TRUSTED_PROGRESS`` percent: the
   time left at its pace since submission, or at its pace since the progress last
   seen (``Job.progress_at``) when that is sooner, of which ``PACE_SHARE`` is waited
   (progress curves are uneven: an S-curve's slow start and slow end both make the
   pace mislead), and not before the earliest likely end of (3);
3. the model's learnt durations (``Durations``, read from the table's own history
   and passed in with the event): no poll before the earliest likely end among the
   durations still possible, then one every allowance until the job is done;
4. with nothing learnt yet: ``typical_generation`` if set, else half the time taken.

Always between ``poll_interval`` and ``poll_ceiling``. Pure: time is the database's
(``Job.as_of``), and the learnt durations are plain data.
"""

from __future__ import annotations

from datetime import timedelta

from service.core.durations import NOW, Durations
from service.core.events import Progressed
from service.core.job import Job, Policy

TRUSTED_PROGRESS = 10
"""The progress (percent) from which a job's own pace is believed: below it, a queue
or a slow start make any estimate of the time left far too long."""
PACE_SHARE = 0.6
"""The share of the time left, at the job's pace, waited before the next poll."""


SEEN_SHARE = 0.9
"""The share of the allowance a finished job may wait for the poll that sees it: the
rest is left to the archive's own time (the download, checksum and store of a 5-30 MB
video take about half a second), so that the URL, not only the poll, is in time."""


def allowance(elapsed: timedelta, policy: Policy) -> timedelta:
    """The longest a job that took ``elapsed`` may wait, finished, for its next poll:
    ``SEEN_SHARE`` of its lateness (``poll_lateness`` of the time taken), never under
    ``poll_interval``."""
    return max(policy.poll_interval, elapsed * policy.poll_lateness * SEEN_SHARE)


def first_poll(likely: Durations | None, policy: Policy) -> timedelta:
    """The pause before a new job's first poll: the earliest likely end of its model's
    jobs when learnt, else ``poll_interval``."""
    end = None if likely is None else likely.earliest_end(NOW)
    wanted = policy.poll_interval if end is None else end
    return min(max(wanted, policy.poll_interval), policy.poll_ceiling)


def poll_delay(job: Job, event: Progressed, policy: Policy) -> timedelta:
    """When to look at a running job again (module docstring). When the provider's
    webhooks are seen to arrive (``next_poll``), the poll is only a safety net and
    waits at least that long."""
    elapsed = NOW if job.submitted_at is None else max(job.as_of - job.submitted_at, NOW)
    progress = max(0, min(event.progress, 99))
    bound = allowance(elapsed, policy)
    end = None if event.likely is None else event.likely.earliest_end(elapsed)
    if event.poll_after is not None:
        wanted = event.poll_after
    elif progress >= TRUSTED_PROGRESS and event.provider_status != "queued":
        wanted = max(bound, _time_left(job, progress, elapsed) * PACE_SHARE)
        if end is not None:  # not before the earliest likely end either
            wanted = max(wanted, end - elapsed)
    elif end is not None:
        wanted = max(bound, end - elapsed)
    elif policy.typical_generation is not None and elapsed < policy.typical_generation:
        wanted = policy.typical_generation - elapsed
    else:
        wanted = max(bound, elapsed / 2)
    delay = min(max(wanted, policy.poll_interval), policy.poll_ceiling)
    return delay if event.next_poll is None else max(delay, event.next_poll)


def _time_left(job: Job, progress: int, elapsed: timedelta) -> timedelta:
    """The time a job reporting ``progress`` has left, at its pace since submission or,
    when sooner, at its pace since the progress it showed before (``progress_at``)."""
    left = elapsed * (100 - progress) / progress
    if job.progress_at is not None and 0 < job.progress < progress:
        since = job.as_of - job.progress_at
        if since > NOW:
            left = min(left, since * (100 - progress) / (progress - job.progress))
    return left
