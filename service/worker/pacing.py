"""The request rate every replica shares, as the steps meet it: a turn before each create
and poll, and a host's 429 holding every replica off (``service.database.limits`` keeps
the turns; ``service.core.rates`` says which limit a call falls under)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Protocol

import structlog

from service.core.events import Throttled
from service.core.rates import Call
from service.database.errors import RepositoryError
from service.database.limits import Turn
from service.providers.base import RateLimited

log = structlog.get_logger("service.worker.steps")  # the steps' log

RATE_LIMITED_PAUSE = timedelta(seconds=10)
"""How long every replica holds off after a 429 that did not say (no Retry-After)."""


class Pace(Protocol):
    """The request rate every replica shares (``service.database.limits``)."""

    async def take(self, provider: str, model: str, call: Call) -> Turn: ...

    async def hold_off(self, provider: str, model: str, call: Call, pause: timedelta) -> None: ...


class Pacing:
    """Turns for one worker's steps; without a ``Pace`` (tests of other things), none."""

    def __init__(self, pace: Pace | None) -> None:
        self.pace = pace

    async def turn(self, provider: str, model: str, call: Call) -> Throttled | None:
        """Wait for this replica's turn; one too far off to wait for in place is a
        ``Throttled`` (the row waits out of the worker, nothing sent)."""
        if self.pace is None:
            return None
        turn = await self.pace.take(provider, model, call)
        if not turn.granted:
            return Throttled(
                f"the {call} rate shared by every replica has no room yet (SORA_RATE_LIMITS)",
                turn.wait,
            )
        if turn.wait.total_seconds() > 0:
            await asyncio.sleep(turn.wait.total_seconds())  # the turn reserved for us
        return None

    async def rate_limited(
        self, provider: str, model: str | None, call: Call, err: RateLimited
    ) -> timedelta:
        """A 429: every replica holds off for what the host asked (or a short pause),
        which is returned for this row's own retry."""
        pause = err.retry_after or RATE_LIMITED_PAUSE
        if self.pace is not None:
            try:
                await self.pace.hold_off(provider, model or "", call, pause)
            except RepositoryError as said:
                log.warning("provider.hold_off_unrecorded", error=str(said))
        log.warning(
            "provider.rate_limited",
            provider=provider,
            call=call,
            pause_s=pause.total_seconds(),
            message="every replica holds off",
        )
        return pause
