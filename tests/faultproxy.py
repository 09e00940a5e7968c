"""A TCP proxy that misbehaves on command, for tests and the chaos harness.

Put it between a client and a server (PostgreSQL, the provider, object storage) and
tell it to fail the way networks fail::

    async with FaultProxy(("127.0.0.1", 5432)) as port:   # or FaultProxy("/tmp/.s.PGSQL.5432")
        proxy.cut_all()                    # RST every live connection now
        proxy.cut_randomly(0.05, rng)      # each chunk forwarded may be the connection's last
        proxy.delay(0.5)                   # every chunk waits this long
        proxy.blackhole()                  # accept, forward nothing (a partition) ...
        proxy.refuse()                     # ... or close new connections at once
        proxy.restore()                    # all faults off

Bytes are forwarded as read, in chunks of at most ``chunk_size``, so a cut lands
between two chunks of one query's answer or one download. A blackhole holds bytes back
rather than dropping them (as TCP retransmits across a healed partition), so a stream
that survives a blackhole is never corrupted. Counters (``accepted``, ``refused``,
``cut``, ``bytes_up``, ``bytes_down``, ``live``) say what happened.

``PostgresFaultProxy`` adds what only makes sense for PostgreSQL's protocol: ``deaf``
drops notifications (LISTEN through a transaction-mode pooler).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from typing import Literal
from urllib.parse import parse_qs, urlsplit

__all__ = ["FaultProxy", "PostgresFaultProxy", "postgres_upstream"]

Upstream = tuple[str, int] | str  # (host, port), or the path of a Unix socket


def postgres_upstream(server_url: str) -> Upstream:
    """Where a libpq-style URL points: (host, port), or the server's Unix socket file."""
    parts = urlsplit(server_url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = parts.port or int(query.get("port", ["5432"])[0])
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return host, port


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) where the socket is TCP; abort either way."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client's side, the server's side and their pumps."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.carried = 0
        self.cut_after: int | None = None  # bytes, when doomed by a per-connection cut
        self.pending = b""  # a partial message, for proxies that parse the stream
        self.closed = asyncio.Event()

    def cut(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                _reset(writer)
        self.closed.set()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 with switchable faults; see the module docstring."""

    def __init__(self, upstream: Upstream, *, chunk_size: int = 65536, name: str = "proxy") -> None:
        self.upstream = upstream
        self.chunk_size = chunk_size
        self.name = name
        # Counters.
        self.accepted = 0  # connections accepted (refused ones included)
        self.refused = 0  # closed at once by refuse()
        self.cut = 0  # connections this proxy cut (cut_all, cut_randomly)
        self.bytes_up = 0  # client -> server
        self.bytes_down = 0  # server -> client
        # Faults.
        self._flowing = asyncio.Event()  # cleared: blackhole (both directions)
        self._flowing.set()
        self._down_flowing = asyncio.Event()  # cleared: freeze (server -> client only)
        self._down_flowing.set()
        self._refusing = False
        self._delay = 0.0
        self._cut_probability = 0.0
        self._cut_per: Literal["chunk", "connection"] = "chunk"
        self._rng = random.Random()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ controls

    def cut_all(self) -> int:
        """Reset every live connection now (both sides); return how many were cut."""
        links = [link for link in self._links if not link.closed.is_set()]
        for link in links:
            link.cut()
        self.cut += len(links)
        return len(links)

    def cut_randomly(
        self,
        probability: float,
        rng: random.Random | None = None,
        *,
        per: Literal["chunk", "connection"] = "chunk",
    ) -> None:
        """Cut connections at random moments; ``probability`` 0 turns it off.

        ``per="chunk"``: each chunk forwarded (either way) is, with ``probability``, the
        last: the connection is reset before it is sent, which lands mid-query or
        mid-download. ``per="connection"``: each new connection is, with
        ``probability``, doomed to be reset after a random 1..16384 bytes.
        """
        self._cut_probability = probability
        self._cut_per = per
        if rng is not None:
            self._rng = rng

    def delay(self, seconds: float) -> None:
        """Hold every chunk this long before forwarding it (0: no delay)."""
        self._delay = seconds

    def blackhole(self) -> None:
        """Accept connections but forward nothing either way until ``restore()``."""
        self._flowing.clear()

    def freeze(self) -> None:
        """The server's bytes stop reaching clients (a half-dead path); ``thaw()`` ends it."""
        self._down_flowing.clear()

    def thaw(self) -> None:
        self._down_flowing.set()

    def refuse(self) -> None:
        """Reset every new connection as soon as it is accepted, until ``restore()``."""
        self._refusing = True

    def restore(self) -> None:
        """Every fault off: no blackhole, freeze, refusal, delay or random cuts."""
        self._refusing = False
        self._delay = 0.0
        self._cut_probability = 0.0
        self._flowing.set()
        self._down_flowing.set()

    @property
    def live(self) -> int:
        """Connections open right now."""
        return sum(1 for link in self._links if not link.closed.is_set())

    def counters(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "refused": self.refused,
            "cut": self.cut,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} is not running; call start() first")
        return self._port

    async def start(self) -> int:
        """Listen on 127.0.0.1 on a free port; return the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        self.restore()
        for link in list(self._links):
            link.cut()
        tasks = [task for link in self._links for task in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> int:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ plumbing

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.upstream, str):
            return await asyncio.open_unix_connection(self.upstream)
        host, port = self.upstream
        return await asyncio.open_connection(host, port)

    def downstream(self, data: bytes, link: _Link) -> bytes:
        """What reaches the client of ``data`` from the server (subclasses filter it)."""
        return data

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            self.refused += 1
            _reset(client_w)
            return
        link = _Link(client_w)
        self._links.add(link)
        try:
            if self._cut_per == "connection" and self._rng.random() < self._cut_probability:
                link.cut_after = self._rng.randint(1, 16384)
            await self._flowing.wait()  # a blackhole holds new connections too
            try:
                server_r, server_w = await self._open_upstream()
            except OSError:
                _reset(client_w)  # the server is down: so is the way to it
                return
            link.server = server_w
            if link.closed.is_set():  # cut while connecting
                _reset(server_w)
                return
            link.tasks = [
                asyncio.create_task(self._pump(link, client_r, server_w, up=True)),
                asyncio.create_task(self._pump(link, server_r, client_w, up=False)),
            ]
            closed = asyncio.create_task(link.closed.wait())
            await asyncio.wait([*link.tasks, closed], return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
        finally:
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            for writer in (link.client, link.server):
                if writer is not None:
                    writer.close()
            link.closed.set()
            self._links.discard(link)

    def _doomed(self, link: _Link, size: int) -> bool:
        if link.cut_after is not None:
            return link.carried + size >= link.cut_after
        if self._cut_probability and self._cut_per == "chunk":
            return self._rng.random() < self._cut_probability
        return False

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        try:
            while data := await reader.read(self.chunk_size):
                await self._flowing.wait()
                if not up:
                    await self._down_flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                if self._doomed(link, len(data)):
                    self.cut += 1
                    link.cut()
                    return
                link.carried += len(data)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                    data = self.downstream(data, link)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the other side went away: the link closes


class PostgresFaultProxy(FaultProxy):
    """A ``FaultProxy`` to PostgreSQL that can also go ``deaf`` to notifications.

    ``deaf``: every message but NotificationResponse reaches the client, as when LISTEN
    goes through a transaction-mode pooler. Only plain (``sslmode=disable``) protocol
    v3 is spoken, so the server's side is a stream of typed, length-prefixed messages.
    ``async with proxy as port`` returns the port to connect to.
    """

    def __init__(self, server_url: str, **options: object) -> None:
        super().__init__(postgres_upstream(server_url), **options)  # type: ignore[arg-type]
        self.deaf = False

    @property
    def connections(self) -> int:
        """Connections accepted so far (the name tests/test_daemon.py reads)."""
        return self.accepted

    def downstream(self, data: bytes, link: _Link) -> bytes:
        pending = link.pending + data
        out = bytearray()
        while len(pending) >= 5:
            end = 1 + int.from_bytes(pending[1:5], "big")
            if len(pending) < end:
                break
            message, pending = pending[:end], pending[end:]
            if not (self.deaf and message[:1] == b"A"):  # A: NotificationResponse
                out += message
        link.pending = pending
        return bytes(out)
