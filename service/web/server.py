"""The worker's own HTTP server: ``/metrics``, ``/healthz``, ``/readyz``, and mounted routes.

Separate from the local storage server (its own port, ``SORA_HTTP_PORT``), because it
runs in production too: a scraper reads ``/metrics``, a container runtime probes
``/readyz`` through ``sora-worker health``. Other parts of the worker (the webhook
receivers) mount their routes on the same server in one line::

    runtime.http_server(worker, routes=webhooks.routes(...))   # in cli.run_worker
    # or, before ``async with``: server.app.add_routes([...]); server.app.add_subapp("/x", sub)

Readiness means "this worker can make progress now": the database answers (within
``READY_TIMEOUT``) and the claim loop comes round, which is the sweep that covers for
any push source (LISTEN, Realtime) that is down. The push sources' states are shown in
the body and in ``sora_event_source_up``, but a lost websocket alone is no reason to
take a replica out of service: the sweep still finds every row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service.database.errors import RepositoryError
from service.database.health import Health
from service.database.port import TableSnapshot
from service.web.serving import serve
from service.worker.daemon import Worker

log = structlog.get_logger("service.web.server")

READY_TIMEOUT = 2.0
"""Seconds the database may take to answer a readiness probe."""
SCRAPE_TIMEOUT = 5.0
"""Seconds the table query of a scrape may take (a scraper's own timeout is often 10 s)."""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    database: str
    """"ok", or why it did not answer."""
    sources: dict[str, bool]

    def as_json(self) -> dict[str, object]:
        return {"ready": self.ready, "database": self.database, "sources": self.sources}


class WorkerProbe:
    """What the HTTP server asks of a running worker: its readiness and its metrics."""

    def __init__(self, worker: Worker, health: Health) -> None:
        self.worker = worker
        self.health = health

    async def readiness(self) -> Readiness:
        database = "ok"
        try:
            await self.health.ping(READY_TIMEOUT)
        except RepositoryError as err:
            database = str(err)
        sources = self.worker.source_states()
        return Readiness(database == "ok" and sources["sweep"], database, sources)

    async def metrics(self) -> bytes:
        table: TableSnapshot | None
        try:
            table = await self.health.table_snapshot(SCRAPE_TIMEOUT)
        except RepositoryError as err:
            log.warning("metrics.table_unreadable", error=str(err))
            table = None
        return self.worker.metrics.render(table)


class WorkerHttp:
    """The server; ``async with`` it around the worker's run. ``port`` is the bound one."""

    def __init__(
        self, host: str, port: int, probe: WorkerProbe, *, routes: Iterable[web.RouteDef] = ()
    ) -> None:
        self.host = host
        self.port = port
        self.probe = probe
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
            ]
        )
        self.app.add_routes(list(routes))
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> WorkerHttp:
        try:
            self._runner, self.port = await serve(self.app, self.host, self.port)
        except OSError as err:
            raise OSError(
                f"the HTTP server cannot listen on {self.host}:{self.port} "
                f"({err.strerror or err}): set SORA_HTTP_PORT to a free port (0 takes any) "
                "or SORA_HTTP_HOST to an address of this machine"
            ) from err
        log.info("http.listening", host=self.host, port=self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await self.probe.metrics()
        # CONTENT_TYPE_LATEST carries a charset, which aiohttp wants in its own argument.
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, _request: web.Request) -> web.Response:
        state = await self.probe.readiness()
        return web.Response(
            status=200 if state.ready else 503,
            text=json.dumps(state.as_json(), sort_keys=True),
            content_type="application/json",
        )
