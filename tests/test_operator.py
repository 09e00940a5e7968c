"""The operator's verbs, run while a worker processes rows: each changes its row only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import httpx
import pytest

from service.commands.verbs import run_cancel
from service.config import Settings
from service.database.operator import CANCELLED, Operator
from service.local.simulator import SimulatorConfig
from service.providers.base import VideoGone
from service.providers.registry import SimulatorSettings
from service.runtime import Runtime, open_runtime
from tests.conftest import changed, eventually, row_in, simulator_of
from tests.test_cli import CLI, env_for
from tests.test_pipeline import finished, row_of, running


async def all_rows(runtime: Runtime) -> dict[UUID, dict[str, Any]]:
    rows = await runtime.pool.fetch("select * from videos")
    return {r["id"]: dict(r) for r in rows}


async def insert_failed(conn: asyncpg.Connection, prompt: str, failed_ago: timedelta) -> UUID:
    """A row that failed ``failed_ago`` (triggers off, so updated_at keeps that time)."""
    async with conn.transaction():
        await conn.execute("set local session_replication_role = replica")
        row_id: UUID = await conn.fetchval(
            """insert into videos (prompt, status, stage, error, attempts, updated_at)
               values ($1, 'failed', 'failed', 'boom', 3, now() - $2::interval) returning id""",
            prompt,
            failed_ago,
        )
    return row_id


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def shared_settings(runtime: Runtime) -> Settings:
    """The runtime's settings, pointed at its simulator and storage (as a CLI beside it)."""
    return changed(
        runtime.settings,
        simulator_port=urlsplit(simulator_of(runtime).base_url).port,
        storage_port=urlsplit(runtime.store.public_url("b", "k")).port,
    )


def cli_env(runtime: Runtime, db_url: str) -> dict[str, str]:
    s = shared_settings(runtime)
    return env_for(
        db_url,
        s.stand_ins.data_dir,
        SORA_SIMULATOR_PORT=str(s.stand_ins.of("openai", SimulatorSettings).port),
        SORA_STORAGE_PORT=str(s.stand_ins.storage_port),
    )


async def test_retry_requeues_recent_failures_only_while_a_worker_runs(
    runtime: Runtime, conn: asyncpg.Connection, db_url: str
) -> None:
    old = await insert_failed(conn, "failed last week", timedelta(days=7))
    recent = await insert_failed(conn, "failed an hour ago", timedelta(hours=1))
    worker = runtime.worker()
    async with running(worker):
        busy = [await runtime.repo.insert_request(f"busy {i}") for i in range(3)]
        before = await all_rows(runtime)
        status, out, err = await cli(
            cli_env(runtime, db_url), "retry", "--failed", "--since", "1d", "--json"
        )
        assert status == 0, err
        assert json.loads(out) == {"retried": [str(recent)]}
        again = await finished(runtime, recent)
        for row_id in busy:
            assert (await finished(runtime, row_id))["status"] == "completed"
    assert again["status"] == "completed" and again["attempts"] == 0 and again["error"] is None
    after = await all_rows(runtime)
    assert after[old] == before[old]  # outside --since: untouched


async def test_retry_of_a_row_that_is_not_failed_changes_nothing(runtime: Runtime) -> None:
    op = Operator(runtime.pool)
    row_id = await runtime.repo.insert_request("queued, not failed")
    before = await all_rows(runtime)
    assert await op.retry(row_id, failed_since=None) == []
    assert "not failed" in (await op.why_not(row_id, "retry")).reason
    assert await all_rows(runtime) == before


@asynccontextmanager
async def slow_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """A worker whose simulated jobs take a minute: rows stay generating for the test,
    polled at least every second (a job's pace alone would put polls up to a minute apart)."""
    config = SimulatorConfig(queue_seconds=0.05, generation_seconds=60)
    settings = changed(settings, poll_ceiling=1.0)
    async with open_runtime(
        settings, apply_migrations=False, stand_in_configs={"openai": config}
    ) as rt:
        yield rt


