"""What ``sora-worker doctor`` asks the database: the server's version, the migrations
it recorded, the buckets it holds, and who may do what (docs/security.md).

Read only: privileges and policies as PostgreSQL reports them for the public roles
(``anon``, ``authenticated``; PUBLIC counts for both), so a grant made by hand in the
dashboard, a policy added later or a default privilege that outran a migration shows up
before an attacker finds it.
"""

from __future__ import annotations

import asyncpg

from service.database.migrations import LEDGER, OLD_LEDGER

PUBLIC_ROLES = ("anon", "authenticated")
REQUEST_COLUMNS = ("prompt", "image1_url", "image2_url", "model", "size", "seconds")
"""What a signed-in person may insert (sql/0010); every other column is the worker's."""

OWNER_ONLY = frozenset(
    {
        "(user_id = ( SELECT auth.uid() AS uid))",
        "(( SELECT auth.uid() AS uid) = user_id)",
        "(user_id = auth.uid())",
        "(auth.uid() = user_id)",
    }
)
"""A read policy's condition that shows a person their own rows and nothing else."""

WORKER_OBJECTS = """
select r.rolname as role, format('%s.%s', n.nspname, c.relname) as object,
       case c.relkind when 'S' then 'sequence' else 'table' end as kind
from pg_catalog.pg_class c
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
cross join pg_catalog.pg_roles r
where r.rolname = any($1::name[])
  and ((n.nspname = 'sora_worker' and c.relkind in ('r', 'p', 'v', 'm', 'S'))
       or (n.nspname = 'public' and c.relname = 'sora_worker_migrations'))
  and (has_table_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
       or (c.relkind = 'S' and has_sequence_privilege(r.oid, c.oid, 'USAGE, UPDATE')))
order by 2, 1
"""
"""Every grant a public role holds on the worker's own tables and counters (the old
ledger in ``public`` included, should one be left)."""

SCHEMA_USAGE = """
select r.rolname as role from pg_catalog.pg_roles r
where r.rolname = any($1::name[]) and to_regnamespace('sora_worker') is not null
  and has_schema_privilege(r.oid, 'sora_worker', 'USAGE')
order by 1
"""

VIDEOS_WRITES = """
select r.rolname as role,
       has_table_privilege(r.oid, 'public.videos', 'UPDATE, DELETE, TRUNCATE')
           or has_any_column_privilege(r.oid, 'public.videos', 'UPDATE') as changes,
       array(select a.attname::text from pg_catalog.pg_attribute a
             where a.attrelid = 'public.videos'::regclass and a.attnum > 0
               and not a.attisdropped and a.attname <> all($2::name[])
               and has_column_privilege(r.oid, 'public.videos', a.attnum, 'INSERT')
             order by a.attnum) as worker_columns,
       has_any_column_privilege(r.oid, 'public.videos', 'INSERT') as inserts,
       has_any_column_privilege(r.oid, 'public.videos', 'SELECT') as reads,
       has_table_privilege(r.oid, 'public.videos_public', 'INSERT, UPDATE, DELETE')
           as writes_gallery
from pg_catalog.pg_roles r
where r.rolname = any($1::name[])
order by 1
"""

READ_POLICIES = """
select policyname, roles::text[] as roles, coalesce(qual, '') as qual
from pg_catalog.pg_policies
where schemaname = 'public' and tablename = 'videos' and permissive = 'PERMISSIVE'
  and cmd in ('SELECT', 'ALL')
  and roles && array['public', 'anon', 'authenticated']::name[]
order by 1
"""


async def public_access(conn: asyncpg.Connection) -> list[str]:
    """What the public roles may do that they must not, one sentence each (empty: none).

    Covers the worker's own objects (any right at all), ``public.videos`` (no change of
    any row, no insert of a worker's column, anon reads nothing, row level security on
    and every read policy limited to the reader's own rows) and the gallery view (read
    only). Roles that do not exist (a database Supabase never set up) are skipped.
    """
    roles = [
        r["rolname"]
        for r in await conn.fetch(
            "select rolname from pg_catalog.pg_roles where rolname = any($1::name[])",
            list(PUBLIC_ROLES),
        )
    ]
    if not roles:
        return []
    found = [
        f"{r['role']} may use the schema sora_worker (the worker's own)"
        for r in await conn.fetch(SCHEMA_USAGE, roles)
    ]
    found += [
        f"{r['role']} holds rights on the {r['kind']} {r['object']} (the worker's own)"
        for r in await conn.fetch(WORKER_OBJECTS, roles)
    ]
    if await conn.fetchval("select to_regclass('public.videos')") is None:
        return found
    for r in await conn.fetch(VIDEOS_WRITES, roles, list(REQUEST_COLUMNS)):
        role = r["role"]
        if r["changes"]:
            found.append(f"{role} may update or delete rows of public.videos")
        if r["worker_columns"]:
            found.append(
                f"{role} may insert the worker's columns of public.videos: "
                + ", ".join(r["worker_columns"])
            )
        if role == "anon" and r["inserts"]:
            found.append("anon (not signed in) may insert into public.videos")
        if role == "anon" and r["reads"]:
            found.append("anon may read public.videos (every person's rows)")
        if r["writes_gallery"]:
            found.append(f"{role} may write through the view public.videos_public")
    rls = await conn.fetchval(
        "select relrowsecurity from pg_catalog.pg_class where oid = 'public.videos'::regclass"
    )
    if not rls:
        found.append("row level security is off on public.videos: a reader sees every row")
    for p in await conn.fetch(READ_POLICIES):
        if p["qual"] not in OWNER_ONLY:
            found.append(
                f"policy {p['policyname']} on public.videos lets {', '.join(p['roles'])} "
                f"read rows by ({p['qual'] or 'true'}), not only their own"
            )
    return found


async def server_version(conn: asyncpg.Connection) -> str:
    version: str = await conn.fetchval("show server_version")
    return version


async def recorded_migrations(conn: asyncpg.Connection) -> dict[str, str] | None:
    """Each applied migration's name and checksum, from the ledger; None where there is
    no ledger yet (``older_ledger`` tells whether an older sora-worker kept one)."""
    if await conn.fetchval("select to_regclass($1)", LEDGER) is None:
        return None
    return {r["name"]: r["checksum"] for r in await conn.fetch(f"select * from {LEDGER}")}


async def older_ledger(conn: asyncpg.Connection) -> bool:
    """Whether the ledger of a sora-worker from before sql/0010 is there (in public)."""
    return await conn.fetchval("select to_regclass($1)", OLD_LEDGER) is not None


async def bucket_publicity(conn: asyncpg.Connection, buckets: list[str]) -> dict[str, bool] | None:
    """Whether each of ``buckets`` that exists is public; None on a database without
    Supabase's storage schema (plain PostgreSQL: storage is checked where it lives)."""
    if await conn.fetchval("select to_regclass('storage.buckets')") is None:
        return None
    rows = await conn.fetch(
        "select id, public from storage.buckets where id = any($1::text[])", buckets
    )
    return {r["id"]: bool(r["public"]) for r in rows}
