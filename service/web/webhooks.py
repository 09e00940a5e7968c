"""Provider webhooks as wake-up hints: verified, de-duplicated, and never trusted for state.

Replicate (a ``webhook`` URL per prediction) and OpenAI-shaped hosts (``video.completed``
/ ``video.failed`` events from a dashboard-configured endpoint) both sign per Standard
Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``). A delivery:

1. is verified with the provider's secret (``standardwebhooks``, which also refuses a
   timestamp more than 5 minutes off, so an old capture cannot be replayed later);
2. is dropped if its ``webhook-id`` was already handled (a bounded memory of recent ids
   covers the 5-minute window many times over; senders retry with the same id);
3. only **wakes** the row that holds the provider's job: the row is made due now and
   the worker's Wakeup is set. What happened is still asked of the provider by the
   normal poll, so a forged or stale payload can never complete or fail a row.

Polling stays as the safety net. Once verified deliveries from a provider have been
seen (``WebhookHealth``), its rows are polled at the longer ``stretched`` interval,
and back at the normal one if deliveries stop for ``trust_for``.

An unsigned, forged or replayed delivery changes nothing and is logged
(``webhook.rejected`` / ``webhook.duplicate``). The routes are self-contained
(``WebhookReceiver.routes()``) so the worker's HTTP server can mount them.
"""

from __future__ import annotations

import asyncio
import binascii
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.exceptions import WebhookVerificationError

from service.core.job import RowId
from service.database.errors import RepositoryError
from service.wakeups.wakeup import Wakeup
from service.worker.webhook_health import WebhookHealth

log = structlog.get_logger("service.web.webhooks")

PATH = "/webhooks/{provider}"
MAX_BODY = 16 * 1024 * 1024
"""The largest delivery read (the worker's HTTP server takes bodies up to this size).
Replicate's bodies carry the whole prediction, its input included: the reference photo
travels there as a data: URI, so a megabyte is not enough."""
BODY_TIMEOUT = 30.0
"""Seconds a delivery's body may take to arrive whole (a sender trickling it is cut)."""
REMEMBERED_IDS = 10_000
OPENAI_VIDEO_EVENTS = frozenset({"video.completed", "video.failed"})


class Waker(Protocol):
    """The one database operation a delivery may cause (part of the Repository port)."""

    async def wake(self, provider: str, video_id: str) -> RowId | None: ...


def job_id_of(provider: str, payload: Any) -> str | None:
    """The provider job a delivery is about; None for events that concern no job of ours."""
    if not isinstance(payload, dict):
        return None
    if provider == "openai":
        data = payload.get("data")
        if payload.get("type") not in OPENAI_VIDEO_EVENTS or not isinstance(data, dict):
            return None
        found = data.get("id")
    else:  # Replicate sends the prediction itself
        found = payload.get("id")
    return found if isinstance(found, str) and found else None


class WebhookReceiver:
    """``POST /webhooks/{provider}`` for each provider with a secret."""

    def __init__(
        self,
        secrets: Mapping[str, str],
        waker: Waker,
        wakeup: Wakeup,
        health: WebhookHealth,
        *,
        remember: int = REMEMBERED_IDS,
    ) -> None:
        self._verifiers = {name: Webhook(secret) for name, secret in secrets.items()}
        self.waker = waker
        self.wakeup = wakeup
        self.health = health
        self._remember = remember
        self._handled: OrderedDict[tuple[str, str], None] = OrderedDict()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PATH, self.handle)]

    async def handle(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        verifier = self._verifiers.get(provider)
        if verifier is None:
            return web.json_response({"error": f"no webhooks from {provider}"}, status=404)
        try:
            # Whole: a body may arrive in many writes (``content.read(n)`` returns what
            # has arrived so far, and the signature covers all of it).
            async with asyncio.timeout(BODY_TIMEOUT):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            log.warning("webhook.rejected", provider=provider, reason="body too large")
            return web.json_response({"error": "body too large"}, status=413)
        except TimeoutError:
            log.warning("webhook.rejected", provider=provider, reason="body too slow")
            return web.json_response({"error": "body too slow"}, status=408)
        delivery = request.headers.get("webhook-id", "")
        try:
            payload = verifier.verify(body, dict(request.headers))
        except (WebhookVerificationError, ValueError, binascii.Error, UnicodeDecodeError) as err:
            log.warning(
                "webhook.rejected",
                provider=provider,
                webhook_id=delivery[:100],
                reason=str(err) or type(err).__name__,
                remote=request.remote,
            )
            return web.json_response({"error": "invalid signature"}, status=401)
        key = (provider, delivery)
        if key in self._handled:
            log.info("webhook.duplicate", provider=provider, webhook_id=delivery)
            return web.json_response({"ok": True, "duplicate": True})
        self.health.seen(provider)
        job_id = job_id_of(provider, payload)
        if job_id is None:
            self._note(key)
            log.info("webhook.ignored", provider=provider, webhook_id=delivery)
            return web.json_response({"ok": True})
        try:
            row_id = await self.waker.wake(provider, job_id)
        except RepositoryError as err:
            # Not remembered: the sender retries with the same id, and that one may land.
            log.warning("webhook.wake_failed", provider=provider, video_id=job_id, error=str(err))
            return web.json_response({"error": "try again"}, status=503)
        self._note(key)
        if row_id is None:
            log.info("webhook.unknown_job", provider=provider, video_id=job_id)
        else:
            self.wakeup.set("webhook")
            log.info("webhook.woke", provider=provider, video_id=job_id, row_id=str(row_id))
        return web.json_response({"ok": True})

    def _note(self, key: tuple[str, str]) -> None:
        self._handled[key] = None
        while len(self._handled) > self._remember:
            self._handled.popitem(last=False)


def signed_headers(secret: str, webhook_id: str, body: str) -> dict[str, str]:
    """Headers a Standard Webhooks sender puts on ``body`` (for senders and tests)."""
    moment = datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, moment, body),
        "content-type": "application/json",
    }
