"""Whose webhooks are seen to arrive, and so how often their rows need polling.

The steps ask it when they schedule a poll; the webhook receiver (``service.web``)
tells it each time a verified delivery arrives. Polling stays the safety net: once a
provider's deliveries stop for ``trust_for``, its rows are polled at the usual pace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta


class WebhookHealth:
    """Which providers' webhooks are seen to arrive, and so how often to poll their rows."""

    def __init__(
        self,
        stretched: timedelta,
        *,
        trust_for: timedelta = timedelta(hours=1),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stretched = stretched
        self.trust_for = trust_for
        self._clock = clock
        self._seen: dict[str, float] = {}

    def seen(self, provider: str) -> None:
        """A verified delivery from ``provider`` arrived just now."""
        self._seen[provider] = self._clock()

    def working(self, provider: str) -> bool:
        at = self._seen.get(provider)
        return at is not None and self._clock() - at <= self.trust_for.total_seconds()

    def poll_interval(self, provider: str) -> timedelta | None:
        """The stretched interval for a provider whose webhooks work; None: the usual one."""
        return self.stretched if self.working(provider) else None
