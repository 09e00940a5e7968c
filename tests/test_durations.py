"""What the table learns about each model's jobs (sql/0016, service/database/durations.py)
and what the worker does with it: a finished job keeps when the provider finished it,
the worker reads back each model's recent durations, and a new job of a model whose
durations are known is first polled near its likely end, not every few seconds."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from service.core.durations import FEWEST
from service.runtime import Runtime
from service.worker.durations import DurationBook
from tests.conftest import eventually, row_in, simulator_of
from tests.test_pipeline import finished, running

HOUR = timedelta(hours=1)


async def finished_job(conn: asyncpg.Pool, provider: str, model: str, seconds: float) -> None:
    """A row whose job ran ``seconds`` at ``provider``, as the worker leaves it."""
    row_id = await row_in(conn, "completed", provider=provider, model=model)
    await conn.execute(
        """update videos set submitted_at = now() - interval '2 hours',
                  generated_at = now() - interval '2 hours' + $2 * interval '1 s'
           where id = $1""",
        row_id,
        seconds,
    )


async def test_a_finished_job_keeps_when_the_provider_finished_it(runtime: Runtime) -> None:
    # Long enough that the provider's word (whole seconds, as OpenAI's completed_at)
    # shows the job took time.
    simulator_of(runtime).config.generation_seconds = 1.5
    row_id = await runtime.repo.insert_request("a lighthouse at dawn")
    async with running(runtime.worker()):
        row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]
    assert row["submitted_at"] <= row["generated_at"] <= row["completed_at"]

    learnt = await runtime.repo.recent_durations(200, HOUR)
    took = (row["generated_at"] - row["submitted_at"]).total_seconds()
    assert took > 0
    assert learnt[(row["provider"], row["model"])] == [pytest.approx(took)]


async def test_each_models_most_recent_durations_are_read_and_nothing_absurd(
    runtime: Runtime,
) -> None:
    pool = runtime.repo.pool
    for seconds in (40.0, 50.0, 60.0, 70.0):
        await finished_job(pool, "openai", "sora-2", seconds)
    await finished_job(pool, "openai", "sora-2-pro", 200.0)
    await finished_job(pool, "veo", "veo-3.1-generate-001", 90.0)
    # Longer than any job may run (an adopted row's old job): it would teach a wrong time.
    await finished_job(pool, "veo", "veo-3.1-generate-001", 2 * HOUR.total_seconds())
    # A request never submitted teaches nothing.
    await row_in(pool, "failed", provider="openai", model="sora-2", error="refused")

    learnt = await runtime.repo.recent_durations(3, HOUR)
    assert sorted(learnt) == [
        ("openai", "sora-2"),
        ("openai", "sora-2-pro"),
        ("veo", "veo-3.1-generate-001"),
    ]
    assert len(learnt[("openai", "sora-2")]) == 3  # only the most recent few per model
    assert learnt[("openai", "sora-2-pro")] == [200.0]
    assert learnt[("veo", "veo-3.1-generate-001")] == [90.0]


async def test_a_model_with_known_durations_is_first_polled_near_its_likely_end(
    runtime: Runtime,
) -> None:
    pool = runtime.repo.pool
    for i in range(FEWEST * 2):
        await finished_job(pool, "openai", "sora-2", 600.0 + i)
    book = DurationBook(runtime.repo, HOUR)
    likely = await book.likely("openai", "sora-2")
    assert likely is not None and likely.seconds[0] == 600.0

    # The simulator's jobs never end here: the row stays generating, and its next poll
    # is due when jobs of this model have been seen to end, not poll_interval from now.
    await runtime.repo.insert_request("a slow one", model="sora-2", size="720x1280")
    async with running(runtime.worker()):
        row = await eventually(
            lambda: pool.fetchrow(
                "select stage, submitted_at, next_attempt_at from videos "
                "where prompt = 'a slow one'"
            ),
            lambda r: r["stage"] == "generating",
        )
    first_poll = (row["next_attempt_at"] - row["submitted_at"]).total_seconds()
    ceiling = runtime.settings.polls.ceiling.total_seconds()
    assert first_poll >= min(590.0, ceiling - 1), first_poll
