"""The simulator's webhooks: ``video.completed`` and ``video.failed`` events sent the
moment a job ends, as an OpenAI webhook endpoint receives them (``{"id": "evt_...",
"object": "event", "type": ..., "created_at": ..., "data": {"id": VIDEO_ID}}``),
signed per Standard Webhooks with the endpoint's secret (``signed_headers``, as the
worker's receiver verifies them) and tried ``webhook_attempts`` times until a 2xx.

Only for jobs made while ``SimulatorConfig.webhook_url`` is set (and a secret: both
are read again when the job ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import httpx

from service.web.webhooks import signed_headers

from .profiles import Profile
from .store import Job, VideoStore

__all__ = ["WebhookSender"]

RETRY_DELAY = 0.5
"""Seconds between two deliveries of one event."""
CHECK_EVERY = 1.0
"""The longest sleep before a job's end is looked at again (a test's clock may jump)."""


class WebhookSender:
    """Watches each job the simulator makes and announces its end."""

    def __init__(self, store: VideoStore) -> None:
        self.store = store
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent: list[tuple[str, str, int]] = []
        """(event type, video id, the receiver's status; 0: unreachable) per delivery."""

    def watch(self, job: Job) -> None:
        """Announce ``job``'s end when it comes (if webhooks are configured)."""
        if self.store.config.webhook_url is None:
            return
        task = asyncio.get_running_loop().create_task(self._announce(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _announce(self, job: Job) -> None:
        config = self.store.config
        while True:
            if job.deleted:
                return
            status = job.video(config)["status"]
            if status in ("completed", "failed"):
                break
            left = job.finishes_at(config) - config.clock()
            await asyncio.sleep(min(max(left, 0.001), CHECK_EVERY))
        if status == "completed":
            await self.store.asset(job, "video")  # the file exists before it is announced
        await self._deliver(f"video.{status}", job)

    async def _deliver(self, kind: str, job: Job) -> None:
        config = self.store.config
        url, secret = config.webhook_url, config.webhook_secret
        if url is None or secret is None:
            return
        video_id = Profile(config.profile).public_id(job.id, job.model)
        event_id = f"evt_{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "type": kind,
                "created_at": int(config.clock()),
                "data": {"id": video_id},
            }
        )
        for attempt in range(config.webhook_attempts):
            status = 0
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=5.0) as http:
                    answer = await http.post(
                        url, content=body, headers=signed_headers(secret, event_id, body)
                    )
                    status = answer.status_code
            self.sent.append((kind, video_id, status))
            if 200 <= status < 300:
                return
            if attempt + 1 < config.webhook_attempts:
                await asyncio.sleep(RETRY_DELAY)
