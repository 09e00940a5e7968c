"""A short bad night (bench/chaos.py, `make chaos` in small): nothing lost, paid once, mixed up.

Real `sora-worker run` processes against their own embedded PostgreSQL, through fault
proxies, with a simulator hosted by the harness (so it can count every job). Replicas
are SIGKILLed at observed moments (a row changed stage) once they are up; PostgreSQL is
restarted fast, immediate and by kill -9 of the postmaster; connections are reset at
random; the provider answers 429/5xx, times out on create and cuts downloads; storage
goes away for a while. Every choice is seeded; the harness waits on observed states,
never on luck, and drains with a generous deadline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Plan, run_chaos

pytestmark = pytest.mark.slow  # a whole bad night: SIGKILLs, database restarts

SHORT_NIGHT = Plan(
    rows=24,
    replicas=3,
    kills=6,
    pg_restarts=3,  # one of each kind
    pg_long_down=4.0,
    seed=20261125,
    cut_alls=2,
    cut_windows=2,
    storage_outages=1,
    drain_timeout=90,
)


@pytest.mark.timeout(300)
async def test_a_short_bad_night_loses_nothing_pays_once_and_mixes_nothing(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    report = await run_chaos(SHORT_NIGHT, tmp_path / "night", say=said.append)
    story = "\n".join(said) + "\n" + report.table()
    assert report.violations == [], story
    assert report.figures["rows"] == SHORT_NIGHT.rows, story
    assert report.figures["replica kills (SIGKILL)"] == SHORT_NIGHT.kills, story
    restarts = sorted(report.figures["PostgreSQL restarts"].split(", "))
    assert restarts == ["fast", "immediate", "kill9"], story
