"""Which checkpoints may skip waiting for the disk (``postgres.WAITING``): only a polled
row that goes on waiting. Every write that records an effect (an intent before a create,
a job id, a download link, a stored video) or moves a row on still waits for its flush,
whichever event the machine's table can bring it from."""

from __future__ import annotations

import itertools

import pytest

from service.core.events import RecordProgress
from service.core.job import Stage
from service.core.machine import IllegalTransition
from service.database import postgres
from tests.test_machine import EVENTS, EXPECTED, job, run

NO_FLUSH = "synchronous_commit"


@pytest.mark.parametrize(("case", "event"), list(itertools.product(EXPECTED, EVENTS)))
@pytest.mark.parametrize("keep_lease", [False, True])
def test_only_a_row_that_goes_on_waiting_for_its_job_skips_the_flush(
    case: tuple[Stage, bool], event: object, keep_lease: bool
) -> None:
    stage, keyed = case
    before = job(stage, keyed=keyed)
    try:
        transition = run(before, event)  # type: ignore[arg-type]
    except IllegalTransition:
        return
    statement = postgres._statement(before, transition, keep_lease)
    waiting = (
        stage is Stage.GENERATING
        and transition.stage is Stage.GENERATING
        and not keep_lease
        and (transition.change is None or isinstance(transition.change, RecordProgress))
    )
    assert (NO_FLUSH in statement) is waiting


def test_every_claim_skips_the_flush_and_a_poll_that_waits_is_one() -> None:
    # A claim leases only; the durable write before any effect carries its WAL with it.
    assert NO_FLUSH in postgres.CLAIM and NO_FLUSH in postgres.CLAIM_FRESH
    assert all(NO_FLUSH not in statement for statement in postgres.CHECKPOINT.values())
