"""Local stand-in servers (simulator, storage) that replicas on one machine share.

With embedded defaults every worker would start its own simulator and storage server
on fixed ports, so a second replica could not start, or would poll a simulator that
never heard of the first one's jobs. Instead, one process hosts each server and the
others use it: they recognise a sibling by the instance id of the data directory,
which every response carries in a header. If the host dies, a sharer notices within
seconds and takes over on the same port; the simulator reloads its jobs from the data
directory, so nothing in flight is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import httpx
import structlog
from aiohttp import web

INSTANCE_HEADER = "X-Sora-Worker-Instance"
KEEPER_INTERVAL = 2.0
OPEN_TRIES = 20
OPEN_RETRY_DELAY = 0.25

log = structlog.get_logger("service.local.sharing")


class LocalServer(Protocol):
    app: web.Application

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=LocalServer)


def instance_id(data_dir: Path) -> str:
    """A stable id for this data directory (created on first use)."""
    path = data_dir / "instance-id"
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError), path.open("x") as out:
            out.write(uuid.uuid4().hex)
    return path.read_text().strip()


async def probe(url: str) -> str | None:
    """The instance id a server at ``url`` answers with; None if nothing answers."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return None
    return str(response.headers.get(INSTANCE_HEADER, ""))


class PortTaken(OSError):
    """The port is held by something that is not a sibling of this data directory."""


class SharedServer(Generic[S]):
    """Hosts a local server, or shares a sibling's; keeps one alive on the port."""

    def __init__(
        self,
        what: str,
        make: Callable[[], S],
        *,
        identity: str,
        host: str,
        port: int,
        port_setting: str,
        suffix: str = "",
    ) -> None:
        self.what = what
        self.make = make
        self.identity = identity
        self.host = host
        self.port = port
        self.port_setting = port_setting
        """The environment variable of the port, named when the port is taken."""
        self.suffix = suffix
        self.hosted: S | None = None
        self._keeper: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}{self.suffix}"

    async def open(self, *, flexible: bool) -> None:
        """Host on the configured port, share a sibling's, or (if flexible) move."""
        for _ in range(OPEN_TRIES):
            if await self._try_host(self.port):
                return
            answer = await probe(self.base_url)
            if answer == self.identity:
                log.info(f"{self.what}.shared", url=self.base_url)
                self._keeper = asyncio.create_task(self._keep())
                return
            if answer is not None:
                break  # a stranger answers: no point waiting
            # Bound but silent: a sibling starting up or dying. Look again shortly.
            await asyncio.sleep(OPEN_RETRY_DELAY)
        if not flexible:
            raise PortTaken(
                errno.EADDRINUSE,
                f"port {self.port} for the local {self.what} is taken by another program; "
                f"free it or set {self.port_setting}",
            )
        log.warning(f"{self.what}.port_taken", port=self.port, using="a free port")
        if not await self._try_host(0):
            raise PortTaken(errno.EADDRINUSE, f"no free port for the local {self.what}")

    async def _try_host(self, port: int) -> bool:
        server = self.make()
        _stamp(server.app, self.identity)
        try:
            await server.start(host=self.host, port=port)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise
        self.hosted = server
        self.port = _bound_port(server, port)
        return True

    async def _keep(self) -> None:
        """While sharing: if the host goes away, take the port over."""
        while self.hosted is None:
            await asyncio.sleep(KEEPER_INTERVAL)
            if await probe(self.base_url) is None and await self._try_host(self.port):
                log.warning(f"{self.what}.took_over", url=self.base_url)

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self.hosted is not None:
            await self.hosted.stop()


def _stamp(app: web.Application, identity: str) -> None:
    async def add_header(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[INSTANCE_HEADER] = identity

    app.on_response_prepare.append(add_header)


def _bound_port(server: LocalServer, requested: int) -> int:
    port = getattr(server, "port", None)
    return int(port) if isinstance(port, int) and port else requested