async def test_cancel_fails_a_generating_row_and_deletes_its_job_only(settings: Settings) -> None:
    async with slow_runtime(settings) as rt:
        worker = rt.worker()
        async with running(worker):
            doomed = await rt.repo.insert_request("cancel me")
            kept = await rt.repo.insert_request("keep me")
            rows = [
                await eventually(
                    lambda r=r: row_of(rt, r), lambda row: row["stage"] == "generating"
                )
                for r in (doomed, kept)
            ]
            assert await run_cancel(shared_settings(rt), doomed, as_json=True) == 0
            row = await row_of(rt, doomed)
            assert (row["status"], row["error"]) == ("failed", CANCELLED)
            with pytest.raises(VideoGone):
                await rt.providers.get(None).retrieve(rows[0]["video_id"])
            # The worker goes on polling the other row, and never writes the cancelled one.
            progress = rows[1]["progress"]
            await eventually(lambda: row_of(rt, kept), lambda r: r["progress"] > progress)
            assert (await rt.providers.get(None).retrieve(rows[1]["video_id"])).status == "running"
            assert await row_of(rt, doomed) == row
            assert (await row_of(rt, kept))["stage"] == "generating"


async def test_cancel_refuses_a_finished_row(runtime: Runtime, db_url: str) -> None:
    worker = runtime.worker()
    async with running(worker):
        done = await finished(runtime, await runtime.repo.insert_request("already done"))
    status, out, _ = await cli(cli_env(runtime, db_url), "cancel", str(done["id"]), "--json")
    assert status == 1
    assert json.loads(out) == {
        "cancelled": False,
        "reason": f"row {done['id']} is completed: nothing to cancel",
    }
    assert await row_of(runtime, done["id"]) == done


async def stored_file(runtime: Runtime, url: str) -> Path:
    key = url.split("/object/public/", 1)[1]
    return runtime.settings.stand_ins.data_dir / "storage" / key


async def test_rearchive_copies_the_video_again_and_touches_no_other_row(
    runtime: Runtime,
) -> None:
    op = Operator(runtime.pool)
    worker = runtime.worker()
    async with running(worker):
        first = await finished(runtime, await runtime.repo.insert_request("archive me twice"))
        other = await finished(runtime, await runtime.repo.insert_request("leave me"))
        assert first["openai_expires_at"] > datetime.now(UTC)
        lost = await stored_file(runtime, first["video_url"])
        lost.unlink()  # the stored copy is lost (a bucket emptied by mistake)
        busy = await runtime.repo.insert_request("busy meanwhile")
        assert await op.rearchive(first["id"])
        again = await eventually(
            lambda: row_of(runtime, first["id"]),
            lambda r: r["stage"] == "completed" and r["completed_at"] > first["completed_at"],
        )
        await finished(runtime, busy)
    assert again["video_sha256"] == first["video_sha256"] and lost.exists()
    assert await row_of(runtime, other["id"]) == other
    async with httpx.AsyncClient() as client:
        assert (await client.get(again["video_url"])).status_code == 200


async def test_rearchive_wakes_the_workers_and_refuses_a_row_still_describing(
    conn: asyncpg.Connection,
) -> None:
    """The row is due at once: a listening worker hears of it, not at the next sweep."""
    row = await row_in(
        conn,
        "completed",
        video_id="video_9",
        openai_url="https://p/c",
        openai_expires_at=datetime.now(UTC) + timedelta(hours=1),
        video_url="https://s/v.mp4",
        video_sha256="a" * 64,
        completed_at=datetime.now(UTC),
    )
    heard: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("sora_worker", lambda *args: heard.put_nowait(args[3]))
    op = Operator(conn)  # type: ignore[arg-type]  # a connection answers as a pool does
    assert await op.rearchive(row)
    assert await asyncio.wait_for(heard.get(), 10) == str(row)
    await conn.execute(
        "update videos set stage = 'describing', status = 'completed' where id = $1", row
    )
    assert not await op.rearchive(row)
    assert "media are being made" in (await op.why_not(row, "rearchive")).reason


