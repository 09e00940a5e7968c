"""The imperative shell around the machine: each action's IO, turned into an event.

Every function here catches what its IO can throw and answers with one of the
machine's events, so the daemon never sees a raw exception from a provider, a photo
host or the store: a bad row becomes ``Rejected`` with a readable reason, a hiccup
becomes ``Transient``, and the machine decides what follows. The archive and describe
actions' IO is ``service.worker.archive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import BinaryIO, Protocol

import structlog

from service.core.costs import Admission, over_budget_wait
from service.core.events import (
    Accepted,
    Event,
    Generated,
    GenerationFailed,
    InDoubt,
    IntentRecorded,
    NotSubmitted,
    OverBudget,
    PhotoUnavailable,
    Progressed,
    Rejected,
    Transient,
    Vanished,
)
from service.core.job import Job, RowId, SubmitKey
from service.core.request import ImageInputs, VideoRequest
from service.database.port import AbandonedJob
from service.media import fetch, images, references
from service.providers import base as providers
from service.providers import models
from service.providers.base import VideoProvider
from service.providers.lookup import Providers, UnknownProvider
from service.storage.base import ObjectStore
from service.worker.archive import Archiver
from service.worker.durations import DurationBook
from service.worker.pacing import Pace, Pacing
from service.worker.reconcile import Ledger, Reconciler
from service.worker.webhook_health import WebhookHealth

log = structlog.get_logger("service.worker.steps")


class Gate(Protocol):
    """The database's last word before an intent (part of the Repository port): the
    allowlist an insert met, and the day's budget (sql/0011)."""

    async def admit(self, provider: str, model: str, size: str, seconds: str) -> Admission: ...


PHOTO_ROWS_AT_ONCE = 4
"""Rows that may download and hold photos at once. The bytes wait on disk (temporary
files, gone with the process), never in memory: this bounds the disk they take (this
many x 2 x SORA_IMAGE_MAX_BYTES, 120 MB by default) and the photo downloads in flight,
whatever the concurrency. Memory is bounded by the one photo thread instead."""

ABANDONED_TRIES = 5
"""Cancels tried on an abandoned job (five minutes apart) before it is left to run."""


@dataclass(frozen=True)
class Defaults:
    """What a row that names no model, size or length gets."""

    model: str
    size: str
    seconds: str


