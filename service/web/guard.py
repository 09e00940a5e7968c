"""The worker's HTTP server, bounded: no visitor can hold it, or the worker, hostage.

aiohttp has no deadline for a request's headers and no cap on connections: 500
unfinished requests stayed open for minutes, and with the worker's file descriptors
spent its own outbound connects (provider, storage, database) failed with "Too many
open files". So each connection of the worker's server passes through ``Guarded``, a
thin protocol around aiohttp's own (``runner.server`` is aiohttp's public protocol
factory):

- at most ``max_connections`` at once; the next is closed at once (and said, once per
  burst, in the log);
- the request's headers must arrive within ``header_timeout`` of connecting;
- a connection lives at most ``lifetime``: each serves one request (the server answers
  ``Connection: close``), and the slowest legitimate one, a webhook body, has its own
  shorter bound (``webhooks.BODY_TIMEOUT``).

Scrapes, probes and webhooks are one short request each, so none of this costs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

log = structlog.get_logger("service.web.guard")

END_OF_HEADERS = b"\r\n\r\n"


@dataclass(frozen=True)
class Limits:
    max_connections: int = 256
    header_timeout: float = 10.0
    lifetime: float = 60.0


class _Census:
    """Connections open on one server, and whether a refusal was said lately."""

    def __init__(self) -> None:
        self.open = 0
        self.refusing = False


class Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, inside the bounds of ``Limits``."""

    def __init__(self, inner: asyncio.Protocol, limits: Limits, census: _Census) -> None:
        self._inner = inner
        self._limits = limits
        self._census = census
        self._counted = False
        self._tail = b""
        self._timers: list[asyncio.TimerHandle] = []
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport), "a TCP server's transports"
        census = self._census
        if census.open >= self._limits.max_connections:
            if not census.refusing:
                census.refusing = True
                log.warning("http.connections_refused", limit=self._limits.max_connections)
            transport.abort()
            return
        census.open += 1
        census.refusing = False
        self._counted = True
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._limits.header_timeout, transport.abort)
        self._timers = [self._header_timer, loop.call_later(self._limits.lifetime, transport.abort)]
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is not None:
            seen = self._tail + data
            if END_OF_HEADERS in seen:
                self._header_timer.cancel()
                self._header_timer = None
            else:
                self._tail = seen[-(len(END_OF_HEADERS) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._counted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self._census.open -= 1
        for timer in self._timers:
            timer.cancel()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


@web.middleware
async def one_request_per_connection(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``Connection: close`` on every answer, so a connection's deadlines cover its one
    request and a kept-alive connection cannot idle through them."""
    response = await handler(request)
    response.force_close()
    return response


class GuardedServer:
    """``app`` served on ``host:port`` within ``limits``; ``port`` is the bound one."""

    def __init__(self, app: web.Application, host: str, port: int, limits: Limits) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        protocol_factory = runner.server
        assert protocol_factory is not None, "set up above"
        census = _Census()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: Guarded(protocol_factory(), self.limits, census), self.host, self.port
            )
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def listen(server: GuardedServer, what: str, fix: str) -> None:
    """Start ``server``; a failed bind says which server could not listen where, and
    ``fix`` (the setting to change), in one line."""
    try:
        await server.start()
    except OSError as err:
        raise OSError(
            f"{what} cannot listen on {server.host}:{server.port} ({err.strerror or err}): {fix}"
        ) from err
