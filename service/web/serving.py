"""Serving an aiohttp app on a socket: the one way every server of ours starts (the
worker's HTTP server, and the local stand-ins), so it lives outside ``service.local``."""

from __future__ import annotations

from aiohttp import web


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Listen on ``host:port`` (0 picks a free port); return the runner and the bound port.

    A failed bind (port taken) cleans up and re-raises the OSError, so callers can try
    another port with the same app.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
