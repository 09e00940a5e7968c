"""The log line of each transition a row makes: one event per step, with the row's
video id, stage, attempt and the step's duration (``grep <row id>`` tells its story).

Apart from the loop (``daemon.py``) so that the loop reads as what it runs, not what
it says."""

from __future__ import annotations

import structlog

from service.core.actions import Action
from service.core.events import Event, RecordProgress
from service.core.job import Job
from service.core.machine import Transition

log = structlog.get_logger("service.worker.daemon")

WARNINGS = ("video.failed", "video.retry", "video.completed_without_media")
"""Transitions logged at warning level (the row's own reason says why)."""


def log_transition(
    before: Job,
    after: Job,
    transition: Transition,
    event: Event,
    action: Action,
    seconds: float,
) -> None:
    """One line for one step: info, warning for a failure or retry, error for a paid
    video lost, debug for a poll that saw no progress."""
    fields: dict[str, object] = {
        "video_id": after.video_id,
        "stage": after.stage.value,
        "from_stage": before.stage.value,
        "action": action.value,
        "attempt": transition.attempts,
        "duration_ms": round(seconds * 1000, 1),
    }
    if isinstance(transition.change, RecordProgress):
        fields["progress"] = transition.change.progress
    if transition.error:
        fields["reason"] = transition.error
    if transition.delay.total_seconds() > 0 and not transition.finished:
        fields["next_in_s"] = round(transition.delay.total_seconds(), 2)
    level = log.warning if transition.log_event in WARNINGS else log.info
    if transition.error_kind is not None:
        fields["error_kind"] = transition.error_kind
    if transition.error_kind == "expired":
        level = log.error  # a video paid for and lost
    if transition.log_event == "video.progress":
        level = log.debug if after.progress == before.progress else log.info
    level(transition.log_event, **fields, event_type=type(event).__name__)
