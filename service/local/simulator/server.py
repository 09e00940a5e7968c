"""Run the simulator on a real socket: ``async with Simulator(config) as sim: sim.base_url``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from service.local.fake_host import FakeHost, made_with
from service.providers.registry import SimulatorSettings

from .app import create_app
from .config import SimulatorConfig
from .profiles import Profile
from .store import CreatedVideo, VideoStore

__all__ = ["Simulator", "stand_in"]


class Simulator(FakeHost):
    """Owns a config, the video store and the aiohttp app, and serves them over HTTP.

    Tests point ``openai.AsyncOpenAI(base_url=sim.base_url)`` at it and may change
    ``sim.config`` (e.g. ``failure_rules``) while it runs.
    """

    what = "the simulator"

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.store = VideoStore(self.config)
        self.app = create_app(self.store)
        super().__init__()

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
    def base_url(self) -> str:
        """``http://host:port/v1``, what the SDK takes as ``base_url``."""
        return f"{super().base_url}/v1"


def stand_in(
    settings: SimulatorSettings, data_dir: Path, config: SimulatorConfig | None
) -> Callable[[], Simulator]:
    """The simulator as SORA_PROVIDER=openai's stand-in: it plays the settings' profile
    unless ``config`` says otherwise, and keeps its jobs under the data directory, so
    that a replica taking its port over finds them."""
    given = config or SimulatorConfig(profile=settings.profile)
    return made_with(Simulator, replace(given, state_dir=data_dir / "simulator"))
