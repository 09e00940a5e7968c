"""What the claim loop knows of a push source of wake-ups: a name, a way to run, a state.

The loop (``service.worker.daemon``) runs each source as a supervised side task and
reads its state for ``/readyz`` and ``sora_event_source_up``; it knows nothing else of
it. A new source (another database's notifications, a queue) is a module implementing
this Protocol plus one line in the wiring (``service.runtime``).
"""

from __future__ import annotations

from typing import Protocol

from service.wakeups.wakeup import Wakeup


class WakeupSource(Protocol):
    """Says "look again" when it hears of work; the claim query decides what to do."""

    name: str
    """Its label in ``/readyz``, ``sora_event_source_up`` and the logs."""

    async def run(self, wakeup: Wakeup) -> None:
        """Set ``wakeup`` on every hint until cancelled, reconnecting by itself (a source
        never gives up; the worker restarts one that dies of a bug). Set it on every
        (re)connect too: hints sent while it was away are never replayed."""

    def is_up(self) -> bool:
        """Whether hints flow right now (the sweep covers for a source that is down)."""
