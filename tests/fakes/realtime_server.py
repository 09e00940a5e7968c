"""A local Supabase Realtime server: Phoenix channels over a websocket, fed by real changes.

It speaks what the official ``realtime`` client (2.34.1) speaks, so that client runs
against it unchanged: ``GET /realtime/v1/websocket?apikey=<key>&vsn=1.0.0``, Phoenix
v1 JSON objects ``{"topic", "event", "payload", "ref"}``. It follows these files of
supabase/realtime:

- ``lib/realtime_web/channels/user_socket.ex``: a bad or missing ``apikey`` is refused
  at the handshake with HTTP 401 ``{"error": ...}`` (``error_response/1``).
- ``lib/realtime_web/channels/realtime_channel.ex``: ``phx_join`` with
  ``config.postgres_changes`` is answered ``{"status": "ok", "response":
  {"postgres_changes": [binding + "id"]}}`` in the order asked
  (``add_id_to_postgres_changes``, ids from ``:erlang.phash2``; here a crc32);
  later a ``system`` message ``{"extension": "postgres_changes", "status": "ok",
  "message": "Subscribed to PostgreSQL", "channel": <sub topic>}``
  (``handle_info(:postgres_subscribe)``), or ``"status": "error"`` with the
  "Unable to subscribe to changes ..." text when the table is not in the publication
  (``lib/extensions/postgres_cdc_rls/subscriptions.ex``); a refused join is
  ``{"status": "error", "response": {"reason": ...}}``.
- ``lib/extensions/postgres_cdc_rls/message_dispatcher.ex`` and
  ``replication_poller.ex`` (``generate_record``): a change is event
  ``postgres_changes``, payload ``{"ids": [matching binding ids], "data": {"schema",
  "table", "commit_timestamp", "type", "columns", "errors", "record", "old_record"}}``.
  UPDATE's ``old_record`` holds only the primary key (no REPLICA IDENTITY FULL).
- Heartbeats: topic ``phoenix``, event ``heartbeat``, answered ``phx_reply`` ok.

- ``lib/extensions/postgres_cdc_rls`` with supabase/walrus's ``realtime.apply_rls``:
  a subscriber's role and claims come from its JWT (the join's ``access_token``, else
  the ``apikey``); for each change, a role without SELECT on the table gets the change
  with ``errors: ["Error 401: Unauthorized"]`` and no record, and with RLS on the table
  a role gets the change only if the row is visible to it under ``set role`` and
  ``request.jwt.claims`` (the service role bypasses RLS and gets every change).

Where the real server reads the WAL, this one installs a trigger on ``public.videos``
in the test database that NOTIFYs ``fake_realtime`` with the operation and the row
(after commit, as the WAL would have it); the server LISTENs and delivers each change in
order, checked per subscriber as above on a connection of its own. Faults: ``kill()``
(every socket cut, the port closed until ``start()``), ``drop_sockets()``,
``refuse_joins``, ``reply_delay``, ``send_error()``, and ``publication`` (the tables
that emit changes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import WSMsgType, web

NOTIFY_CHANNEL = "fake_realtime"
CAPTURE_SQL = f"""
create or replace function public.fake_realtime_capture() returns trigger
language plpgsql as $$
declare
    record jsonb := to_jsonb(new);
begin
    -- A NOTIFY payload holds under 8000 bytes; a bigger row is sent as its id alone.
    if octet_length(record::text) > 7800 then
        record := jsonb_build_object('id', new.id);
    end if;
    perform pg_notify('{NOTIFY_CHANNEL}', jsonb_build_object(
        'type', tg_op, 'record', record)::text);
    return null;
end
$$;
drop trigger if exists fake_realtime_capture on public.videos;
create trigger fake_realtime_capture after insert or update on public.videos
    for each row execute function public.fake_realtime_capture();
"""


@dataclass
class Joined:
    """One joined channel on one socket: its topic and its bindings with their ids, and
    the claims its changes are checked with (None: the service role, which sees all)."""

    topic: str
    bindings: list[dict[str, Any]]
    claims: dict[str, Any] | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims: dict[str, Any], secret: str) -> str:
    """An HS256 JWT, as Supabase Auth issues them."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def verified(token: str, secret: str) -> dict[str, Any] | None:
    """The claims of an HS256 JWT signed with ``secret``, or None."""
    try:
        head, body, mac = token.split(".")
        expected = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64(expected), mac):
            return None
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


@dataclass(eq=False)
class Connection:
    ws: web.WebSocketResponse
    request: web.Request
    channels: dict[str, Joined] = field(default_factory=dict)
    outbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    """Frames in the order they were made: one writer per socket keeps replies in order."""


