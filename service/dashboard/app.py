"""The dashboard's web app: its routes, on the project's bounded aiohttp server.

Routes:

- ``GET /``: the queue at a glance and the newest rows (live through ``/events``);
- ``GET /rows/{id}``: one row, its history, and the operator's verbs as buttons;
- ``POST /rows/{id}/{retry|cancel|adopt|rearchive}``: the verb, through the same
  function the CLI calls (``service.operations``), then back to the row's page, which
  says what happened;
- ``GET /events``: server-sent events for the live page (``service.dashboard.live``);
- ``GET /static/...``: its one script and one stylesheet.

Who may use it and what a page may do: ``service.dashboard.access``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from aiohttp import web

from service import operations
from service.config import Settings
from service.dashboard.access import CSRF, SESSION, Access, Flash, secure_headers, see_other
from service.dashboard.live import STREAM_SECONDS, Feed
from service.dashboard.pages import Pages
from service.database.dashboard import DashboardReads
from service.database.errors import RepositoryError
from service.database.operator import Operator
from service.operations import Outcome
from service.web.guard import GuardedServer, Limits, listen, one_request_per_connection

log = structlog.get_logger("service.dashboard")

STATIC = Path(__file__).parent / "static"
NEWEST = 48
"""Rows on the front page (and in each live snapshot)."""
MAX_FORM = 16 * 1024
VERBS = ("retry", "cancel", "adopt", "rearchive")


class Dashboard:
    """The dashboard on ``settings.dashboard``'s address; ``async with`` it to serve.
    ``port`` is the bound one. ``dsn`` feeds LISTEN (None: refresh by timer alone)."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, dsn: str | None, *, newest: int = NEWEST
    ) -> None:
        config = settings.dashboard
        token = config.token.get_secret_value() if config.token else None
        self.settings = settings
        self.access = Access(config.host, token, config.origin)
        self.pages = Pages()
        self.reads = DashboardReads(pool)
        self.operator = Operator(pool)
        self.newest = newest
        self.feed = Feed(
            self.reads,
            self.pages,
            dsn=dsn,
            refresh=config.refresh.total_seconds(),
            limit=newest,
        )
        app = web.Application(
            client_max_size=MAX_FORM,
            middlewares=[one_request_per_connection, self.access.middleware],
        )
        app.on_response_prepare.append(secure_headers)
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/rows/{id}", self._row),
                web.post("/rows/{id}/{verb}", self._act),
                web.get("/events", self.feed.events),
                web.static("/static", STATIC, append_version=False),
            ]
        )
        # An event stream lives STREAM_SECONDS; every other connection far less.
        limits = Limits(max_connections=128, header_timeout=10.0, lifetime=STREAM_SECONDS + 30)
        self.server = GuardedServer(app, config.host, config.port, limits)
        self._feeding: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        host = self.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{f'[{shown}]' if ':' in shown else shown}:{self.port}/"

    async def __aenter__(self) -> Dashboard:
        fix = "set SORA_DASHBOARD_PORT to a free port (0 takes any)"
        await listen(self.server, "the dashboard", fix)
        self._feeding = asyncio.create_task(self.feed.run(), name="dashboard-feed")
        log.info("dashboard.listening", url=self.url, token=self.access.token is not None)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.feed.close()
        if self._feeding is not None:
            self._feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeding
        await self.server.stop()

    # ------------------------------------------------------------ pages

    def _page(
        self, request: web.Request, name: str, status: int = 200, **context: Any
    ) -> web.Response:
        context.setdefault("database_ok", True)
        html = self.pages.render(name, {"csrf": request[CSRF], **context})
        return web.Response(status=status, text=html, content_type="text/html")

    async def _index(self, request: web.Request) -> web.Response:
        try:
            overview, rows = await self.reads.queue(self.newest)
        except RepositoryError as err:
            log.warning("dashboard.database_unavailable", error=str(err))
            return self._page(request, "index.html", database_ok=False, overview=None, rows=[])
        return self._page(request, "index.html", overview=overview, rows=rows)

    async def _row(self, request: web.Request) -> web.Response:
        row_id = _row_id(request)
        try:
            found = None if row_id is None else await self.reads.row(row_id)
        except RepositoryError as err:
            log.warning("dashboard.database_unavailable", error=str(err))
            return self._problem(request, 503, "The database is unavailable; try again shortly.")
        if found is None:
            return self._problem(request, 404, "No such row.")
        row, abandoned = found
        flash = self.access.take_flash(request[SESSION])
        return self._page(request, "row.html", row=row, abandoned=abandoned, flash=flash)

    def _problem(self, request: web.Request, status: int, text: str) -> web.Response:
        return self._page(request, "problem.html", status=status, problem=text)

    # ------------------------------------------------------------ actions

    async def _act(self, request: web.Request) -> web.Response:
        """A verb from a row's page (CSRF and Origin already checked by ``Access``)."""
        row_id, verb = _row_id(request), request.match_info["verb"]
        if row_id is None or verb not in VERBS:
            return self._problem(request, 404, "No such action.")
        form = await request.post()
        try:
            done = await self._verb(verb, row_id, {k: str(v) for k, v in form.items()})
        except RepositoryError as err:
            log.warning("dashboard.action_failed", verb=verb, row_id=str(row_id), error=str(err))
            done = Outcome(False, "The database is unavailable; nothing was done.", {})
        log.info("dashboard.action", verb=verb, row_id=str(row_id), ok=done.ok)
        self.access.flash(request[SESSION], Flash(done.ok, done.line))
        self.feed.wakeup.set("action")
        return see_other(f"/rows/{row_id}")

    async def _verb(self, verb: str, row_id: UUID, form: dict[str, str]) -> Outcome:
        op = self.operator
        match verb:
            case "retry":
                return await operations.retry(op, row_id, abandon=form.get("abandon") == "1")
            case "cancel":
                return await operations.cancel(op, self.settings, row_id)
            case "rearchive":
                return await operations.rearchive(op, row_id)
            case "adopt":
                video_id = form.get("video_id", "").strip()
                if not video_id or not video_id.isprintable():
                    return Outcome(False, "Give the provider's job id.", {})
                provider = self.settings.generation.provider
                model = form.get("litellm_model", "").strip() or None
                return await operations.adopt(op, row_id, video_id, provider, litellm_model=model)
        raise AssertionError(verb)


def _row_id(request: web.Request) -> UUID | None:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        return None
