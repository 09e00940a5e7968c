"""sql/0005 where the worker's role does not own ``storage.objects`` (hosted Supabase
without the ``supautils`` policy grant: "must be owner of relation objects").

The database is built as such a project has it: the storage schema and its tables belong
to ``supabase_storage_admin``; the worker connects as a role that is no superuser, owns
the rest of the database, bypasses RLS and may read and write ``storage.buckets`` and
``storage.objects`` (as Supabase's ``postgres`` does), but may not manage their policies.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from service.commands.doctor import examine
from service.database.migrations import LEDGER, load, migrate, waiting_for_owner
from service.database.storage_policies import BUCKETS, policy_state
from tests.conftest import make_settings
from tests.supabase_like import make_supabase_like
from tests.test_doctor import by_check
from tests.test_storage_policies import MIGRATION, SUPABASE_STORAGE

NOT_OWNER = "sora_not_storage_owner"
SEED_POLICIES = {"Anyone can upload videos", "Anon can delete images", "Anyone can change anything"}


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:@{host}"))


async def hosted_like(dsn: str) -> str:
    """``dsn``'s empty database set up as such a project; the URL its worker connects with."""
    await make_supabase_like(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        for role, attributes in (
            ("supabase_storage_admin", "nologin"),
            (NOT_OWNER, "login bypassrls"),
        ):
            with contextlib.suppress(asyncpg.DuplicateObjectError):
                await conn.execute(f"create role {role} {attributes}")
        database = await conn.fetchval("select current_database()")
        await conn.execute(SUPABASE_STORAGE)
        await conn.execute(
            f"""alter schema storage owner to supabase_storage_admin;
                alter table storage.buckets owner to supabase_storage_admin;
                alter table storage.objects owner to supabase_storage_admin;
                grant usage on schema storage to {NOT_OWNER};
                grant all on storage.buckets, storage.objects to {NOT_OWNER};
                grant create on database "{database}" to {NOT_OWNER};
                grant usage on schema auth to {NOT_OWNER};
                alter schema public owner to {NOT_OWNER};
                alter publication supabase_realtime owner to {NOT_OWNER};"""
        )
    finally:
        await conn.close()
    return as_role(dsn, NOT_OWNER)


async def test_without_the_owner_0005_applies_its_buckets_and_waits_for_the_dashboard(
    empty_db_url: str, tmp_path: Path
) -> None:
    worker_url = await hosted_like(empty_db_url)
    conn = await asyncpg.connect(worker_url)
    try:
        # Before: "must be owner of relation objects" stopped migrate at 0005, for good.
        applied = await migrate(conn)
        assert applied == [m.name for m in load()]
        (waiting,) = await waiting_for_owner(conn)
        assert waiting.name == MIGRATION.name
        assert waiting.refusal == "must be owner of relation objects (storage.objects)"
        public = await conn.fetch("select id, public from storage.buckets where public")
        assert {r["id"] for r in public} == set(BUCKETS)
        state = await policy_state(conn)
        assert (
            state is not None and not state.may_manage and state.owner == "supabase_storage_admin"
        )
        assert {name for name, _ in state.offending} == SEED_POLICIES and state.guards == 0
        assert await migrate(conn) == []  # a second run: still waiting, nothing new
        assert len(await waiting_for_owner(conn)) == 1
    finally:
        await conn.close()

    settings = make_settings(worker_url, tmp_path)
    policy = by_check(await examine(settings))["storage policies"][0]
    assert policy.level == "FAIL"
    assert "Anyone can upload videos" in policy.detail
    assert f"{NOT_OWNER} may not manage policies on storage.objects" in policy.detail
    assert "supabase_storage_admin owns it" in policy.detail
    assert "SQL Editor" in policy.fix and "sora-worker migrate --storage-sql" in policy.fix
    assert "Dashboard > Storage > Policies" in policy.fix

    # The dashboard, which may: what `migrate --storage-sql` prints (sql/0005 itself).
    admin = await asyncpg.connect(empty_db_url)
    try:
        await admin.execute(MIGRATION.read_text())
    finally:
        await admin.close()
    conn = await asyncpg.connect(worker_url)
    try:
        assert await migrate(conn) == []
        assert await waiting_for_owner(conn) == []  # the next migrate saw it done
        assert (
            await conn.fetchval(f"select count(*) from {LEDGER} where needs_owner is not null") == 0
        )
    finally:
        await conn.close()
    healthy = by_check(await examine(settings))["storage policies"][0]
    assert (healthy.level, healthy.detail) == ("OK", "the public cannot write in our buckets")


async def test_offending_policies_deleted_in_the_dashboard_leave_a_warning_for_the_guards(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Where even the SQL editor may not: the policies deleted by hand, the guards missing."""
    worker_url = await hosted_like(empty_db_url)
    conn = await asyncpg.connect(worker_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    admin = await asyncpg.connect(empty_db_url)
    try:
        for name in SEED_POLICIES:
            await admin.execute(f'drop policy "{name}" on storage.objects')
    finally:
        await admin.close()
    policy = by_check(await examine(make_settings(worker_url, tmp_path)))["storage policies"][0]
    assert policy.level == "WARN" and "guards" in policy.detail and "0 of 3" in policy.detail
    assert "sora-worker migrate --storage-sql" in policy.fix


async def test_a_role_that_owns_storage_objects_applies_0005_whole(
    empty_db_url: str, tmp_path: Path
) -> None:
    await make_supabase_like(empty_db_url)
    conn = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute(SUPABASE_STORAGE)
        await migrate(conn)
        assert await waiting_for_owner(conn) == []
        state = await policy_state(conn)
        assert state is not None and state.may_manage and state.guarded and not state.offending
    finally:
        await conn.close()
