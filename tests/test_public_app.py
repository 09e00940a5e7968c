"""Issue 23, tried as the attackers would: a public app's users against a database set up
the way Supabase sets one up (tests/supabase_like.py: its roles, its default privileges
applied before `migrate`, requests made the way PostgREST makes them), after `migrate`.

Each finding of the issue has its tests here:

1. anyone could read every row (prompts, photo URLs, errors, prints, keys, leases);
2. one anonymous request could stop every worker (the ledger in public);
3. nothing bounded cost (any model, size, length; no quota, no budget; a row carrying a
   job was adopted and published);
4. a re-queue silently paid twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from structlog.testing import capture_logs

from service.config import Settings
from service.database.migrations import load, migrate
from service.database.operator import Operator
from service.local.simulator import FailureRule, SimulatorConfig
from service.providers.base import VideoGone
from service.runtime import Runtime, open_runtime
from tests.conftest import changed, eventually, replica_of, simulator_of
from tests.supabase_like import ANON, App, Person
from tests.test_pipeline import row_of, running

A, B = Person(), Person()
ANONYMOUS_SIGN_IN = Person(anonymous=True)
SECRETS = ("private birthday video of my kid", "https://photos.example/kid.jpg")


@pytest.fixture
async def app(supabase_url: str) -> AsyncIterator[App]:
    opened = await App.connect(supabase_url)
    yield opened
    await opened.close()


@pytest.fixture
async def owner(supabase_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The worker's own connection (the table owner)."""
    conn = await asyncpg.connect(supabase_url)
    yield conn
    await conn.close()


async def finish(owner: asyncpg.Connection, row_id: UUID) -> None:
    """Move a row to completed as the worker would, secrets and bookkeeping included."""
    await owner.execute(
        """update videos set stage = 'completed', status = 'completed', video_id = $2,
               video_url = $3, poster_url = $3 || '.webp', video_sha256 = repeat('a', 64),
               submit_key = gen_random_uuid(), locked_by = 'host:123',
               reference_print = '\\x00', error = 'an old error', progress = 100,
               completed_at = now()
           where id = $1""",
        row_id,
        f"video_{row_id.hex}",
        f"https://store.example/{row_id}.mp4",
    )


# ---------------------------------------------------------------- 1. who reads what


async def test_a_person_reads_their_own_rows_and_never_anothers(
    app: App, owner: asyncpg.Connection
) -> None:
    mine = await app.ask(A, SECRETS[0], image1_url=SECRETS[1])
    theirs = await app.ask(B, "their own secret prompt")
    guest = await app.ask(ANONYMOUS_SIGN_IN, "an anonymous sign-in's prompt")
    await finish(owner, theirs)

    seen = await app.fetch(A, "select * from videos")
    assert [r["id"] for r in seen] == [mine]
    assert (seen[0]["prompt"], seen[0]["image1_url"], seen[0]["user_id"]) == (
        SECRETS[0],
        SECRETS[1],
        A.sub,
    )  # a front end reading its own row keeps every column it read before
    assert [r["id"] for r in await app.fetch(B, "select * from videos")] == [theirs]
    assert [r["id"] for r in await app.fetch(ANONYMOUS_SIGN_IN, "select id from videos")] == [guest]
    # Asking for B's row by its id, or for everything, gives A nothing of B's.
    assert await app.fetch(A, "select * from videos where id = $1", theirs) == []
    assert await app.fetchval(A, "select count(*) from videos where user_id = $1", B.sub) == 0


async def test_anon_reads_the_gallery_and_nothing_else(app: App, owner: asyncpg.Connection) -> None:
    done = await app.ask(A, SECRETS[0], image1_url=SECRETS[1])
    waiting = await app.ask(B, "still waiting")
    await finish(owner, done)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table"):
        await app.fetch(ANON, "select * from videos")
    for who in (ANON, A, B):
        gallery = await app.fetch(who, "select * from videos_public")
        assert [r["id"] for r in gallery] == [done]  # finished videos only
        shown = dict(gallery[0])
        assert shown["video_url"] == f"https://store.example/{done}.mp4"
        assert shown["prompt"] is None
        assert not set(shown) & {
            "image1_url", "image2_url", "error", "error_kind", "reference_print", "submit_key",
            "locked_by", "locked_until", "user_id", "video_id", "openai_url", "attempts",
        }  # fmt: skip
        values = " ".join(str(v) for v in shown.values())
        assert not any(secret in values for secret in SECRETS), shown
    assert waiting not in [r["id"] for r in await app.fetch(ANON, "select id from videos_public")]


