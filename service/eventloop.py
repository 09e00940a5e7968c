"""The event loop every command runs on: uvloop when it is installed, else asyncio's.

Why: the worker is one event loop serving claims, polls and checkpoints for every row
at once, and most of its CPU per poll is the loop's own machinery (callbacks, socket
reads, timers). uvloop does that work in C, which shortens the wait of a new row
behind many polls. It is a dependency, so it is normally there; a platform without a
wheel (or a debugger that wants the pure-Python loop) still runs on asyncio's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop maker when uvloop is importable; None means asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_factory`` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