async def test_rearchive_refuses_when_the_provider_copy_expired(runtime: Runtime) -> None:
    op = Operator(runtime.pool)
    async with running(runtime.worker()):
        row = await finished(runtime, await runtime.repo.insert_request("expired copy"))
    await runtime.pool.execute(
        "update videos set openai_expires_at = now() - interval '1 minute' where id = $1",
        row["id"],
    )
    assert not await op.rearchive(row["id"])
    assert "expired" in (await op.why_not(row["id"], "rearchive")).reason


async def test_prune_is_a_dry_run_until_applied_and_deletes_only_old_files(
    runtime: Runtime, db_url: str
) -> None:
    worker = runtime.worker()
    async with running(worker):
        old = await finished(runtime, await runtime.repo.insert_request("old video"))
        new = await finished(runtime, await runtime.repo.insert_request("new video"))
        await runtime.pool.execute(
            "update videos set completed_at = now() - interval '40 days' where id = $1", old["id"]
        )
        old = await row_of(runtime, old["id"])
        env = cli_env(runtime, db_url)
        busy = await runtime.repo.insert_request("busy while pruning")

        status, out, err = await cli(env, "prune", "--older-than", "30", "--json")
        assert status == 0, err
        dry = json.loads(out)
        assert dry["dry_run"] and [r["id"] for r in dry["rows"]] == [str(old["id"])]
        assert (await stored_file(runtime, old["video_url"])).exists()
        assert await row_of(runtime, old["id"]) == old

        status, out, err = await cli(env, "prune", "--older-than", "30", "--apply", "--json")
        assert status == 0, err
        done = json.loads(out)
        assert not done["dry_run"] and done["failed_deletes"] == []
        await finished(runtime, busy)
    assert not (await stored_file(runtime, old["video_url"])).exists()
    assert (await row_of(runtime, old["id"]))["pruned_at"] is not None
    assert (await stored_file(runtime, new["video_url"])).exists()
    assert await row_of(runtime, new["id"]) == new


async def test_prune_deletes_only_the_files_a_row_archived_itself(
    runtime: Runtime, db_url: str
) -> None:
    """A row may hold any URL (a person or a backend can write one): an old row pointing
    at another row's video and at a photo must not make prune delete them."""
    async with running(runtime.worker()):
        victim = await finished(runtime, await runtime.repo.insert_request("still wanted"))
        old = await finished(runtime, await runtime.repo.insert_request("old, and hostile"))

    async def one() -> Any:
        yield b"\xff\xd8\xff\xe0 a photo"

    photo = await runtime.store.put(
        runtime.settings.storage.image_bucket, "p/photo.jpg", one(), "image/jpeg"
    )
    await runtime.pool.execute(
        """update videos set completed_at = now() - interval '400 days',
                  video_url = $2, poster_url = $3
           where id = $1""",
        old["id"],
        victim["video_url"],
        photo.url,
    )
    status, out, err = await cli(
        cli_env(runtime, db_url), "prune", "--older-than", "30", "--apply", "--json"
    )
    assert status == 0, err
    done = json.loads(out)
    assert [r["id"] for r in done["rows"]] == [str(old["id"])]
    assert (await stored_file(runtime, victim["video_url"])).exists()
    assert (await stored_file(runtime, photo.url)).exists()
    assert len(done["left_alone"]) == 2
    # The row's own poster (written by its archive, under its own prefix) did go.
    assert not (await stored_file(runtime, old["thumbnail_url"])).exists()


async def test_stats_shows_storage_per_bucket(runtime: Runtime, db_url: str) -> None:
    async with running(runtime.worker()):
        row = await finished(runtime, await runtime.repo.insert_request("count my bytes"))
    status, out, err = await cli(cli_env(runtime, db_url), "stats", "--json")
    assert status == 0, err
    stats = json.loads(out)
    assert stats["stages"] == {"completed": 1}
    videos = stats["storage"][runtime.settings.storage.video_bucket]
    assert videos["objects"] >= 1 and videos["bytes"] >= row["video_bytes"]
