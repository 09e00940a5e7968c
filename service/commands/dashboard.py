"""``sora-worker dashboard``: serve the dashboard until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from service.config import Settings
from service.dashboard.access import Unprotected
from service.dashboard.app import Dashboard
from service.runtime import create_pool, database_url, patiently
from service.signals import until_signalled

POOL_SIZE = 4
"""Connections the dashboard reads and acts through (LISTEN has its own)."""


async def run_dashboard(settings: Settings) -> int:
    """Serve until a signal; exit 2 if the settings would expose it without a token.
    A database that is not up yet is waited for, as ``run`` does."""
    dsn = await database_url(settings)
    pool = await patiently(lambda: create_pool(settings, dsn, POOL_SIZE), dsn)
    try:
        async with Dashboard(settings, pool, dsn) as dashboard:
            print(f"sora-worker: the dashboard is at {dashboard.url}", file=sys.stderr)
            await until_signalled()
    except Unprotected as err:
        print(f"sora-worker: {err}", file=sys.stderr)
        return 2
    finally:
        await pool.close()
    return 0
