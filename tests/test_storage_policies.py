"""sql/0005: the worker's buckets exist, public, and the public cannot write in them.

Supabase's ``storage`` schema is not on plain PostgreSQL, so the test builds the part
the migration touches, as Supabase has it (``storage.buckets``, ``storage.objects``
with RLS on and every privilege granted to anon/authenticated: RLS is the wall),
seeds it with the kind of policies the seed system had, runs the migration again, and
then tries every write as each role with SET ROLE.
"""

from __future__ import annotations

import asyncpg
import pytest

from service.database.migrations import SQL_DIR

MIGRATION = SQL_DIR / "0005_storage_buckets.sql"

SUPABASE_STORAGE = """
create schema storage;
create table storage.buckets (
    id text primary key,
    name text not null,
    owner uuid,
    public boolean default false,
    file_size_limit bigint,
    allowed_mime_types text[],
    created_at timestamptz default now(),
    updated_at timestamptz default now()
);
create table storage.objects (
    id uuid primary key default gen_random_uuid(),
    bucket_id text references storage.buckets (id),
    name text,
    owner uuid,
    metadata jsonb,
    created_at timestamptz default now(),
    updated_at timestamptz default now(),
    unique (bucket_id, name)
);
alter table storage.buckets enable row level security;
alter table storage.objects enable row level security;
grant usage on schema storage to anon, authenticated, service_role;
grant all on storage.buckets, storage.objects to anon, authenticated, service_role;
insert into storage.buckets (id, name, public) values ('avatars', 'avatars', false);
-- What the seed project had: the public may upload and delete in the worker's buckets.
create policy "Anyone can upload videos" on storage.objects
    for insert to public with check (bucket_id = 'hug-videos');
create policy "Anon can delete images" on storage.objects
    for delete to anon using (bucket_id in ('hug-images', 'hug-videos'));
create policy "Anyone can change anything" on storage.objects
    for update to authenticated using (true);
-- Another app's rule for its own bucket: kept.
create policy "Users upload avatars" on storage.objects
    for insert to authenticated with check (bucket_id = 'avatars');
create policy "Public read" on storage.objects for select to public using (true);
"""


async def as_role(conn: asyncpg.Connection, role: str, sql: str, *args: object) -> str:
    """Run ``sql`` as ``role`` in a transaction that is rolled back; return its status."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(f"set local role {role}")
        return await conn.execute(sql, *args)
    finally:
        await tx.rollback()


async def test_the_migration_is_skipped_without_a_storage_schema(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(MIGRATION.read_text())  # the template ran it already; again is fine
    assert await conn.fetchval("select to_regclass('storage.buckets')") is None


async def test_buckets_are_public_and_only_the_service_role_writes(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(SUPABASE_STORAGE)
    await conn.execute(MIGRATION.read_text())
    await conn.execute(MIGRATION.read_text())  # a second run changes nothing

    buckets = {
        r["id"]: r
        for r in await conn.fetch("select id, public, allowed_mime_types from storage.buckets")
    }
    assert buckets["hug-videos"]["public"] and buckets["hug-images"]["public"]
    assert buckets["hug-videos"]["allowed_mime_types"] == ["video/mp4", "image/webp"]
    assert buckets["hug-images"]["allowed_mime_types"] == ["image/jpeg", "image/png", "image/webp"]
    assert not buckets["avatars"]["public"]  # someone else's bucket: untouched
    policies = {r["policyname"] for r in await conn.fetch("select policyname from pg_policies")}
    assert "Users upload avatars" in policies and "Public read" in policies
    assert not policies & {
        "Anyone can upload videos",
        "Anon can delete images",
        "Anyone can change anything",
    }

    for bucket in ("hug-videos", "hug-images"):
        await conn.execute(
            "insert into storage.objects (bucket_id, name) values ($1, 'kept.mp4')", bucket
        )
        for role in ("anon", "authenticated"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await as_role(
                    conn,
                    role,
                    "insert into storage.objects (bucket_id, name) values ($1, 'x.mp4')",
                    bucket,
                )
            # RLS hides the rows from UPDATE and DELETE: nothing changes.
            assert (
                await as_role(
                    conn,
                    role,
                    "update storage.objects set name = 'moved' where bucket_id = $1",
                    bucket,
                )
                == "UPDATE 0"
            )
            assert (
                await as_role(
                    conn, role, "delete from storage.objects where bucket_id = $1", bucket
                )
                == "DELETE 0"
            )
        assert (
            await as_role(
                conn,
                "service_role",
                "insert into storage.objects (bucket_id, name) values ($1, 'new.mp4')",
                bucket,
            )
            == "INSERT 0 1"
        )
        assert (
            await as_role(
                conn, "service_role", "delete from storage.objects where bucket_id = $1", bucket
            )
            == "DELETE 1"
        )

    # A permissive policy added later cannot open them: the restrictive one wins.
    await conn.execute("create policy late on storage.objects for insert to anon with check (true)")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_role(
            conn, "anon", "insert into storage.objects (bucket_id, name) values ('hug-videos', 'y')"
        )
    # The other app's bucket keeps working for its users.
    assert (
        await as_role(
            conn,
            "authenticated",
            "insert into storage.objects (bucket_id, name) values ('avatars', 'me.png')",
        )
        == "INSERT 0 1"
    )


async def test_the_public_cannot_write_videos_rows(conn: asyncpg.Connection) -> None:
    for role in ("anon", "authenticated"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_role(conn, role, "insert into public.videos (prompt) values ('x')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_role(conn, role, "update public.videos set prompt = 'y'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await as_role(conn, role, "delete from public.videos")
    assert (
        await as_role(conn, "service_role", "insert into public.videos (prompt) values ('x')")
        == "INSERT 0 1"
    )