class Steps:
    """Performs the machine's actions for one worker process."""

    def __init__(
        self,
        providers: Providers,
        store: ObjectStore,
        *,
        defaults: Defaults,
        video_bucket: str,
        photo_limits: fetch.Limits,
        photo_access: fetch.Access | None = None,
        ledger: Ledger,
        webhooks: WebhookHealth | None = None,
        rendition_kbps: int = 0,
        gate: Gate | None = None,
        pace: Pace | None = None,
        durations: DurationBook | None = None,
    ) -> None:
        self.providers = providers
        self.store = store
        self.defaults = defaults
        self.video_bucket = video_bucket
        # Photos get their own pinned connections (fetch.py), never a shared client.
        self.photos = fetch.PhotoFetcher(photo_limits, photo_access)
        self._photo_slots = asyncio.Semaphore(PHOTO_ROWS_AT_ONCE)
        self.ledger = ledger
        self.webhooks = webhooks
        """Whose webhooks arrive: their rows are polled less often (service.web.webhooks)."""
        self.archiver = Archiver(providers, store, video_bucket, rendition_kbps)
        self.gate = gate
        """Asked right before each intent when given (the worker's runtime gives it)."""
        self.pacing = Pacing(pace)
        """Turns before each create and poll (one request rate for every replica)."""
        self.reconciler = Reconciler(providers, ledger)
        self.durations = durations or DurationBook(None, timedelta(0))
        """How long each model's jobs took lately: polls are timed by it."""

    # ------------------------------------------------------------ submit

    async def prepare(self, job: Job) -> Event:
        """Validate the row and build the request; nothing is sent to the provider yet.

        The request travels in ``IntentRecorded``: the daemon checkpoints the intent,
        then hands the same request to ``create``.
        """
        try:
            provider = self.providers.get(job.provider)
        except UnknownProvider as err:
            return Rejected(str(err))
        model = job.model or self.defaults.model
        size = job.size or self.defaults.size
        seconds = job.seconds or self.defaults.seconds
        # Sent exactly as stored: reconciliation compares the stored text, so two
        # prompts differing in whitespace must stay two requests.
        prompt = job.prompt or ""
        if not prompt.strip():
            return Rejected("the row has no prompt")
        try:
            models.check(
                model,
                size,
                seconds,
                image=bool(job.image1_url or job.image2_url),
                host=self.providers.host(provider.name),
                today=job.as_of.date(),  # the database's clock, like every deadline
            )
            provider.validate(model, size, seconds)
        except providers.RequestRejected as err:
            return Rejected(str(err), err.kind)
        if self.gate is not None:
            # Before the photos are fetched: a row that may not be made costs nothing.
            gate = await self.gate.admit(provider.name, model, size, seconds)
            if gate.refusal is not None:
                return Rejected(f"{gate.refusal} (SORA_ALLOWED_MODELS)")
            if gate.over_budget:
                return OverBudget(
                    f"today's estimated spend ({gate.spent_usd:.2f} USD) and this video's "
                    f"({gate.cost_usd:.2f}) would pass the daily budget of "
                    f"{gate.budget_usd:.2f} USD (SORA_DAILY_BUDGET_USD)",
                    over_budget_wait(job.as_of),
                )
        inputs = models.image_inputs(provider.name, model)
        sent = await self._photos(job, size, inputs)
        if not (sent is None or isinstance(sent, references.Sent)):
            return sent  # the photos could not be had: the event says why
        # Last, right before the intent: a turn is reserved for a create that follows
        # within milliseconds, so the host sees creates as far apart as turns are.
        waited = await self.pacing.turn(provider.name, model, "create")
        if waited is not None:
            return waited
        key = SubmitKey(uuid.uuid4())
        request = VideoRequest(
            prompt=prompt,
            model=model,
            size=size,
            seconds=seconds,
            idempotency_key=str(key),
            images=() if sent is None else sent.images,
        )
        if sent is None:
            return IntentRecorded(key, provider.name, request)
        return IntentRecorded(key, provider.name, request, sent.first_print, sent.how)

    async def _photos(
        self, job: Job, size: str, inputs: ImageInputs
    ) -> references.Sent | Rejected | PhotoUnavailable | None:
        """The photos as the model takes them, or why they cannot be had: a refused or
        broken photo fails the row; a photo host that does not answer is the photo's
        outcome (``photo_unavailable``), tried a few times first."""
        try:
            return await self._reference(job, size, inputs)
        except fetch.FetchError as err:
            if not err.unavailable:
                return Rejected(str(err))
            if err.permanent:
                return Rejected(str(err), "photo_unavailable")
            return PhotoUnavailable(str(err))
        except images.ImageError as err:
            return Rejected(str(err))

    async def _reference(self, job: Job, size: str, inputs: ImageInputs) -> references.Sent | None:
        """The photos as the model takes them (``references``), and the print of the
        first image sent (the evidence reconciliation uses)."""
        labelled = [
            (label, url)
            for label, url in (("image1_url", job.image1_url), ("image2_url", job.image2_url))
            if url
        ]
        if not labelled:
            return None
        width, height = (int(n) for n in size.split("x"))
        if width * height > images.MAX_PIXELS:
            raise images.ImageError(
                f"size {size} is too large to compose a reference image for", permanent=True
            )
        # Both destinations are checked before a byte moves: a row whose second URL is
        # refused must not make the worker contact the first one's host at all.
        targets = [await self.photos.check(label, url) for label, url in labelled]
        async with self._photo_slots:
            with contextlib.ExitStack() as files:
                # Downloaded to disk: a row waiting for the photo thread holds no photo in
                # memory. Unnamed files, gone when closed or when the process dies.
                spooled = [files.enter_context(tempfile.TemporaryFile()) for _ in targets]
                await self._download(targets, spooled)

                def compose() -> references.Sent:
                    labels = [label for label, _ in labelled]
                    for label, photo in zip(labels, spooled, strict=True):
                        images.inspect(label, photo)  # every header before any decode
                    # Decoded when placed, one at a time: never two decoded photos at once.
                    photos = [
                        functools.partial(images.decode, label, photo, fit=(width, height))
                        for label, photo in zip(labels, spooled, strict=True)
                    ]
                    return references.arrange(photos, inputs, width, height)

                return await images.in_photo_thread(compose)

    async def _download(self, targets: Sequence[fetch.Target], files: Sequence[BinaryIO]) -> None:
        """Both photos at once; when one fails the other is stopped, and neither is
        still writing when this returns (their files are closed next)."""
        tasks = [
            asyncio.ensure_future(self.photos.fetch_into(target, file))
            for target, file in zip(targets, files, strict=True)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def create(self, intent: IntentRecorded) -> Event:
        """The one call that costs money. Its errors say whether a job may exist.

        The whole call ends within the provider timeout (the HTTP timeout is per read):
        reconciliation believes "no job" once that much time has passed since the
        intent, so a create may never outlive it. One cut short is in doubt."""
        try:
            provider = self.providers.get(intent.provider)
            limit = provider.submit_timeout.total_seconds()
            async with asyncio.timeout(limit) as bound:
                job = await provider.submit(intent.request)
        except UnknownProvider as err:
            return NotSubmitted(str(err))
        except TimeoutError as err:
            if not bound.expired():
                raise
            return InDoubt(
                f"no whole answer to create within {limit:g} s (SORA_PROVIDER_TIMEOUT; {err!r})",
                None,
            )
        except providers.RequestRejected as err:
            return Rejected(str(err), err.kind)
        except providers.RateLimited as err:
            pause = await self.pacing.rate_limited(
                intent.provider, intent.request.model, "create", err
            )
            return NotSubmitted(str(err), pause)
        except providers.ProviderUnavailable as err:
            return NotSubmitted(str(err), err.retry_after)
        except providers.OutcomeUnknown as err:
            return InDoubt(str(err), err.retry_after)
        likely = await self.durations.likely(intent.provider, intent.request.model)
        return Accepted(job.id, job.progress, likely)

    async def reconcile(self, job: Job) -> Event:
        """An earlier create's outcome is unknown: find its job before submitting again
        (``service.worker.reconcile``)."""
        return await self.reconciler.reconcile(job)

    # ------------------------------------------------------------ abandoned jobs

    async def cancel_abandoned(self, job: AbandonedJob) -> tuple[bool, str]:
        """Stop a job no row will archive, where its provider can; returns whether that
        is settled, and what became of it (for the warning and the record).

        Not settled (tried again later, at most ``ABANDONED_TRIES`` times): the provider
        is not configured on this worker, or refused the cancel for now."""
        if job.video_id is None:
            return True, (
                f"not cancelled: the row was being submitted (idempotency key "
                f"{job.submit_key}), so a job may exist that nobody can name; look for it "
                "at the provider"
            )
        last_try = job.tries >= ABANDONED_TRIES
        try:
            provider = self.providers.get(job.provider)
        except UnknownProvider as err:
            return last_try, f"not cancelled: {err}"
        if not isinstance(provider, providers.Cancellable):
            return True, f"not cancelled: {provider.name} cannot cancel jobs; it runs to its end"
        try:
            await provider.cancel(job.video_id)
        except providers.ProviderError as err:
            return last_try, f"not cancelled ({job.tries} of {ABANDONED_TRIES} tries): {err}"
        return True, f"cancelled at {provider.name}"

    # ------------------------------------------------------------ poll

    async def poll(self, job: Job) -> Event:
        assert job.video_id is not None, "generating rows always hold a video_id"
        provider_name = job.provider or self.providers.default
        waited = await self.pacing.turn(provider_name, job.model or "", "poll")
        if waited is not None:
            return waited
        try:
            provider = self.providers.get(job.provider)
            # A whole answer within the provider timeout: the HTTP client's timeout is
            # per read, so a host that trickles its answer would hold the row (and its
            # slot, the heartbeat keeping the lease) for ever.
            limit = provider.submit_timeout.total_seconds()
            async with asyncio.timeout(limit) as bound:
                state = await provider.retrieve(job.video_id)
        except UnknownProvider as err:
            return Transient(str(err))
        except TimeoutError:
            if not bound.expired():
                raise
            return Transient(
                f"the status of {job.video_id} did not arrive within {limit:g} s "
                "(SORA_PROVIDER_TIMEOUT)"
            )
        except providers.RequestRejected as err:
            return Rejected(str(err), err.kind)
        except providers.VideoGone as err:
            return Vanished(str(err))
        except providers.RateLimited as err:
            pause = await self.pacing.rate_limited(provider.name, job.model, "poll", err)
            return Transient(str(err), pause)
        except providers.ProviderError as err:
            return Transient(str(err), err.retry_after)
        return await self._polled(provider, state, job.model)

    async def _polled(
        self, provider: VideoProvider, state: providers.ProviderJob, model: str | None
    ) -> Event:
        """What a job's status means for its row."""
        match state.status:
            case "completed":
                return Generated(
                    provider.content_url(state.id), state.expires_at, state.finished_at
                )
            case "failed":
                return GenerationFailed(
                    state.error or "the provider failed the job",
                    state.error_kind or "provider_error",
                )
            case "queued" | "running":
                stretched = None  # webhooks seen to arrive: the poll is only a safety net
                if self.webhooks is not None:
                    stretched = self.webhooks.poll_interval(provider.name)
                likely = await self.durations.likely(provider.name, model)
                return Progressed(
                    state.progress, state.raw_status, stretched, state.poll_after, likely
                )

    # ------------------------------------------------------------ archive

    async def archive(self, job: Job) -> Event:
        """Stream the video into the store, or find it there (``service.worker.archive``)."""
        return await self.archiver.archive(job)

    async def describe(self, job: Job) -> Event:
        """The stored video's thumbnail and media (``service.worker.archive``)."""
        return await self.archiver.describe(job)

    async def release(self, row_id: RowId) -> None:
        """The claim on a row ended: drop what a step kept for its next one."""
        await self.archiver.release(row_id)