async def test_prompts_are_public_only_when_the_switch_is_on(
    app: App, owner: asyncpg.Connection
) -> None:
    done = await app.ask(A, "a prompt A is happy to show")
    await finish(owner, done)
    assert await app.fetchval(ANON, "select prompt from videos_public") is None
    # What the worker writes at start from SORA_PUBLIC_PROMPTS=true.
    await owner.execute("update sora_worker.settings set public_prompts = true")
    assert await app.fetchval(ANON, "select prompt from videos_public") == (
        "a prompt A is happy to show"
    )


async def test_realtime_sends_a_person_only_their_own_rows(supabase_url: str) -> None:
    from realtime import AsyncRealtimeClient
    from realtime.types import RealtimePostgresChangesListenEvent

    from tests.fakes.realtime_server import started

    app = await App.connect(supabase_url)
    async with started(supabase_url) as fake:
        heard: dict[str, list[dict[str, Any]]] = {"A": [], "B": [], "anon": [], "worker": []}
        clients = []
        for name, token in (
            ("A", fake.token_for(str(A.sub))),
            ("B", fake.token_for(str(B.sub), anonymous=True)),
            ("anon", fake.anon_key),
            ("worker", fake.service_key),
        ):
            client = AsyncRealtimeClient(
                f"{fake.url}/realtime/v1",
                fake.service_key if name == "worker" else fake.anon_key,
            )
            await client.set_auth(token)
            channel = client.channel(f"videos-{name}")
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.All,
                lambda change, into=heard[name]: into.append(change["data"]),
                table="videos",
            )
            await channel.subscribe()
            clients.append(client)
        try:
            theirs = await app.ask(B, "B's secret")
            mine = await app.ask(A, "A's own")
            # Changes are sent in commit order: once A hears their own row, B's change
            # has been dealt with for A too.
            await eventually(
                lambda: asyncio.sleep(0, heard["A"]), lambda got: len(got) == 1, within=10
            )
            await eventually(
                lambda: asyncio.sleep(0, heard["worker"]), lambda got: len(got) == 2, within=10
            )
            await eventually(
                lambda: asyncio.sleep(0, heard["B"]), lambda got: len(got) == 1, within=10
            )
        finally:
            for client in clients:
                await client.close()
            await app.close()
    assert [c["record"]["id"] for c in heard["A"]] == [str(mine)]
    assert [c["record"]["id"] for c in heard["B"]] == [str(theirs)]
    assert {c["record"]["id"] for c in heard["worker"]} == {str(mine), str(theirs)}
    # anon may not read the table: Realtime says so instead of sending a row.
    assert heard["anon"] and all("record" not in c for c in heard["anon"])
    assert all(c["errors"] == ["Error 401: Unauthorized"] for c in heard["anon"])


# ---------------------------------------------------------------- 2. the worker's own tables


async def test_the_ledger_and_the_workers_tables_are_out_of_reach(
    app: App, supabase_url: str
) -> None:
    """The attack of the issue: as anon, rewrite a checksum so no worker starts again."""
    for who in (ANON, A):
        for statement in (
            "update public.sora_worker_migrations set checksum = 'x' where version = '0008'",
            "update sora_worker.migrations set checksum = 'x' where version = '0008'",
            "select * from sora_worker.migrations",
            "update sora_worker.settings set daily_budget_usd = 1e9",
            "insert into sora_worker.allowed_models (provider, model) values ('openai', 'x')",
            "delete from sora_worker.abandoned_jobs",
            "select sora_worker.spent_today()",
            "select nextval('sora_worker.refused_quota')",
        ):
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError)):
                await app.execute(who, statement)
    conn = await asyncpg.connect(supabase_url)
    try:
        assert await migrate(conn) == []  # the ledger is as it was: every worker starts
    finally:
        await conn.close()


async def migrate_the_old_way(conn: asyncpg.Connection, upto: str) -> None:
    """What `migrate` did before sql/0010: its ledger in public (Supabase's default
    privileges handing it to anon), each file recorded with its checksum."""
    await conn.execute(
        """create table public.sora_worker_migrations (version text primary key,
               name text not null, checksum text not null,
               applied_at timestamptz not null default now())"""
    )
    for migration in load():
        if migration.version > upto:
            break
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "insert into public.sora_worker_migrations (version, name, checksum) "
                "values ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )


async def test_an_upgrade_moves_the_ledger_out_of_public_with_its_rows(
    empty_supabase_url: str,
) -> None:
    from service.database.checks import public_access

    conn = await asyncpg.connect(empty_supabase_url)
    app = await App.connect(empty_supabase_url)
    try:
        await migrate_the_old_way(conn, upto="0009")
        before = await conn.fetch(
            "select version, name, checksum from sora_worker_migrations order by version"
        )
        await conn.execute("insert into videos (prompt) values ('an old row')")
        # Before: anon could rewrite the ledger (the attack) and read every row.
        assert await app.execute(
            ANON, "update sora_worker_migrations set checksum = checksum where version = '0008'"
        ) == ("UPDATE 1")
        assert await app.fetchval(ANON, "select prompt from videos") == "an old row"
        assert len(await public_access(conn)) >= 3

        applied = await migrate(conn)

        assert applied == [m.name for m in load() if m.version > "0009"]
        after = await conn.fetch(
            "select version, name, checksum from sora_worker.migrations where version <= '0009' "
            "order by version"
        )
        assert [tuple(r) for r in after] == [tuple(r) for r in before]
        assert await conn.fetchval("select to_regclass('public.sora_worker_migrations')") is None
        assert await conn.fetchval("select user_id from videos") is None  # nobody's row
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(ANON, "update sora_worker.migrations set checksum = 'x'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.fetch(ANON, "select prompt from videos")
        assert await public_access(conn) == []
        assert await migrate(conn) == []
    finally:
        await app.close()
        await conn.close()


async def test_every_migrate_takes_back_what_was_granted_by_hand_and_doctor_fails_meanwhile(
    owner: asyncpg.Connection, app: App
) -> None:
    from service.database.checks import public_access

    assert await public_access(owner) == []
    await owner.execute(
        """grant usage on schema sora_worker to anon;
           grant all on sora_worker.settings to anon;
           grant update (video_url), delete on public.videos to authenticated;
           grant insert (video_id) on public.videos to authenticated;
           grant select on public.videos to anon;
           grant insert on public.videos_public to anon;
           create policy opened on public.videos for select to authenticated using (true);"""
    )
    found = await public_access(owner)
    assert set(found) == {
        "anon may use the schema sora_worker (the worker's own)",
        "anon holds rights on the table sora_worker.settings (the worker's own)",
        "anon may read public.videos (every person's rows)",
        "anon may write through the view public.videos_public",
        "authenticated may update or delete rows of public.videos",
        "authenticated may insert the worker's columns of public.videos: video_id",
        "policy opened on public.videos lets authenticated read rows by (true), not only their own",
    }, found
    assert len(await app.fetch(A, "select id from videos")) == 0  # grants are not rows yet
    await migrate(owner)
    assert await public_access(owner) == [
        "policy opened on public.videos lets authenticated read rows by (true), not only their own"
    ]  # a policy made by hand is named, never dropped by the worker
    await owner.execute("drop policy opened on public.videos")
    assert await public_access(owner) == []


# ---------------------------------------------------------------- 3. cost


async def test_a_row_carrying_a_job_or_a_stage_is_refused_whoever_inserts_it(
    app: App, owner: asyncpg.Connection, supabase_url: str
) -> None:
    forged = (
        "insert into videos (prompt, status, video_id) values ('x', 'processing', 'video_b')",
        "insert into videos (prompt, status, video_url) values ('x', 'completed', 'https://x')",
        "insert into videos (prompt, stage, status) values ('x', 'generating', 'processing')",
        "insert into videos (prompt, video_id) values ('x', 'video_b')",
    )
    for statement in forged:
        for role in ("service_role", None):  # a backend with the service key; the owner
            with pytest.raises(asyncpg.CheckViolationError) as refused:
                async with owner.transaction():
                    if role:
                        await owner.execute(f"set local role {role}")
                    await owner.execute(statement)
            assert refused.value.message == (
                "a new row is a request for a video: it cannot arrive carrying a provider job "
                "or a stage"
            )
            assert "sora-worker adopt ROW_ID VIDEO_ID" in (refused.value.hint or "")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(A, statement)
    assert await owner.fetchval("select count(*) from videos") == 0
    # Attaching a job is `sora-worker adopt`'s, on a request that exists.
    row_id = await app.ask(A)
    pool = await asyncpg.create_pool(supabase_url, min_size=1, max_size=1)
    try:
        await Operator(pool).adopt(row_id, "video_b", "openai")
    finally:
        await pool.close()
    assert await owner.fetchval("select stage from videos where id = $1", row_id) == "generating"


async def test_people_write_a_requests_columns_and_nothing_else(
    app: App, owner: asyncpg.Connection
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.ask(ANON, "not signed in")
    mine = await app.ask(A, "mine", image2_url="https://p/2.jpg", model="sora-2", seconds="8")
    await app.ask(ANONYMOUS_SIGN_IN, "a guest may ask")
    for column, value in (
        ("stage", "generating"),
        ("video_id", "video_x"),
        ("submit_key", uuid.uuid4()),
        ("attempts", 0),
        ("locked_by", "me"),
        ("error", "x"),
        ("video_url", "https://evil/v.mp4"),
        ("provider", "replicate"),
        ("user_id", B.sub),
        ("created_at", None),
        ("status", "queued"),
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await app.ask(A, "forged", **{column: value})
    for statement in (
        "update videos set status = 'queued'",
        "update videos set video_url = 'https://evil/v.mp4'",
        "delete from videos",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(A, statement)
    assert await owner.fetchval("select count(*) from videos") == 2
    row = await owner.fetchrow("select * from videos where id = $1", mine)
    assert (row["user_id"], row["seconds"], row["stage"]) == (A.sub, "8", "pending")


async def test_models_sizes_and_lengths_not_allowed_are_refused_at_insert(app: App) -> None:
    for columns, said in (
        ({"model": "veo-9-ultra"}, "model veo-9-ultra is not offered here; use one of: "),
        ({"size": "99999x99999"}, "size 99999x99999 is not offered by sora-2; use one of: "),
        ({"seconds": "9999"}, "9999 seconds is not offered by sora-2; use one of: 4, 8, 12"),
        ({"seconds": "four"}, "seconds four is not a whole number of seconds, like 4"),
    ):
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await app.ask(A, **columns)
        assert refused.value.message.startswith(said), refused.value.message
        assert "SORA_ALLOWED_MODELS" in (refused.value.hint or "")
    await app.ask(A, model="sora-2-pro", size="1792x1024", seconds="12")  # allowed


async def many_at_once(
    dsn: str, people: list[Person], *, seconds: str = "4"
) -> tuple[int, list[asyncpg.PostgresError]]:
    """Each person asks once, all at the same moment, each on a connection of its own."""
    apps = [await App.connect(dsn) for _ in people]
    try:
        results = await asyncio.gather(
            *(
                a.ask(p, f"at once {n}", seconds=seconds)
                for n, (a, p) in enumerate(zip(apps, people, strict=True))
            ),
            return_exceptions=True,
        )
    finally:
        for a in apps:
            await a.close()
    refused = [r for r in results if isinstance(r, asyncpg.PostgresError)]
    assert all(isinstance(r, (UUID, asyncpg.PostgresError)) for r in results), results
    return len(results) - len(refused), refused


async def test_a_persons_daily_quota_holds_under_fifty_concurrent_inserts(
    supabase_url: str, owner: asyncpg.Connection
) -> None:
    await owner.execute("update sora_worker.settings set user_daily_videos = 5")
    made, refused = await many_at_once(supabase_url, [A] * 50)
    assert made == 5 and len(refused) == 45
    assert {r.sqlstate for r in refused} == {"PT429"}  # PostgREST answers HTTP 429
    assert refused[0].message == (
        "you have asked for 5 videos today, the most one person may (5 a day)"
    )
    assert refused[0].hint == "try again after midnight UTC"
    # Seconds of video count too: 12 s a day is three 4-second videos.
    await owner.execute("update sora_worker.settings set user_daily_videos = 50")
    await owner.execute("update sora_worker.settings set user_daily_seconds = 12")
    made, refused = await many_at_once(supabase_url, [B] * 50)
    assert made == 3 and len(refused) == 47
    assert refused[0].message == (
        "a 4-second video would take you past 12 seconds of video today (12 asked for so far)"
    )
    counted = await owner.fetchval("select last_value from sora_worker.refused_quota")
    assert counted == 45 + 47


async def test_the_daily_budget_holds_under_fifty_concurrent_inserts(
    supabase_url: str, owner: asyncpg.Connection
) -> None:
    # sora-2 at 0.10 USD a second: a 4-second video is 0.40, so 2.00 USD is five videos.
    await owner.execute("update sora_worker.settings set daily_budget_usd = 2.00")
    made, refused = await many_at_once(supabase_url, [Person() for _ in range(50)])
    assert made == 5 and len(refused) == 45
    assert {r.sqlstate for r in refused} == {"PT503"}  # PostgREST answers HTTP 503
    assert refused[0].message == (
        "no more videos can be made today: the service has reached its daily budget"
    )
    assert await owner.fetchval("select sora_worker.reserved_usd()") == 2
    # Rows the worker has submitted count as spent, the waiting ones as reserved.
    await owner.execute(
        "update videos set stage = 'submitting', status = 'processing', "
        "submit_key = gen_random_uuid(), submitted_at = now()"
    )
    assert await owner.fetchval("select sora_worker.spent_today()") == 2
    assert await owner.fetchval("select sora_worker.reserved_usd()") == 0


async def test_rows_over_budget_wait_and_never_submit_and_the_spend_is_on_metrics(
    runtime: Runtime,
) -> None:
    """The service role's rows meet the budget at submission: eight rows claimed at once
    by one worker (16 at a time), room for three (0.40 USD each): three are made, five
    wait, none is sent past the budget."""
    from service.database.health import Health

    simulator = simulator_of(runtime)
    async with replica_of(runtime, daily_budget_usd=1.2) as tight:  # written at its start
        ids = [await tight.repo.insert_request(f"video {n}") for n in range(8)]
        worker = tight.worker()
        async with running(worker):
            rows = [
                await eventually(
                    lambda r=r: row_of(tight, r),
                    lambda row: (
                        row["stage"] == "completed"
                        or (
                            row["stage"] == "pending" and (row["error"] or "").startswith("waiting")
                        )
                    ),
                )
                for r in ids
            ]
            text = worker.metrics.render(await Health(tight.pool).active_rows(5.0)).decode()
    done = [r for r in rows if r["stage"] == "completed"]
    waiting = [r for r in rows if r["stage"] == "pending"]
    assert (len(done), len(waiting), len(simulator.created)) == (3, 5, 3)
    for row in waiting:
        assert (row["attempts"], row["video_id"], row["submit_key"]) == (0, None, None)
        assert "SORA_DAILY_BUDGET_USD" in row["error"], row["error"]
    assert "sora_estimated_spend_today_usd 1.2" in text
    assert "sora_daily_budget_usd 1.2" in text
    assert "sora_over_budget_total 5.0" in text


async def test_a_budget_that_fits_three_videos_makes_three_one_after_another(
    runtime: Runtime,
) -> None:
    """Each submission looks at the day's spend after the one before it was charged:
    0.80 spent and 0.40 to come fit a 1.20 budget exactly (in floats they do not)."""
    async with replica_of(runtime, daily_budget_usd=1.2, concurrency=1) as tight:
        ids = [await tight.repo.insert_request(f"one at a time {n}") for n in range(4)]
        async with running(tight.worker()):
            rows = [
                await eventually(
                    lambda r=r: row_of(tight, r),
                    lambda row: row["stage"] == "completed" or bool(row["error"]),
                )
                for r in ids
            ]
    assert [row["stage"] for row in rows].count("completed") == 3, [r["error"] for r in rows]
    assert len(simulator_of(runtime).created) == 3


async def test_refusals_are_counted_on_metrics(
    app: App, owner: asyncpg.Connection, supabase_url: str
) -> None:
    from service.database.health import Health
    from service.worker.metrics import Metrics

    await owner.execute("update sora_worker.settings set user_daily_videos = 1")
    await app.ask(A)
    for columns in ({}, {"model": "x"}):
        with pytest.raises(asyncpg.PostgresError):
            await app.ask(A, **columns)
    with pytest.raises(asyncpg.CheckViolationError):
        await owner.execute("insert into videos (prompt, video_id) values ('x', 'video_y')")
    pool = await asyncpg.create_pool(supabase_url, min_size=1, max_size=1)
    try:
        text = Metrics().render(await Health(pool).active_rows(5.0)).decode()
    finally:
        await pool.close()
    for reason, count in (("quota", 1), ("model", 1), ("job_or_stage", 1), ("budget", 0)):
        assert f'sora_insert_refusals_total{{reason="{reason}"}} {count}.0' in text, text


# ---------------------------------------------------------------- 4. a re-queue


def slow_runtime(settings: Settings, **simulator: Any) -> AbstractAsyncContextManager[Runtime]:
    """A worker whose simulated jobs take a minute, polled at least every second."""
    config = SimulatorConfig(queue_seconds=0.05, generation_seconds=60, **simulator)
    return open_runtime(
        changed(settings, poll_ceiling=1.0),
        apply_migrations=False,
        stand_in_configs={"openai": config},
    )


async def test_a_requeued_generating_row_has_its_job_cancelled_with_a_warning(
    settings: Settings,
) -> None:
    async with slow_runtime(settings) as rt, running(rt.worker()):
        row_id = await rt.repo.insert_request("re-queued while it generates")
        first = await eventually(lambda: row_of(rt, row_id), lambda r: r["stage"] == "generating")
        with capture_logs() as logs:
            # What the attacker (or a hasty backend) did: status back to queued.
            async with rt.pool.acquire() as conn, conn.transaction():
                await conn.execute("set local role service_role")
                await conn.execute("update videos set status = 'queued' where id = $1", row_id)
            second = await eventually(
                lambda: row_of(rt, row_id),
                lambda r: r["stage"] == "generating" and r["video_id"] != first["video_id"],
            )
            outcome = await eventually(
                lambda: rt.pool.fetchval("select outcome from sora_worker.abandoned_jobs"),
                lambda got: got is not None,
            )
        with pytest.raises(VideoGone):
            await rt.providers.get(None).retrieve(first["video_id"])
        assert (await rt.providers.get(None).retrieve(second["video_id"])).status == "running"
    assert outcome == "cancelled at openai"
    warned = [e for e in logs if e["event"] == "video.abandoned_job"]
    assert [(e["video_id"], e["estimated_usd"], e["how"]) for e in warned] == [
        (first["video_id"], 0.4, "re-queued")
    ]
    assert warned[0]["log_level"] == "warning"


async def test_a_create_that_outlives_its_rows_requeue_is_cancelled_too(
    settings: Settings,
) -> None:
    """The row goes back to queued while its create is on the wire: the job that create
    makes is recorded by nobody, so the worker names it, cancels it and says so."""
    slow = FailureRule("slow create", "slow_create", times=1, delay=5.0)
    async with slow_runtime(settings, failure_rules=[slow]) as rt, running(rt.worker()):
        simulator = simulator_of(rt)
        row_id = await rt.repo.insert_request("a slow create")
        await eventually(lambda: asyncio.sleep(0, simulator.created), bool)
        made = simulator.created[0].video_id
        with capture_logs() as logs:
            await rt.pool.execute("update videos set status = 'queued' where id = $1", row_id)
            row = await eventually(
                lambda: row_of(rt, row_id),
                lambda r: r["stage"] == "generating" and r["video_id"] != made,
            )
            await eventually(
                lambda: rt.pool.fetchval(
                    "select outcome from sora_worker.abandoned_jobs where video_id = $1", made
                ),
                lambda got: got == "cancelled at openai",
            )
        with pytest.raises(VideoGone):
            await rt.providers.get(None).retrieve(made)
    assert row["video_id"] != made
    warned = [e for e in logs if e["event"] == "video.abandoned_job" and e["video_id"] == made]
    assert warned and warned[-1]["outcome"] == "cancelled at openai"


async def test_retry_asks_for_abandon_before_it_drops_a_running_job(settings: Settings) -> None:
    async with slow_runtime(settings) as rt, running(rt.worker()):
        row_id = await rt.repo.insert_request("generating for a while")
        first = await eventually(lambda: row_of(rt, row_id), lambda r: r["stage"] == "generating")
        op = Operator(rt.pool)
        assert await op.retry(row_id, failed_since=None) == []
        why = (await op.why_not(row_id, "retry")).reason
        assert first["video_id"] in why and "retry ID --abandon" in why
        assert await rt.pool.fetchval("select count(*) from sora_worker.abandoned_jobs") == 0
        # A poll may hold the row's lease for a moment: the verb then changes nothing.
        await eventually(
            lambda: op.retry(row_id, failed_since=None, abandon=True),
            lambda got: got == [row_id],
        )
        await eventually(
            lambda: rt.pool.fetchval("select outcome from sora_worker.abandoned_jobs"),
            lambda got: got == "cancelled at openai",
        )