def binding_id(binding: dict[str, Any]) -> int:
    """A stable, non-zero id per binding (the server uses ``:erlang.phash2(params)``)."""
    return zlib.crc32(json.dumps(binding, sort_keys=True).encode()) or 1


class FakeRealtime:
    """Realtime for one project; ``url`` is the project URL once started."""

    def __init__(
        self,
        dsn: str,
        *,
        service_key: str = "service-role-key",
        jwt_secret: str = "super-secret-jwt-token-with-at-least-32-characters",
    ) -> None:
        self.dsn = dsn
        self.service_key = service_key
        self.jwt_secret = jwt_secret
        self.anon_key = sign({"role": "anon"}, jwt_secret)
        """The project's anon key (a JWT of role anon, as Supabase's are)."""
        self.url = ""
        self.port = 0
        self.publication: set[tuple[str, str]] = {("public", "videos")}
        self.refuse_joins: str | None = None
        """A reason: every join is answered with an error carrying it."""
        self.reply_delay = 0.0
        """Seconds before a join is answered (beyond the client's timeout: TIMED_OUT)."""
        self.connects = 0
        self.joins = 0
        self.changes_sent = 0
        self._connections: set[Connection] = set()
        self._runner: web.AppRunner | None = None
        self._db: asyncpg.Connection | None = None
        self._rls_db: asyncpg.Connection | None = None
        self._changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()

    def token_for(self, sub: str, *, anonymous: bool = False) -> str:
        """A signed-in person's access token (Supabase's anonymous sign-ins included)."""
        claims = {"sub": sub, "role": "authenticated", "aud": "authenticated"}
        return sign({**claims, "is_anonymous": anonymous}, self.jwt_secret)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen (on the same port as before, after a kill) and follow the database."""
        self._db = await asyncpg.connect(self.dsn)
        self._rls_db = await asyncpg.connect(self.dsn)
        await self._db.execute(CAPTURE_SQL)
        await self._db.add_listener(NOTIFY_CHANNEL, self._on_change)
        self._spawn(self._dispatch())
        app = web.Application()
        app.router.add_get("/realtime/v1/websocket", self._socket)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def kill(self) -> None:
        """The server dies: every socket cut without a close frame, the port closed."""
        self.drop_sockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for db in (self._db, self._rls_db):
            if db is not None:
                await db.close()
        self._db = self._rls_db = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_sockets(self) -> None:
        """Cut every websocket at the TCP level (no close frame), as a proxy reset does."""
        for connection in list(self._connections):
            transport = connection.request.transport
            if transport is not None:
                transport.abort()
        self._connections.clear()

    def send_error(self) -> None:
        """``phx_error`` on every joined channel, as when a channel process crashes."""
        for connection in list(self._connections):
            for joined in connection.channels.values():
                self._push(connection, joined.topic, "phx_error", {}, None)

    @property
    def subscribers(self) -> int:
        return sum(len(c.channels) for c in self._connections)

    # ------------------------------------------------------------ the socket

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("apikey") not in (self.service_key, self.anon_key):
            # user_socket.ex: refused before the upgrade, with a JSON body.
            return web.json_response(
                {"error": "Failed to validate JWT signature"}
                if request.query.get("apikey")
                else {"error": "API key is missing"},
                status=401,
            )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connects += 1
        connection = Connection(ws, request)
        self._connections.add(connection)
        writer = asyncio.create_task(self._write(connection))
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                self._handle(connection, json.loads(message.data))
        finally:
            self._connections.discard(connection)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        return ws

    async def _write(self, connection: Connection) -> None:
        while True:
            frame = await connection.outbox.get()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await connection.ws.send_str(frame)

    def _handle(self, connection: Connection, message: dict[str, Any]) -> None:
        topic, event, ref = message["topic"], message["event"], message.get("ref")
        payload = message.get("payload") or {}
        if topic == "phoenix" and event == "heartbeat":
            self._reply(connection, topic, ref, "ok", {})
        elif event == "phx_join":
            self.joins += 1
            self._spawn(self._join(connection, topic, ref, payload))
        elif event == "phx_leave":
            connection.channels.pop(topic, None)
            self._reply(connection, topic, ref, "ok", {})
        elif event == "access_token":
            pass  # accepted; the fake does not expire tokens

    async def _join(
        self, connection: Connection, topic: str, ref: str | None, payload: dict[str, Any]
    ) -> None:
        if self.reply_delay:
            await asyncio.sleep(self.reply_delay)  # a fault: a slow server, on purpose
        if self.refuse_joins is not None:
            self._reply(connection, topic, ref, "error", {"reason": self.refuse_joins})
            return
        token = payload.get("access_token") or connection.request.query["apikey"]
        claims = None if token == self.service_key else verified(token, self.jwt_secret)
        if token != self.service_key and claims is None:
            self._reply(connection, topic, ref, "error", {"reason": "Invalid JWT"})
            return
        asked = payload.get("config", {}).get("postgres_changes") or []
        bindings = [{**b, "id": binding_id(b)} for b in asked]
        connection.channels[topic] = Joined(topic, bindings, claims)
        self._reply(connection, topic, ref, "ok", {"postgres_changes": bindings})
        if not bindings:
            return
        sub_topic = topic.removeprefix("realtime:")
        missing = [b for b in bindings if (b.get("schema"), b.get("table")) not in self.publication]
        if missing:
            shown = ", ".join(
                f"event: {b['event']}, schema: {b.get('schema')}, table: {b.get('table')}, "
                "filters: []"
                for b in missing
            )
            message = (
                "Unable to subscribe to changes with given parameters. Please check "
                f"Realtime is enabled for the given connect parameters: [{shown}]"
            )
            self._system(connection, topic, sub_topic, "error", message)
            connection.channels.pop(topic, None)
            return
        self._system(connection, topic, sub_topic, "ok", "Subscribed to PostgreSQL")

    # ------------------------------------------------------------ changes

    def _on_change(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str):
            self._changes.put_nowait(json.loads(payload))

    async def _dispatch(self) -> None:
        """Deliver changes one after another, in commit order."""
        while True:
            await self._deliver(await self._changes.get())

    async def _visible(self, claims: dict[str, Any], row_id: str) -> bool | None:
        """Whether the row is visible to a subscriber with ``claims`` (walrus's check);
        None when its role may not read the table at all (Error 401)."""
        assert self._rls_db is not None
        role = str(claims.get("role") or "anon")
        async with self._rls_db.transaction():
            allowed = await self._rls_db.fetchval(
                "select has_column_privilege($1, 'public.videos', 'id', 'SELECT')", role
            )
            if not allowed:
                return None
            await self._rls_db.execute("select set_config('role', $1, true)", role)
            await self._rls_db.execute(
                "select set_config('request.jwt.claims', $1, true)", json.dumps(claims)
            )
            seen: bool = await self._rls_db.fetchval(
                "select exists (select 1 from public.videos where id = $1::uuid)", row_id
            )
        return seen

    async def _deliver(self, change: dict[str, Any]) -> None:
        record: dict[str, Any] = change["record"]
        kind = change["type"]
        data: dict[str, Any] = {
            "schema": "public",
            "table": "videos",
            "commit_timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "type": kind,
            "errors": None,
            "columns": [{"name": name, "type": "text"} for name in record],
            "record": record,
        }
        if kind == "UPDATE":
            data["old_record"] = {"id": record["id"]}
        unauthorized = {
            key: data[key] for key in ("schema", "table", "commit_timestamp", "type")
        } | {"columns": [], "errors": ["Error 401: Unauthorized"]}
        for connection in list(self._connections):
            for joined in list(connection.channels.values()):
                ids = [
                    b["id"]
                    for b in joined.bindings
                    if (b.get("schema"), b.get("table")) == ("public", "videos")
                    and b["event"] in (kind, "*")
                ]
                if not ids:
                    continue
                sent = data
                if joined.claims is not None:
                    visible = await self._visible(joined.claims, record["id"])
                    if visible is False:
                        continue
                    sent = data if visible else unauthorized
                self.changes_sent += 1
                self._push(connection, joined.topic, "postgres_changes", {"ids": ids, "data": sent})

    # ------------------------------------------------------------ frames

    def _reply(
        self,
        connection: Connection,
        topic: str,
        ref: str | None,
        status: str,
        response: dict[str, Any],
    ) -> None:
        self._push(connection, topic, "phx_reply", {"status": status, "response": response}, ref)

    def _system(
        self, connection: Connection, topic: str, channel: str, status: str, message: str
    ) -> None:
        payload = {
            "extension": "postgres_changes",
            "status": status,
            "message": message,
            "channel": channel,
        }
        self._push(connection, topic, "system", payload)

    def _push(
        self,
        connection: Connection,
        topic: str,
        event: str,
        payload: dict[str, Any],
        ref: str | None = None,
    ) -> None:
        frame = json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref})
        connection.outbox.put_nowait(frame)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@contextlib.asynccontextmanager
async def started(dsn: str, **options: Any) -> Any:
    """A running fake Realtime on a free local port, following the database at ``dsn``."""
    fake = FakeRealtime(dsn, **options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.kill()
