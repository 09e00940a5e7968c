"""Applies ``sql/NNNN_*.sql`` once each, in order, recording what ran.

Safe to run twice and from many replicas at once: an advisory lock serialises
runners, each file runs in its own transaction together with its record, and a file
that changed after it was applied is refused (its checksum no longer matches) rather
than silently skipped.

A migration with statements only a table's owner may run (sql/0005's policies on
``storage.objects``, which hosted Supabase gives to ``supabase_storage_admin``) is tried
whole in a savepoint; refused for want of ownership, its part that needs no owner runs
instead and the ledger records what was refused (``needs_owner``). Each later run tries
the whole again, and clears the record once it succeeds or once someone has done the
owner's part by hand (``service.database.storage_policies``); ``waiting_for_owner``
lists what is still waiting, for the log and ``doctor``.

The ledger lives in the worker's private schema (``sora_worker.migrations``), out of the
API's reach: in ``public``, Supabase's default privileges let anon rewrite a checksum
and stop every worker. A ledger left there by a version before 0010 is moved (rows and
checksums kept) before anything else runs. Every run ends by saying again who may do
what (``sora_worker.assert_privileges()``, from sql/0010), so a grant made since, by
hand or by Supabase's default privileges, does not outlive the next deploy.

The files ship inside the package (``service/sql``, a link to the top-level ``sql/`` in
the repository, real files in the wheel) and are read through ``importlib.resources``,
so an installed worker migrates just as a checkout does.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service.database.storage_policies import done_by_hand, owner_part

SQL_DIR: Traversable = files("service") / "sql"
LOCK_KEY = 0x50_52_41_5F_57_4B  # any constant; identifies our migration lock
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
LEDGER = "sora_worker.migrations"
OLD_LEDGER = "public.sora_worker_migrations"
"""Where versions before sql/0010 kept the ledger."""
REASSERT = "sora_worker.assert_privileges()"

BOOTSTRAP = f"""
create schema if not exists sora_worker;
revoke all on schema sora_worker from public;
do $$
begin
    if to_regclass('{OLD_LEDGER}') is not null and to_regclass('{LEDGER}') is null then
        alter table {OLD_LEDGER} set schema sora_worker;
        alter table sora_worker.sora_worker_migrations rename to migrations;
    end if;
end
$$;
create table if not exists {LEDGER} (
    version text primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now());
alter table {LEDGER} add column if not exists needs_owner text;
revoke all on {LEDGER} from public;
"""
"""Run before any file, under the migrations' lock: the private schema, and the ledger
in it (moved from ``public`` when an older version left it there)."""


class MigrationError(Exception):
    """The migrations on disk disagree with what the database recorded."""


Conn = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True)
class Waiting:
    """A migration applied without the statements only a table's owner may run."""

    name: str
    refusal: str
    """What the database answered: "must be owner of relation objects (storage.objects)"."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Traversable = SQL_DIR) -> list[Migration]:
    found = []
    paths = (path for path in directory.iterdir() if path.name.endswith(".sql"))
    for path in sorted(paths, key=lambda path: path.name):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_words.sql")
        found.append(Migration(match.group(1), path.name, path.read_text(encoding="utf-8")))
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return found


async def migrate(conn: Conn, directory: Traversable = SQL_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied now.

    The lock is transaction-scoped and taken in every transaction, so this also works
    through a transaction-mode pooler, where a session lock could stay held on some
    other server connection.
    """
    migrations = load(directory)
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(BOOTSTRAP)
    applied_now: list[str] = []
    for migration in migrations:
        async with conn.transaction():
            await conn.execute("select pg_advisory_xact_lock($1)", LOCK_KEY)
            done = await conn.fetchrow(
                f"select name, checksum, needs_owner from {LEDGER} where version = $1",
                migration.version,
            )
            if done is not None:
                if done["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"{migration.name} changed after it was applied (as {done['name']}); "
                        "add a new migration instead of editing an applied one"
                    )
                if done["needs_owner"] is not None:
                    await _finish(conn, migration)
                continue
            refused = await _apply(conn, migration)
            await conn.execute(
                f"insert into {LEDGER} (version, name, checksum, needs_owner) "
                "values ($1, $2, $3, $4)",
                migration.version,
                migration.name,
                migration.checksum,
                refused,
            )
        applied_now.append(migration.name)
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", LOCK_KEY)
        if await conn.fetchval("select to_regprocedure($1)", REASSERT) is not None:
            await conn.execute(f"select {REASSERT}")
    return applied_now


async def _apply(conn: Conn, migration: Migration) -> str | None:
    """Run ``migration``; None, or what refused its owner's part (then the rest ran)."""
    part = owner_part(migration.version, migration.sql)
    if part is None:
        await conn.execute(migration.sql)
        return None
    try:
        async with conn.transaction():  # a savepoint: a refusal undoes only this
            await conn.execute(migration.sql)
    except asyncpg.InsufficientPrivilegeError as err:
        await conn.execute(part.without_owner)
        return f"{err.args[0] if err.args else err} ({part.table})"
    return None


async def _finish(conn: Conn, migration: Migration) -> None:
    """Try a migration recorded as waiting for its owner again; clear the record once it
    runs whole, or once its owner's part was done by hand."""
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
    except asyncpg.InsufficientPrivilegeError:
        if not await done_by_hand(conn):
            return
    await conn.execute(
        f"update {LEDGER} set needs_owner = null where version = $1", migration.version
    )


async def waiting_for_owner(conn: Conn) -> list[Waiting]:
    """The migrations applied without their owner's part (nothing on a database never
    migrated, or migrated before the ledger said so)."""
    if await conn.fetchval("select to_regclass($1)", LEDGER) is None:
        return []
    has_column = await conn.fetchval(
        "select count(*) from pg_attribute where attrelid = $1::regclass "
        "and attname = 'needs_owner' and not attisdropped",
        LEDGER,
    )
    if not has_column:
        return []
    rows = await conn.fetch(
        f"select name, needs_owner from {LEDGER} where needs_owner is not null order by version"
    )
    return [Waiting(row["name"], row["needs_owner"]) for row in rows]
