"""A worker whose clock is wrong decides nothing on it: every deadline is the database's.

The dangerous case is reconciliation. A row left in doubt (intent recorded, create
perhaps still in flight) may be submitted again only once the earlier create would have
timed out, measured from ``submitted_at``, which the database's ``now()`` wrote. A worker
that compared that with its own clock, running minutes ahead, would believe "nothing
there" at once and pay twice; running behind, it would sit on the row for minutes.

``time-machine`` moves this process's wall clock (``time.time``, ``datetime.now``); the
event loop's monotonic clock and the database server are untouched, and the simulator
keeps the true time, as a real provider would.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
import time_machine

from service.local.simulator import SimulatorConfig
from service.runtime import Runtime, open_runtime
from tests.conftest import FAST_SIMULATOR, eventually, make_settings, simulator_of
from tests.test_pipeline import create_at_provider, finished, leave_in_doubt, row_of, running

SUBMIT_TIMEOUT = 3.0
"""The provider timeout: how long a create may still be in flight."""

SKEWS = [timedelta(minutes=5), timedelta(minutes=-5)]
SKEW_IDS = ["worker-5-min-ahead", "worker-5-min-behind"]


def true_clock() -> Callable[[], float]:
    """Wall-clock seconds that ignore time travel (anchored now, advanced monotonically)."""
    wall, mono = time.time(), time.monotonic()
    return lambda: wall + (time.monotonic() - mono)


PATIENT_TIMEOUT = 30.0
"""A provider timeout that outlasts any stall of a busy machine: the test that lands the
in-flight create by hand ends when the row adopts it, long before this."""


@asynccontextmanager
async def runtime_with_timeout(
    db_url: str, tmp_path: Path, provider_timeout: float
) -> AsyncIterator[Runtime]:
    settings = make_settings(db_url, tmp_path, provider_timeout=provider_timeout)
    simulator = SimulatorConfig(**FAST_SIMULATOR, clock=true_clock())
    async with open_runtime(
        settings, apply_migrations=False, stand_in_configs={"openai": simulator}
    ) as runtime:
        yield runtime


@pytest.fixture
async def provider_side(db_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with runtime_with_timeout(db_url, tmp_path, SUBMIT_TIMEOUT) as runtime:
        yield runtime


@pytest.fixture
async def patient_provider_side(db_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with runtime_with_timeout(db_url, tmp_path, PATIENT_TIMEOUT) as runtime:
        yield runtime


def skewed(skew: timedelta) -> time_machine.travel:
    return time_machine.travel(datetime.now(UTC) + skew, tick=True)


async def left_in_doubt(runtime: Runtime, prompt: str) -> UUID:
    """A row whose create may be on the wire right now (its intent was just recorded)."""
    row_id = await runtime.repo.insert_request(prompt)
    await leave_in_doubt(runtime, row_id, submitted_ago=timedelta(0))
    return row_id


async def waiting_for_the_create_in_flight(runtime: Runtime, row_id: UUID) -> None:
    await eventually(
        lambda: row_of(runtime, row_id),
        lambda r: "may still be in flight" in (r["error"] or ""),
    )


@pytest.mark.parametrize("skew", SKEWS, ids=SKEW_IDS)
async def test_a_create_still_in_flight_is_waited_for_and_adopted_not_paid_twice(
    patient_provider_side: Runtime, skew: timedelta
) -> None:
    runtime = patient_provider_side
    row_id = await left_in_doubt(runtime, "a create still on the wire")
    with skewed(skew):
        async with running(runtime.worker()):
            await waiting_for_the_create_in_flight(runtime, row_id)
            landed = await create_at_provider(runtime, "a create still on the wire")
            row = await finished(runtime, row_id, within=PATIENT_TIMEOUT)
    assert row["status"] == "completed", row["error"]
    assert row["video_id"] == landed
    assert len(simulator_of(runtime).created) == 1


@pytest.mark.parametrize("skew", SKEWS, ids=SKEW_IDS)
async def test_a_create_that_never_arrived_is_submitted_once_after_its_timeout(
    provider_side: Runtime, skew: timedelta
) -> None:
    runtime = provider_side
    row_id = await left_in_doubt(runtime, "a create lost on the wire")
    in_doubt_since = (await row_of(runtime, row_id))["submitted_at"]
    with skewed(skew):
        async with running(runtime.worker()):
            await waiting_for_the_create_in_flight(runtime, row_id)
            row = await finished(runtime, row_id, within=SUBMIT_TIMEOUT + 15)
    assert row["status"] == "completed", row["error"]
    assert len(simulator_of(runtime).created) == 1
    # Submitted again only once the earlier create would have timed out, by the DB's clock.
    assert row["submitted_at"] - in_doubt_since >= timedelta(seconds=SUBMIT_TIMEOUT)
