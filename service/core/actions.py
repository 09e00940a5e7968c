"""What the shell does next for a claimed row: one action per stage, and the one rule
that keeps a row from being submitted twice (create only on the intent this worker
checkpointed in the same claim; any other keyed ``submitting`` row is reconciled).
Pure, like the machine that moves the row on once the action's outcome is known.
"""

from __future__ import annotations

from enum import StrEnum

from service.core.events import IntentRecorded
from service.core.job import Job, Stage


class Action(StrEnum):
    """The effect the shell must perform next for a row."""

    PREPARE = "prepare"
    """Check the row, fetch and compose its photos, build the request. Nothing is sent:
    the outcome (``IntentRecorded``) is checkpointed before any create."""
    CREATE = "create"
    """The intent was just checkpointed in this claim: call the provider's create once."""
    RECONCILE = "reconcile"
    """A previous submission's outcome is unknown: look for it at the provider."""
    POLL = "poll"
    ARCHIVE = "archive"
    """Copy the video into storage (or find it stored): the row records it at once."""
    DESCRIBE = "describe"
    """Make the stored video's thumbnail, poster, facts and rendition (best effort)."""


def next_action(job: Job, *, intent: IntentRecorded | None) -> Action | None:
    """What to do with a claimed row; None for a finished one.

    ``intent`` is the intent this worker checkpointed for the row in the same claim
    (the request in hand): only then may it call create. A ``submitting`` row found any
    other way with a key was left by a crash or an ambiguous error, and must be
    reconciled first; one without a key is known to hold no job at the provider and is
    prepared afresh.
    """
    match job.stage:
        case Stage.PENDING:
            return Action.PREPARE
        case Stage.SUBMITTING if intent is not None and intent.submit_key == job.submit_key:
            return Action.CREATE
        case Stage.SUBMITTING if job.submit_key is None:
            return Action.PREPARE
        case Stage.SUBMITTING:
            return Action.RECONCILE
        case Stage.GENERATING:
            return Action.POLL
        case Stage.ARCHIVING:
            return Action.ARCHIVE
        case Stage.DESCRIBING:
            return Action.DESCRIBE
        case Stage.COMPLETED | Stage.FAILED:
            return None
