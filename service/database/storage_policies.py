"""The policies on ``storage.objects`` that keep the public out of the worker's buckets
(sql/0005), and what happens where the worker may not manage them.

On hosted Supabase ``storage.objects`` belongs to ``supabase_storage_admin``; ``postgres``
may create and drop its policies only through the grant Supabase configures
(``supautils.policy_grants``). Without it every policy statement answers "must be owner
of relation objects", and sql/0005, one block, would stop ``migrate`` for good. Its text
may not change (the runner checks checksums), so the runner applies what of it needs no
owner (the buckets) and records the rest as waiting for the owner (``OWNER_PARTS``); it
finishes it by itself once it can, or once someone did it by hand. ``doctor`` reads the
state here and says what to run in the dashboard.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn = asyncpg.Connection | PoolConnectionProxy

BUCKETS = ("hug-videos", "hug-images")
"""The buckets sql/0005 creates and guards (the defaults of SORA_*_BUCKET)."""
GUARD_NAMES = (
    "sora_worker_no_public_insert",
    "sora_worker_no_public_update",
    "sora_worker_no_public_delete",
)

PUBLIC_WRITE_POLICIES = """
select policyname, cmd
from pg_policies
where schemaname = 'storage' and tablename = 'objects' and permissive = 'PERMISSIVE'
  and cmd in ('INSERT', 'UPDATE', 'DELETE', 'ALL')
  and roles && array['public', 'anon', 'authenticated']::name[]
  and ((coalesce(qual, '') || ' ' || coalesce(with_check, '')) ~ $1
       or (coalesce(qual, '') || ' ' || coalesce(with_check, '')) !~ 'bucket_id')
order by policyname
"""
"""Policies that let the public write in the buckets (the test sql/0005 applies)."""

GUARDS = """
select count(*) from pg_policies
where schemaname = 'storage' and tablename = 'objects' and permissive = 'RESTRICTIVE'
  and policyname = any($1::name[])
"""

WHO_MANAGES = """
select pg_get_userbyid(c.relowner) as owner,
       pg_has_role(current_user, c.relowner, 'USAGE') as owns,
       (select rolsuper from pg_roles where rolname = current_user) as superuser,
       current_user as me,
       current_setting('supautils.policy_grants', true) as grants
from pg_class c where c.oid = 'storage.objects'::regclass
"""


@dataclass(frozen=True)
class PolicyState:
    """Who may write in the buckets, and whether this connection could change it."""

    offending: tuple[tuple[str, str], ...]
    """(policy name, command) of each policy that lets the public write in a bucket."""
    guards: int
    """How many of sora-worker's three restrictive guards exist."""
    owner: str
    """The owner of storage.objects."""
    me: str
    may_manage: bool
    """Whether the connecting role may create and drop policies on storage.objects."""

    @property
    def guarded(self) -> bool:
        return self.guards == len(GUARD_NAMES)

    @property
    def who(self) -> str:
        """Why this role may or may not manage the policies, in a clause."""
        if self.may_manage:
            return f"{self.me} may manage policies on storage.objects"
        return (
            f"{self.me} may not manage policies on storage.objects: {self.owner} owns it and "
            "supautils.policy_grants grants it none"
        )


async def policy_state(conn: Conn, buckets: tuple[str, ...] = BUCKETS) -> PolicyState | None:
    """The state of ``buckets``' policies; None on a database without Supabase Storage."""
    if await conn.fetchval("select to_regclass('storage.objects')") is None:
        return None
    names = "|".join(f"'{bucket}'" for bucket in buckets)
    offending = await conn.fetch(PUBLIC_WRITE_POLICIES, f"({names})")
    guards = await conn.fetchval(GUARDS, list(GUARD_NAMES))
    who = await conn.fetchrow(WHO_MANAGES)
    assert who is not None, "storage.objects exists"
    granted = _policy_grants(who["grants"]).get(who["me"], ())
    return PolicyState(
        offending=tuple((r["policyname"], r["cmd"]) for r in offending),
        guards=guards,
        owner=who["owner"],
        me=who["me"],
        may_manage=bool(who["owns"] or who["superuser"] or "storage.objects" in granted),
    )


def _policy_grants(setting: str | None) -> dict[str, list[str]]:
    """``supautils.policy_grants`` ({"postgres": ["storage.objects", ...]}), or nothing."""
    try:
        grants = json.loads(setting or "{}")
    except ValueError:
        return {}
    return grants if isinstance(grants, dict) else {}


def buckets_of_0005(sql: str) -> str:
    """What of sql/0005 needs no owner of storage.objects: its insert of the buckets,
    read from the file itself (whose text never changes: the runner checks it)."""
    found = re.findall(r"^\s*insert into storage\.buckets\b.*?;$", sql, re.S | re.M)
    if len(found) != 1:
        raise ValueError("sql/0005 holds no single insert into storage.buckets")
    return str(found[0])


async def done_by_hand(conn: Conn) -> bool:
    """Whether someone who may has done 0005's policy part (no public write policy left
    in the buckets, the three guards in place)."""
    state = await policy_state(conn)
    return state is not None and state.guarded and not state.offending


@dataclass(frozen=True)
class OwnerPart:
    """A migration with statements that only the owner of ``table`` (or a role granted
    its policies) may run."""

    table: str
    without_owner: str
    """What of the migration to run when its owner's part is refused."""


def owner_part(version: str, sql: str) -> OwnerPart | None:
    """The owner's part of migration ``version`` (whose text is ``sql``), if it has one."""
    if version == "0005":
        return OwnerPart("storage.objects", buckets_of_0005(sql))
    return None
