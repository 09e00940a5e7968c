"""A shared "look again" flag that every wake-up source sets."""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    """Collapses any number of hints into one wake-up of the claim loop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._reasons: set[str] = set()
        self.news = asyncio.Event()
        """Set with every hint but a freed slot: news from outside that work may be
        waiting (the worker's dispatch lane waits on it; whoever waits clears it)."""

    def set(self, reason: str) -> None:
        self._reasons.add(reason)
        self._event.set()
        if reason != "slot":
            self.news.set()

    async def wait(self, seconds: float) -> frozenset[str]:
        """Wait up to ``seconds`` for a hint; return (and clear) the reasons."""
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), seconds)
        reasons = frozenset(self._reasons) or frozenset({"timer"})
        self._reasons.clear()
        self._event.clear()
        return reasons
