"""What every local stand-in for a provider's servers shares: an app on a real socket.

Each fake (``veo_server``, ``replicate_server``, the ``simulator``) builds its aiohttp
app and is served through ``service.web.serving.serve``, the project's one way to listen;
this class only keeps the runner, the bound port and the base URL an SDK is pointed
at, with the same ``start``/``stop`` the shared-server keeper (``sharing.SharedServer``)
expects.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

from aiohttp import web

from service.web.serving import serve

C = TypeVar("C")
H = TypeVar("H")


def made_with(host: Callable[[C], H], config: C) -> Callable[[], H]:
    """What makes ``host`` as a provider's stand-in (the ``stand_in`` each fake module
    has, named by ``providers.registry``): called again when a replica takes a dead
    one's port over, with the same ``config``, so a change made to it holds there too."""
    return lambda: host(config)


class FakeHost:
    """An aiohttp app served on ``host:port``; ``base_url`` is what the SDK gets."""

    app: web.Application
    what = "the fake"
    """How errors name it."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.what} is not running; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` (the SDKs add their own version prefixes); a wildcard
        address is reached through loopback."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0", "::") else self._host
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port``; port 0 picks a free port (see ``base_url``)."""
        if self._runner is not None:
            raise RuntimeError(f"{self.what} is already running")
        self._runner, self._port = await serve(self.app, host, port)
        self._host = host

    async def stop(self) -> None:
        """Close the listening socket and open connections; the state stays as it is."""
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner, self._port = None, None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
