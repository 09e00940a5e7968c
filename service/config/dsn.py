"""``DATABASE_URL`` as an operator wrote it: what is wrong with it, and where it points.

Both say it without the URL itself, which holds a password. The mistakes caught here are
the ones a first deployment makes (issue 28): another scheme, a password holding ``@``,
``/``, ``?`` or ``#`` unescaped (the host then becomes part of the password, or the
password part of the host, and the worker waits for ever on "Name or service not
known"), a port that is not a number. asyncpg would answer those with a traceback from
its parser, or not at all.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

SCHEMES = ("postgresql", "postgres")
SHAPE = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"
ESCAPES = "percent-encode them in the password: @ as %40, / as %2F, ? as %3F, # as %23"


def problem(url: str) -> str | None:
    """What keeps ``url`` from being a PostgreSQL URL, said without its secrets; None if
    it is one."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return f"is not a URL: write it as {SHAPE}"
    if scheme.lower() not in SCHEMES:
        named = scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", scheme) else "another"
        return f"must start with postgresql:// (not {named}://): write it as {SHAPE}"
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    tail = rest[len(authority) :]
    if authority.count("@") > 1:
        return f"holds more than one '@' before the host: {ESCAPES}"
    if "@" in tail and "@" not in authority:
        return f"has its host after a '/', '?' or '#' (in the password?): {ESCAPES}"
    hosts = authority.rpartition("@")[2]
    for spec in hosts.split(",") if hosts else []:
        port = spec.rpartition("]")[2] if spec.startswith("[") else spec
        _, colon, number = port.partition(":")
        if colon and not number.isdigit():
            return f"has a port that is not a number (a password holding / ? or #?): {ESCAPES}"
    return None


def where(url: str) -> str:
    """``host:port/database`` (or the socket directory), for messages: never the user's
    password. Assumes ``problem(url)`` found nothing."""
    parts = urlsplit(url)
    database = parts.path.lstrip("/") or "postgres"
    socket = parse_qs(parts.query).get("host", [""])[0]
    hosts = parts.netloc.rpartition("@")[2]
    if socket.startswith("/") or not hosts:
        return f"the socket in {socket or 'the default directory'} (database {database})"
    port = "" if ":" in hosts.rpartition("]")[2] or "," in hosts else ":5432"
    return f"{hosts}{port}/{database}"
