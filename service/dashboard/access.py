"""Who may use the dashboard, and what a page may do once loaded.

- **Where it listens.** Loopback by default. Any other address needs a token
  (``SORA_DASHBOARD_TOKEN``): ``Access`` refuses to exist without one
  (``Unprotected``), so no path starts an open dashboard on a network.
- **The token.** Every request carries it when one is set: once as ``?token=...``
  (answered with a cookie and a redirect to the same address without it, so it stays
  out of the history and of any Referer), then as that cookie, or as
  ``Authorization: Bearer ...`` (a script, or a reverse proxy that adds it after its
  own sign-in). Compared in constant time. Without it: 401.
- **DNS rebinding.** Without a token the dashboard answers only requests addressed to
  a loopback name (``Host: localhost``, ``127.0.0.1``, ``[::1]``) or to the host of
  ``SORA_DASHBOARD_ORIGIN``: a web page whose own name was pointed at 127.0.0.1 gets 421.
- **Actions are POSTs, guarded three ways**: a per-session CSRF token in a hidden field
  (an HMAC of the session cookie with a key made at start), an ``Origin`` that is the
  dashboard's own, and ``SameSite=Strict`` cookies.
- **Headers on every answer**: a Content-Security-Policy that runs only the
  dashboard's own script (no inline script, no inline style), no framing, no referrer
  to other sites, no MIME sniffing.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from hashlib import sha256
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN_COOKIE = "sora_dashboard_token"
SESSION_COOKIE = "sora_dashboard_session"
CSRF_FIELD = "csrf"
SESSION = web.RequestKey("session", str)
"""The request's session id (from its cookie, or made for it)."""
CSRF = web.RequestKey("csrf", str)
"""The session's CSRF token, for the forms of the page being rendered."""
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        # Posters and videos live in the object store (another origin): http(s) only.
        "img-src 'self' http: https:",
        "media-src http: https:",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends "Origin: null" with the page's own
    # forms, and the Origin check could not tell them from a forgery.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Unprotected(ValueError):
    """A dashboard would listen off loopback without a token."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, as in SORA_DASHBOARD_HOST) is loopback."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other name may resolve anywhere


def host_of(netloc: str) -> str:
    """``example.com:8092`` -> ``example.com``; ``[::1]:8092`` -> ``::1``."""
    return (urlsplit("//" + netloc).hostname or "").lower()


@dataclass(frozen=True)
class Flash:
    """What the last action said, shown once on the next page of the same session."""

    ok: bool
    line: str


class Access:
    """The dashboard's middleware and its sessions; see the module docstring."""

    def __init__(self, listen_host: str, token: str | None, origin: str | None) -> None:
        if token is None and not is_loopback(listen_host):
            raise Unprotected(
                f"the dashboard would listen on {listen_host} without a token: set "
                "SORA_DASHBOARD_TOKEN (a long random string), or keep "
                "SORA_DASHBOARD_HOST=127.0.0.1 behind a reverse proxy that does the sign-in"
            )
        self.token = token
        self.origin = origin
        self.secure_cookies = origin is not None and origin.startswith("https://")
        self._key = secrets.token_bytes(32)
        self._flashes: OrderedDict[str, Flash] = OrderedDict()

    # ------------------------------------------------------------ sessions

    def csrf_for(self, session: str) -> str:
        """The CSRF token of a session: valid only with its own session cookie, and only
        until the dashboard restarts (a new key)."""
        return hmac.new(self._key, session.encode(), sha256).hexdigest()

    def flash(self, session: str, note: Flash) -> None:
        self._flashes[session] = note
        while len(self._flashes) > 1000:  # bounded: forgotten sessions drop out
            self._flashes.popitem(last=False)

    def take_flash(self, session: str) -> Flash | None:
        return self._flashes.pop(session, None)

    # ------------------------------------------------------------ the middleware

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is None and not self._addressed_to_us(request):
            return refusal(421, "this dashboard answers only requests addressed to it")
        if self.token is not None:
            login = request.query.get("token")
            if login is not None and request.method == "GET":
                return self._login(request, login)
            if not self._authorised(request):
                return refusal(
                    401,
                    "this dashboard needs its token: open it once as /?token=... "
                    "(SORA_DASHBOARD_TOKEN), or send Authorization: Bearer ...",
                )
        session = request.cookies.get(SESSION_COOKIE, "")
        fresh = not _looks_like_session(session)
        if fresh:
            session = secrets.token_urlsafe(32)
        request[SESSION] = session
        request[CSRF] = self.csrf_for(session)
        if request.method == "POST":
            problem = await self._forged(request, fresh)
            if problem is not None:
                return refusal(403, problem)
        response = await handler(request)
        if fresh and not response.prepared:
            self._set_cookie(response, SESSION_COOKIE, session)
        return response

    def _addressed_to_us(self, request: web.Request) -> bool:
        host = host_of(request.host)
        if is_loopback(host):
            return True
        return self.origin is not None and host == host_of(urlsplit(self.origin).netloc)

    def _authorised(self, request: web.Request) -> bool:
        assert self.token is not None
        offered = request.cookies.get(TOKEN_COOKIE)
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            offered = header.removeprefix("Bearer ")
        return offered is not None and _same(offered, self.token)

    def _login(self, request: web.Request, offered: str) -> web.StreamResponse:
        assert self.token is not None
        if not _same(offered, self.token):
            return refusal(401, "that is not this dashboard's token")
        query = {k: v for k, v in request.query.items() if k != "token"}
        target = request.rel_url.with_query(query)
        response = see_other(str(target))
        self._set_cookie(response, TOKEN_COOKIE, self.token)
        return response

    async def _forged(self, request: web.Request, fresh_session: bool) -> str | None:
        """Why a POST is refused, or None: same origin, and the session's CSRF token."""
        origin = request.headers.get("Origin")
        if origin is None or not self._own_origin(request, origin):
            return "an action must come from the dashboard's own page (Origin)"
        form = await request.post()
        offered = form.get(CSRF_FIELD)
        if fresh_session or not isinstance(offered, str):
            return "this form has expired: reload the page and try again"
        if not _same(offered, request[CSRF]):
            return "this form has expired: reload the page and try again"
        return None

    def _own_origin(self, request: web.Request, origin: str) -> bool:
        if self.origin is not None:
            return origin.rstrip("/") == self.origin
        return urlsplit(origin).netloc.lower() == request.host.lower()

    def _set_cookie(self, response: web.StreamResponse, name: str, value: str) -> None:
        response.set_cookie(
            name, value, path="/", httponly=True, samesite="Strict", secure=self.secure_cookies
        )


async def secure_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: on every answer, the streamed ones and errors included."""
    response.headers.update(HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")


def see_other(location: str) -> web.Response:
    """A 303 to ``location`` (returned, not raised: the middleware sets cookies on it)."""
    return web.Response(status=303, headers={"Location": location})


def refusal(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=f"{status}: {text}\n", content_type="text/plain")


def _same(offered: str, expected: str) -> bool:
    return hmac.compare_digest(offered.encode(), expected.encode())


def _looks_like_session(value: str) -> bool:
    return 32 <= len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum()
