"""The periodic sweep: the guarantee of progress when every hint was lost.

The claim loop waits for a hint, but never longer than the moment the next active row
falls due (its retry time, its next poll, or the end of a dead owner's lease) and never
longer than the sweep interval. So a lost NOTIFY or a dropped websocket delays work by
at most one interval, and polls happen on time without any notification at all.
"""

from __future__ import annotations

from datetime import timedelta

from service.database.port import Repository
from service.wakeups.wakeup import Wakeup

MIN_WAIT = 0.01
LOCKED_ROW_WAIT = 0.5


async def wait_for_work(
    wakeup: Wakeup, repo: Repository, sweep_interval: float, *, claimed: int
) -> frozenset[str]:
    """Sleep until a hint, the next due row, or the sweep interval, whichever is first.

    A row can be due yet unclaimable (another session holds a row lock on it, e.g. an
    open transaction in an admin console): if the last claim got nothing, wait a
    little even for a row that is already due, instead of spinning on it.
    """
    due_in: timedelta | None = await repo.next_due_in()
    wait = sweep_interval
    if due_in is not None:
        due = due_in.total_seconds()
        stuck = due <= 0 and not claimed  # due already, yet the claim got nothing
        wait = min(wait, LOCKED_ROW_WAIT if stuck else max(due, MIN_WAIT))
    reasons = await wakeup.wait(wait)
    if reasons == {"timer"} and (due_in is None or due_in.total_seconds() > wait):
        return frozenset({"sweep"})
    return reasons
