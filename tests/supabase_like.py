"""A database set up the way Supabase sets one up, and the app's users coming in the way
PostgREST lets them in, for testing as an attacker would (tests/test_public_app.py).

Supabase's setup, reproduced on the embedded PostgreSQL:

- roles ``anon`` and ``authenticated`` (NOLOGIN NOINHERIT), ``service_role`` (BYPASSRLS)
  and ``authenticator``, the one that logs in (NOINHERIT, granted the three);
- ``auth.uid()`` reading the ``sub`` claim, as Supabase defines it;
- Supabase's default privileges: everything created in ``public`` later (tables,
  functions, sequences) is granted to anon, authenticated and service_role. Applied
  BEFORE ``migrate``, so every object the migrations create starts handed to the public
  exactly as on a real project;
- the ``supabase_realtime`` publication.

A request is what PostgREST makes of it: one transaction on an ``authenticator``
connection that first runs ``set_config('role', ..., true)`` and
``set_config('request.jwt.claims', ..., true)``, then the statement.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROLES = {
    "anon": "nologin noinherit",
    "authenticated": "nologin noinherit",
    "service_role": "nologin noinherit bypassrls",
    "authenticator": "login noinherit",
}
"""Supabase's roles (cluster-wide: made once per server)."""

SUPABASE_SETUP = """
grant anon, authenticated, service_role to authenticator;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;
create or replace function auth.uid() returns uuid language sql stable as $$
    select nullif(coalesce(current_setting('request.jwt.claim.sub', true),
        (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')), '')::uuid
$$;

grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public
    grant all on sequences to anon, authenticated, service_role;

create publication supabase_realtime;
"""


async def make_supabase_like(dsn: str) -> None:
    """Turn an empty database into one set up as Supabase sets one up (not migrated)."""
    conn = await asyncpg.connect(dsn)
    try:
        for role, attributes in ROLES.items():
            if await conn.fetchval("select to_regrole($1)", role) is None:
                with contextlib.suppress(asyncpg.DuplicateObjectError):
                    await conn.execute(f"create role {role} {attributes}")
        await conn.execute(SUPABASE_SETUP)
    finally:
        await conn.close()


def as_authenticator(dsn: str) -> str:
    """The same database, logged in as ``authenticator`` (PostgREST's login role)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"authenticator:@{host}"))


@dataclass(frozen=True)
class Person:
    """A signed-in user of the app (an anonymous sign-in is one too: role authenticated)."""

    sub: uuid.UUID = field(default_factory=uuid.uuid4)
    anonymous: bool = False

    @property
    def claims(self) -> dict[str, Any]:
        return {
            "sub": str(self.sub),
            "role": "authenticated",
            "aud": "authenticated",
            "is_anonymous": self.anonymous,
        }


ANON = None
"""Who holds only the app's anon key."""


class App:
    """PostgREST in front of the database: one ``authenticator`` connection, each request
    a transaction run as the caller (``Person``, or ``ANON``)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: str) -> App:
        return cls(await asyncpg.connect(as_authenticator(dsn)))

    async def close(self) -> None:
        await self.conn.close()

    @asynccontextmanager
    async def request(self, who: Person | None) -> AsyncIterator[asyncpg.Connection]:
        claims = {"role": "anon"} if who is None else who.claims
        async with self.conn.transaction():
            await self.conn.execute(
                "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
                claims["role"],
                json.dumps(claims),
            )
            yield self.conn

    async def fetch(self, who: Person | None, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.request(who) as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows

    async def fetchval(self, who: Person | None, query: str, *args: Any) -> Any:
        async with self.request(who) as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, who: Person | None, query: str, *args: Any) -> str:
        async with self.request(who) as conn:
            status: str = await conn.execute(query, *args)
        return status

    async def ask(self, who: Person | None, prompt: str = "a hug", **columns: Any) -> uuid.UUID:
        """What supabase-js's ``from('videos').insert({...}).select('id').single()`` runs."""
        names = ["prompt", *columns]
        values = ", ".join(f"${n + 1}" for n in range(len(names)))
        row_id: uuid.UUID = await self.fetchval(
            who,
            f"insert into public.videos ({', '.join(names)}) values ({values}) returning id",
            prompt,
            *columns.values(),
        )
        return row_id
