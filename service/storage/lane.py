"""A thread of its own for one file's blocking calls, so receiving and writing overlap.

An archive receives a video on the event loop and hashes and writes every byte of it.
With one thread hop per chunk, awaited before the next chunk is read, the network and
the disk take turns and each waits for the other. A ``Lane`` runs the calls in order on
one thread while the loop goes on receiving: ``push`` waits only when ``depth`` calls
are already queued, so memory stays at ``depth`` chunks whatever the video's size.

Errors go both ways. A failed call makes every call queued after it a no-op and is
raised by the next ``push`` or ``run`` (the receiver stops); a receiver that fails calls
``aclose``, which drops the queued calls and runs its last call (closing, removing a
partial file) after the one running now, so nothing touches the file afterwards.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

WRITE_AHEAD = 4
"""How many chunks a receiver may be ahead of its file (each a download's chunk,
about 1 MiB): enough to ride out a slow write or a burst of packets, small enough that
memory stays flat."""


class LaneClosed(Exception):
    """A call was dropped: an earlier one failed, or the lane was closed first."""


class Lane:
    """Calls run one after another on one thread, at most ``depth`` of them queued."""

    def __init__(self, depth: int) -> None:
        self._depth = depth
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sora-lane")
        self._queued: deque[asyncio.Future[Any]] = deque()
        self._closed = False
        """Set by ``aclose``: nothing more is queued, and what is queued does not run."""
        self._broken = False
        """Set on the thread by a failed call: the calls queued after it do not run."""

    async def push(self, call: Callable[..., object], *args: object) -> None:
        """Queue ``call(*args)`` behind the calls before it, waiting while ``depth`` are
        queued; raises the error of an earlier call once it is known."""
        while self._queued and (len(self._queued) >= self._depth or self._queued[0].done()):
            await self._queued.popleft()  # raises that call's error
        self._queued.append(self._submit(call, *args))

    async def run(self, call: Callable[..., T], *args: object) -> T:
        """``call(*args)`` once every call before it has run; its result, or the first
        error among them (then ``call`` does not run)."""
        done = self._submit(call, *args)
        self._queued.append(done)
        while self._queued:
            await self._queued.popleft()
        return done.result()

    async def aclose(self, last: Callable[[], object] | None = None) -> None:
        """Drop the calls still queued, run ``last`` after the one running now, and
        stop the thread. ``last`` runs even if the caller is cancelled meanwhile."""
        self._closed = True
        for dropped in self._queued:
            _forget(dropped)
        self._queued.clear()
        finished = asyncio.get_running_loop().run_in_executor(self._thread, last or _nothing)
        self._thread.shutdown(wait=False)  # the thread ends after ``last``, whatever happens here
        await asyncio.shield(finished)
        self._thread.shutdown(wait=True)  # nothing is left to run: returns at once

    def _submit(self, call: Callable[..., T], *args: object) -> asyncio.Future[T]:
        if self._closed:
            raise LaneClosed("the lane is closed")
        return asyncio.get_running_loop().run_in_executor(self._thread, self._guarded, call, args)

    def _guarded(self, call: Callable[..., T], args: tuple[object, ...]) -> T:
        """On the lane's thread: ``call``, unless a call before it failed."""
        if self._broken or self._closed:
            raise LaneClosed("dropped: an earlier call failed, or the lane was closed")
        try:
            return call(*args)
        except BaseException:
            self._broken = True
            raise


def _forget(call: asyncio.Future[Any]) -> None:
    """Cancel a queued call, or take the error of one that ended (so none is reported
    as never retrieved)."""
    if not call.cancel() and not call.cancelled():
        call.exception()


def _nothing() -> None:
    return None
