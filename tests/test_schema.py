"""The schema: migrations, constraints, triggers and row-level security."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import get_args

import asyncpg
import pytest

from service.core.job import Stage
from service.core.request import ErrorKind
from service.database.migrations import SQL_DIR, MigrationError, migrate
from service.database.postgres import PostgresRepository
from service.database.rows import ACTIVE_SQL
from service.providers.ids import litellm_id
from tests.conftest import row_in


async def test_migrations_apply_once_and_a_second_run_changes_nothing(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        first = await migrate(conn)
        assert first == sorted(p.name for p in SQL_DIR.glob("*.sql"))
        assert await migrate(conn) == []
        recorded = await conn.fetchval("select count(*) from sora_worker.migrations")
        assert recorded == len(first)
    finally:
        await conn.close()


async def test_two_replicas_migrating_at_once_apply_each_file_exactly_once(
    empty_db_url: str,
) -> None:
    conns = [await asyncpg.connect(empty_db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(name for result in results for name in result)
        assert applied == sorted(p.name for p in SQL_DIR.glob("*.sql"))
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_applied_migration_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    for path in SQL_DIR.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, tmp_path)
        first = sorted(tmp_path.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, tmp_path)
    finally:
        await conn.close()


async def test_a_seed_table_is_adopted_with_its_rows_kept(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute(
            """create table public.videos (
                 id uuid primary key default gen_random_uuid(), prompt text, image1_url text,
                 image2_url text, status text not null default 'queued', video_id text,
                 video_url text, openai_url text, created_at timestamptz default now(),
                 updated_at timestamptz default now());
               insert into videos (prompt, status, video_id, video_url) values
                 ('done', 'completed', 'video_a', 'https://x/a.mp4'),
                 ('running', 'processing', 'video_b', null),
                 ('lost', 'processing', null, null),
                 ('waiting', 'queued', null, null),
                 (null, 'queued', null, null),
                 ('broken', 'failed', null, null);
               insert into videos (prompt, image1_url) values ('long url', repeat('x', 3000));"""
        )
        await migrate(conn)
        rows = {r["prompt"]: r for r in await conn.fetch("select * from videos")}
        # No old row stops the claim: a new request is claimable alongside them.
        await conn.execute("insert into videos (prompt) values ('new')")
        repo = PostgresRepository(conn, "w", timedelta(seconds=30))  # type: ignore[arg-type]
        claimed = await repo.claim(10)
    finally:
        await conn.close()
    assert sorted(j.prompt or "" for j in claimed) == ["new", "running", "waiting"]
    assert rows[None]["status"] == "failed" and "prompt" in rows[None]["error"]
    assert rows["long url"]["status"] == "failed"
    assert rows["broken"]["error"]
    assert rows["running"]["submitted_at"] is not None  # its generation deadline runs
    assert (rows["done"]["stage"], rows["done"]["video_url"]) == ("completed", "https://x/a.mp4")
    assert rows["running"]["stage"] == "generating"  # paid for: keep polling it
    assert rows["lost"]["status"] == "failed" and "queued" in rows["lost"]["error"]
    assert rows["waiting"]["stage"] == "pending"


async def test_the_public_reads_only_the_gallery_and_writes_nothing(
    conn: asyncpg.Connection,
) -> None:
    """sql/0010: anon reads the gallery view, never the table; nobody but the worker
    (and the service role) writes; a signed-in person is tested in test_public_app."""
    row_id = await row_in(conn, "completed", video_url="https://x/v.mp4")
    for role in ("anon", "authenticated"):
        async with conn.transaction():
            await conn.execute(f"set local role {role}")
            assert await conn.fetchval("select status from videos_public where id = $1", row_id)
        for statement in (
            f"update videos set status = 'failed' where id = '{row_id}'",
            f"delete from videos where id = '{row_id}'",
            "insert into videos (prompt, video_id) values ('x', 'video_theirs')",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(f"set local role {role}")
                    await conn.execute(statement)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with conn.transaction():
            await conn.execute("set local role anon")
            await conn.execute("select count(*) from videos")
    async with conn.transaction():
        await conn.execute("set local role service_role")
        await conn.execute("insert into videos (prompt) values ('from the backend')")
    assert await conn.fetchval("select relrowsecurity from pg_class where relname = 'videos'")


async def test_the_public_view_hides_everything_personal(conn: asyncpg.Connection) -> None:
    columns = {
        r["column_name"]
        for r in await conn.fetch(
            "select column_name from information_schema.columns where table_name = 'videos_public'"
        )
    }
    assert {"status", "video_url", "progress", "poster_url", "duration_seconds"} <= columns
    assert not {
        "locked_by", "locked_until", "submit_key", "attempts", "image1_url", "image2_url",
        "error", "reference_print", "user_id", "video_id", "openai_url",
    } & columns  # fmt: skip
    # The prompt column is there, empty unless SORA_PUBLIC_PROMPTS turns it on.
    await row_in(conn, "completed", "a private prompt", video_url="https://x/v.mp4")
    assert await conn.fetchval("select prompt from videos_public") is None


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", "x" * 4001),
        ("status", "pending"),
        ("size", "big"),
        ("size", "720 x 1280"),
        ("seconds", "four"),
        ("seconds", "0"),
    ],
)
async def test_malformed_requests_are_refused_at_insert(
    conn: asyncpg.Connection, column: str, value: str
) -> None:
    values = {"prompt": "ok", column: value}
    cols = ", ".join(values)
    params = ", ".join(f"${i + 1}" for i in range(len(values)))
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(f"insert into videos ({cols}) values ({params})", *values.values())


async def test_no_model_size_or_length_list_is_hard_coded(conn: asyncpg.Connection) -> None:
    """The allowlist is data the worker writes (sql/0011), not a rule of the schema."""
    await conn.execute(
        "insert into sora_worker.allowed_models (provider, model) values ('openai', 'veo-3.1')"
    )
    await conn.execute(
        "insert into videos (prompt, model, size, seconds) "
        "values ('x', 'veo-3.1', '1920x1080', '6')"
    )


async def test_updated_at_moves_on_every_update(conn: asyncpg.Connection) -> None:
    row_id = await conn.fetchval("insert into videos (prompt) values ('x') returning id")
    before = await conn.fetchval("select updated_at from videos where id = $1", row_id)
    await conn.execute("update videos set progress = 5 where id = $1", row_id)
    after = await conn.fetchval("select updated_at from videos where id = $1", row_id)
    assert after > before


async def test_inserting_notifies_the_worker_channel(conn: asyncpg.Connection, db_url: str) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(db_url)
    await listener.add_listener("sora_worker", lambda *args: received.put_nowait(args[3]))
    try:
        row_id = await conn.fetchval("insert into videos (prompt) values ('x') returning id")
        assert await asyncio.wait_for(received.get(), 5) == str(row_id)
    finally:
        await listener.close()


async def test_setting_status_back_to_queued_asks_for_a_fresh_start(
    conn: asyncpg.Connection,
) -> None:
    row_id = await row_in(conn, "failed", error="boom")
    await conn.execute("update videos set status = 'queued' where id = $1", row_id)
    row = await conn.fetchrow("select * from videos where id = $1", row_id)
    assert (row["stage"], row["error"], row["attempts"], row["video_id"]) == (
        "pending",
        None,
        0,
        None,
    )


async def test_a_remade_row_sheds_the_old_videos_media_and_pruning(
    conn: asyncpg.Connection,
) -> None:
    row_id = await row_in(
        conn,
        "completed",
        video_url="http://s/v.mp4",
        duration_seconds=4.0,
        width=720,
        height=1280,
        poster_url="http://s/p.webp",
        rendition_url="http://s/s.mp4",
        reference_print=b"\x00",
    )
    shown = await conn.fetchval("select poster_url from videos_public where id = $1", row_id)
    assert shown == "http://s/p.webp"
    await conn.execute("update videos set pruned_at = now() where id = $1", row_id)
    # A pruned row's files are gone: the gallery no longer offers it.
    assert await conn.fetchval("select count(*) from videos_public") == 0
    await conn.execute("update videos set status = 'queued' where id = $1", row_id)
    row = await conn.fetchrow("select * from videos where id = $1", row_id)
    old = ("video_url", "duration_seconds", "width", "height", "poster_url", "rendition_url",
           "pruned_at", "reference_print")  # fmt: skip
    assert row["stage"] == "pending" and all(row[name] is None for name in old), dict(row)


async def test_error_kind_is_one_the_worker_knows_and_goes_when_the_row_is_asked_again(
    conn: asyncpg.Connection,
) -> None:
    for kind in get_args(ErrorKind):  # the CHECK names each outcome the code can write
        await row_in(conn, "failed", error="x", error_kind=kind)
    row_id = await row_in(conn, "failed", error="filtered", error_kind="safety_filtered")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("update videos set error_kind = 'bad luck' where id = $1", row_id)
    await conn.execute("update videos set status = 'queued' where id = $1", row_id)
    assert await conn.fetchval("select error_kind from videos where id = $1", row_id) is None
    # Only a failed row has one.
    running = await row_in(conn, "generating", video_id="v", error_kind="expired")
    assert await conn.fetchval("select error_kind from videos where id = $1", running) is None


async def test_stage_and_status_can_never_disagree(conn: asyncpg.Connection) -> None:
    row_id = await conn.fetchval("insert into videos (prompt) values ('x') returning id")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("update videos set stage = 'generating' where id = $1", row_id)


@pytest.mark.parametrize("stage", list(Stage))
async def test_the_database_pairs_each_stage_with_the_status_the_code_gives_it(
    conn: asyncpg.Connection, stage: Stage
) -> None:
    """``Stage.status`` is the one mapping in the code; the CHECKs hold the table to it."""
    row_id = await conn.fetchval("insert into videos (prompt) values ('x') returning id")
    pair = "update videos set stage = $2, status = $3, error = 'e' where id = $1"
    for status in ("queued", "processing", "completed", "failed"):
        if status == stage.status:
            await conn.execute(pair, row_id, stage.value, status)
            continue
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(pair, row_id, stage.value, status)


async def test_the_claim_query_uses_the_partial_index(conn: asyncpg.Connection) -> None:
    await conn.execute("insert into videos (prompt) select 'x' from generate_series(1, 5000)")
    await conn.execute(
        "update videos set status = 'completed', stage = 'completed', video_url = 'u', "
        "video_sha256 = repeat('a', 64)"
    )
    await conn.execute("insert into videos (prompt) select 'y' from generate_series(1, 20)")
    await conn.execute("analyze videos")
    plan = "\n".join(
        r[0]
        for r in await conn.fetch(
            f"""explain select id from videos
               where stage in {ACTIVE_SQL}
                 and next_attempt_at <= now()
               order by next_attempt_at limit 10 for update skip locked"""
        )
    )
    assert "videos_due_idx" in plan, plan


async def test_identical_requests_may_be_in_doubt_together(conn: asyncpg.Connection) -> None:
    """0007: the first frame settles whose job is whose, so twins no longer take turns."""
    doubt = """update videos set stage = 'submitting', status = 'processing', model = 'sora-2',
               size = '720x1280', seconds = '4', submit_key = gen_random_uuid(),
               submitted_at = now(), reference_print = $2 where id = $1"""
    ids = [
        await conn.fetchval("insert into videos (prompt) values ($1) returning id", prompt)
        for prompt in ("same", "same", "different")
    ]
    for n, row_id in enumerate(ids):
        await conn.execute(doubt, row_id, bytes([n]) * 768)
    in_doubt = await conn.fetchval(
        "select count(*) from videos where stage = 'submitting' and prompt = 'same'"
    )
    assert in_doubt == 2


@pytest.mark.parametrize("statement", ["insert", "update"])
async def test_an_invalid_status_is_refused_with_the_allowed_values(
    conn: asyncpg.Connection, statement: str
) -> None:
    """Finding 4: the refusal lists what is allowed, not an internal constraint's name."""
    row_id = await conn.fetchval("insert into videos (prompt) values ('x') returning id")
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        if statement == "insert":
            await conn.execute("insert into videos (prompt, status) values ('x', 'done')")
        else:
            await conn.execute("update videos set status = 'Done' where id = $1", row_id)
    value = "done" if statement == "insert" else "Done"
    assert caught.value.message == (
        f"invalid status '{value}': use one of queued, processing, completed, failed"
    )
    assert "videos_" not in str(caught.value)


async def test_one_job_under_two_spellings_stops_the_upgrade_with_the_rows_named(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Before 0006 a row could hold a LiteLLM id and another the bare id of the same
    job; the stable unique index cannot be built then, and migrate says which rows."""
    for path in SQL_DIR.glob("*.sql"):
        if path.name < "0006":
            (tmp_path / path.name).write_text(path.read_text())
    wrapped = litellm_id("video_upstream1", model_id="sora-2")
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, tmp_path)
        first, second = [
            await conn.fetchval(
                "insert into videos (prompt, status, video_id) values ('p', 'processing', $1) "
                "returning id",
                video_id,
            )
            for video_id in ("video_upstream1", wrapped)
        ]
        with pytest.raises(asyncpg.RaiseError) as refused:
            await migrate(conn)
        message = str(refused.value)
        assert "video_upstream1" in message
        assert str(first) in message and str(second) in message
        assert "delete the others (they hold the same video)" in message
        # Settled as it says, the upgrade goes through.
        await conn.execute("delete from videos where id = $1", second)
        assert "0006_error_kind.sql" in await migrate(conn)
    finally:
        await conn.close()
