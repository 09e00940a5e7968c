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

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service.database.errors import RepositoryError
from service.database.health import Health
from service.web.gauges import TableGauges
from service.web.guard import GuardedServer, Limits, listen, one_request_per_connection
from service.web.webhooks import MAX_BODY
from service.worker.daemon import Worker

log = structlog.get_logger("service.web.server")

READY_TIMEOUT = 2.0
"""Seconds the database may take to answer a readiness probe."""


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
        self.gauges = TableGauges(health)
        self._unready: str | None = None

    async def readiness(self) -> Readiness:
        """Whether the worker can make progress. The body says only "unavailable" for a
        database that does not answer: its error text (hosts, addresses, the driver's
        words) goes to the log, said once per change, never to whoever asks."""
        database = "ok"
        try:
            await self.health.ping(READY_TIMEOUT)
        except RepositoryError as err:
            database = "unavailable"
            if str(err) != self._unready:
                log.warning("readiness.database_unavailable", error=str(err))
            self._unready = str(err)
        else:
            self._unready = None
        sources = self.worker.source_states()
        return Readiness(database == "ok" and sources["sweep"], database, sources)

    async def metrics(self) -> bytes:
        return self.worker.metrics.render(await self.gauges.snapshot())


class WorkerHttp:
    """The server; ``async with`` it around the worker's run. ``port`` is the bound one.

    Bounded (``service.web.guard``): a connection cap, a deadline for headers, one
    request per connection. ``metrics_token``, when set, is required of ``/metrics``
    (``Authorization: Bearer ...``)."""

    def __init__(
        self,
        host: str,
        port: int,
        probe: WorkerProbe,
        *,
        routes: Iterable[web.RouteDef] = (),
        metrics_token: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.probe = probe
        self.metrics_token = metrics_token
        app = web.Application(client_max_size=MAX_BODY, middlewares=[one_request_per_connection])
        app.add_routes(
            [
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
            ]
        )
        app.add_routes(list(routes))
        self.server = GuardedServer(app, host, port, limits or Limits())

    @property
    def app(self) -> web.Application:
        return self.server.app

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    async def __aenter__(self) -> WorkerHttp:
        await listen(
            self.server,
            "the HTTP server",
            "set SORA_HTTP_PORT to a free port (0 takes any) "
            "or SORA_HTTP_HOST to an address of this machine",
        )
        log.info("http.listening", host=self.host, port=self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.server.stop()
        await self.probe.gauges.aclose()

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_token is not None and not hmac.compare_digest(
            request.headers.get("Authorization", ""), f"Bearer {self.metrics_token}"
        ):
            return web.json_response({"error": "a bearer token is required"}, status=401)
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


class WebhookHttp:
    """Provider webhooks alone, on a listener of their own (``SORA_WEBHOOK_PORT``): the
    one port exposed to providers, bounded like the worker's own server."""

    def __init__(
        self, host: str, port: int, routes: Iterable[web.RouteDef], limits: Limits | None = None
    ) -> None:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[one_request_per_connection])
        app.add_routes(list(routes))
        self.server = GuardedServer(app, host, port, limits or Limits())

    @property
    def port(self) -> int:
        return self.server.port

    async def __aenter__(self) -> WebhookHttp:
        await listen(self.server, "the webhook listener", "set SORA_WEBHOOK_PORT to a free port")
        log.info("http.webhooks_listening", host=self.server.host, port=self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.server.stop()
