"""Run the simulator on a real socket: ``async with Simulator(config) as sim: sim.base_url``."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from service.serving import serve

from .app import create_app
from .config import SimulatorConfig
from .profiles import Profile
from .store import CreatedVideo, VideoStore

__all__ = ["Simulator"]


class Simulator:
    """Owns a config, the video store and the aiohttp app, and serves them over HTTP.

    Tests point ``openai.AsyncOpenAI(base_url=sim.base_url)`` at it and may change
    ``sim.config`` (e.g. ``failure_rules``) while it runs.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.store = VideoStore(self.config)
        self.app = create_app(self.store)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._port: int | None = None

    @property
    def created(self) -> list[CreatedVideo]:
        """Every accepted create request, in order (this process only), with the ids
        the host handed out."""
        host = Profile(self.config.profile)
        return [
            created._replace(video_id=host.public_id(created.video_id, created.model))
            for created in self.store.created
        ]

    def reference_for(self, video_id: str) -> bytes | None:
        """The image uploaded as ``input_reference`` for ``video_id``, if any."""
        return self.store.reference_for(Profile(self.config.profile).known_id(video_id))

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful after ``start(port=0)``)."""
        if self._port is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, what the SDK takes as ``base_url``."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port``; port 0 picks a free port (see ``base_url``)."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        self._runner, self._port = await serve(self.app, host, port)
        reachable = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # wildcards
        if ":" in reachable:  # an IPv6 literal
            reachable = f"[{reachable}]"
        self._base_url = f"http://{reachable}:{self._port}/v1"

    async def stop(self) -> None:
        """Close the listening socket and open connections; the store stays as it is."""
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner, self._base_url, self._port = None, None, None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
