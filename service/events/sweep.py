"""The periodic sweep: the guarantee of progress when every hint was lost.

The claim loop waits for a hint, but never longer than the moment the next active row
falls due (its retry time, its next poll, or the end of a dead owner's lease) and never
longer than the sweep interval. So a lost NOTIFY or a dropped websocket delays work by
at most one interval, and polls happen on time without any notification at all.
"""

from __future__ import annotations

from datetime import timedelta

from service.events.wakeup import Wakeup
from service.repository import Repository

MIN_WAIT = 0.01


async def wait_for_work(wakeup: Wakeup, repo: Repository, sweep_interval: float) -> frozenset[str]:
    """Sleep until a hint, the next due row, or the sweep interval, whichever is first."""
    due_in: timedelta | None = await repo.next_due_in()
    wait = sweep_interval
    if due_in is not None:
        wait = min(wait, max(due_in.total_seconds(), MIN_WAIT))
    reasons = await wakeup.wait(wait)
    if reasons == {"timer"} and (due_in is None or due_in.total_seconds() > wait):
        return frozenset({"sweep"})
    return reasons
