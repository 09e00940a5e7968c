"""Waiting for SIGINT/SIGTERM through the event loop.

Handlers installed with ``add_signal_handler`` work even where SIGINT is ignored (a
process started in the background by a non-interactive shell), and let the caller
finish cleanly (print its result, exit 0) instead of dying mid-way.
"""

from __future__ import annotations

import asyncio
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def until_signalled() -> None:
    """Return when SIGINT or SIGTERM arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
