"""The imperative shell around the machine: each action's IO, turned into an event.

Every function here catches what its IO can throw and answers with one of the
machine's events, so the daemon never sees a raw exception from a provider, a photo
host or the store: a bad row becomes ``Rejected`` with a readable reason, a hiccup
becomes ``Transient``, and the machine decides what follows. The archive action's IO
is ``service.worker.archive``.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import httpx
import structlog

from service.core import likeness
from service.core.costs import Admission, over_budget_wait
from service.core.events import (
    Accepted,
    Event,
    Generated,
    GenerationFailed,
    InDoubt,
    IntentRecorded,
    NotFoundAtProvider,
    NotSubmitted,
    OverBudget,
    Progressed,
    Rejected,
    Transient,
    Unreconcilable,
    Vanished,
    Waiting,
)
from service.core.job import Job, SubmitKey
from service.core.request import ImageInputs, VideoRequest
from service.database.port import AbandonedJob
from service.media import fetch, images, prints, references
from service.providers import base as providers
from service.providers import models
from service.providers.base import VideoProvider
from service.providers.lookup import Providers, UnknownProvider
from service.storage.base import ObjectStore
from service.worker.archive import Archiver, take_image
from service.worker.pacing import Pace, Pacing
from service.worker.webhook_health import WebhookHealth

log = structlog.get_logger("service.worker.steps")


class Ledger(Protocol):
    """What reconciliation asks about other rows (part of the Repository port; named
    apart so that steps cannot claim, checkpoint or release)."""

    async def recorded_video_ids(self, candidates: Iterable[str]) -> frozenset[str]: ...

    async def twins_in_doubt(
        self, prompt: str, model: str, size: str, seconds: str
    ) -> list[likeness.Twin]: ...


class Gate(Protocol):
    """The database's last word before an intent (part of the Repository port): the
    allowlist an insert met, and the day's budget (sql/0011)."""

    async def admit(self, provider: str, model: str, size: str, seconds: str) -> Admission: ...


FRAME_CACHE = 512
"""First-frame prints kept per process (a job's first frame never changes): a crash
that leaves many twins in doubt fetches each candidate's thumbnail about once."""
FIRST_FRAME_MAX_BYTES = 32 * 1024 * 1024
"""How much of a video is read to decode its first frame when no thumbnail is served
(a faststart MP4 holds its index and first frame in the first few hundred KiB)."""

PHOTO_ROWS_AT_ONCE = 4
"""Rows that may hold downloaded photos at once: at most this many x 2 x
SORA_IMAGE_MAX_BYTES of photo bytes in memory, whatever the concurrency."""

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
        self._frames: OrderedDict[str, likeness.Print] = OrderedDict()

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
        try:
            sent = await self._reference(job, size, inputs)
        except (fetch.FetchError, images.ImageError) as err:
            if err.permanent:
                return Rejected(str(err))
            return NotSubmitted(str(err))
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
        # Photo bytes wait in memory until composed: bound how many rows hold them.
        async with self._photo_slots:
            blobs = await asyncio.gather(*(self.photos.fetch(target) for target in targets))

            def compose() -> references.Sent:
                photos = [
                    images.decode(label, blob, fit=(width, height))
                    for (label, _), blob in zip(labelled, blobs, strict=True)
                ]
                return references.arrange(photos, inputs, width, height)

            return await images.in_photo_thread(compose)

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
        return Accepted(job.id, job.progress)

    async def reconcile(self, job: Job) -> Event:
        """An earlier create's outcome is unknown: find its job before submitting again.

        Our job is a match created after our intent that no row has recorded. When it
        is the only one and no identical request (a twin) is in doubt beside us, it is
        ours. Otherwise jobs made from photos are told apart by their first frames
        (``service.core.likeness``): a row takes a job only when it clearly looks like its
        own reference and not like any twin's; twins with the same photos are
        interchangeable; text-only twins are interchangeable too, but never take a
        job that looks like a photo twin's. What cannot be settled stays in doubt.
        "Nothing there" is believed only once an in-flight create would have timed
        out, judged on the database's clock (``job.as_of`` against ``submitted_at``).
        """
        now = job.as_of
        if job.submitted_at is None or job.model is None or job.size is None or job.seconds is None:
            return NotFoundAtProvider()
        request = VideoRequest(
            prompt=job.prompt or "",
            model=job.model,
            size=job.size,
            seconds=job.seconds,
            idempotency_key=str(job.submit_key),
        )
        try:
            provider = self.providers.get(job.provider)
        except UnknownProvider as err:
            return Transient(str(err))  # a paid job: wait for a worker that has it
        try:
            matches = await provider.find_submitted(request, job.submitted_at)
            taken = await self.ledger.recorded_video_ids(m.id for m in matches)
        except providers.CannotReconcile as err:
            return Unreconcilable(str(err), self.providers.where(provider.name), err.litellm)
        except providers.ProviderError as err:
            return Transient(f"could not reconcile with the provider: {err}")
        # Oldest first: the listing is newest first and created_at has 1 s resolution,
        # so reverse it and let a stable sort keep that order within a second.
        free = sorted(
            (m for m in reversed(matches) if m.id not in taken),
            key=lambda m: m.created_at or now,
        )
        if not free:
            settled_at = job.submitted_at + provider.submit_timeout
            if now < settled_at:
                return Waiting("the earlier submission may still be in flight", settled_at - now)
            return NotFoundAtProvider()
        twins = await self.ledger.twins_in_doubt(request.prompt, job.model, job.size, job.seconds)
        me = next((t for t in twins if t.key == job.id), None)
        if me is None:  # not in doubt any more as far as the table says: judge as photos
            me = likeness.Twin(job.id, bool(job.image1_url or job.image2_url), None)
        others = [t for t in twins if t.key != job.id]
        photo_twins = any(t.photos for t in others)
        if (len(free) == 1 or not me.photos) and not others:
            chosen: str | None = free[0].id  # alone: the one match, or any (text only)
        elif not me.photos and not photo_twins:
            chosen = free[0].id  # text-only twins are interchangeable
        else:
            ids = [m.id for m in free]
            frames = {video_id: await self._first_frame(provider, video_id) for video_id in ids}
            chosen = likeness.choose(me, twins, ids, frames)
        if chosen is None:
            # Not a failure: first frames appear as jobs finish, and twins settle one by
            # one. Waiting spends no attempts (a row that later finds nothing must still
            # have its budget to submit again); the paid deadline still ends it.
            ids_text = ", ".join(m.id for m in free)
            return Waiting(
                f"{len(free)} provider jobs ({ids_text}) match this request; "
                "cannot tell yet which one was made from this row's photos",
                None,
            )
        found = next(m for m in free if m.id == chosen)
        log.info("video.reconciled", row_id=str(job.id), video_id=chosen, candidates=len(free))
        return Accepted(found.id, found.progress)

    async def _first_frame(self, provider: VideoProvider, video_id: str) -> likeness.Print | None:
        """The print of a job's first frame: its thumbnail when the provider serves one
        (checked to be an image by its bytes), else the first frame decoded from the
        start of the video; None while neither is available (the job is not done)."""
        cached = self._frames.get(video_id)
        if cached is not None:
            self._frames.move_to_end(video_id)
            return cached
        found = await self._thumbnail_print(provider, video_id) or await self._video_print(
            provider, video_id
        )
        if found is not None:
            self._frames[video_id] = found
            while len(self._frames) > FRAME_CACHE:
                self._frames.popitem(last=False)
        return found

    async def _thumbnail_print(
        self, provider: VideoProvider, video_id: str
    ) -> likeness.Print | None:
        try:
            _, data = await take_image(provider.download(video_id, "thumbnail"))
        except (providers.ProviderError, httpx.HTTPError, OSError):
            return None
        if data is None:
            return None
        try:
            return await images.in_photo_thread(lambda: prints.print_of_image(data))
        except ValueError:
            return None

    async def _video_print(self, provider: VideoProvider, video_id: str) -> likeness.Print | None:
        with tempfile.NamedTemporaryFile(suffix=".mp4") as spool:
            written = 0
            try:
                async with provider.download(video_id, "video") as chunks:
                    async for chunk in chunks:
                        spool.write(chunk)
                        written += len(chunk)
                        if written >= FIRST_FRAME_MAX_BYTES:
                            break
            except (providers.ProviderError, httpx.HTTPError, OSError):
                if not written:
                    return None
            spool.flush()
            try:
                return await images.in_photo_thread(lambda: prints.print_of_video(spool.name))
            except ValueError:
                return None

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
        return self._polled(provider, state)

    def _polled(self, provider: VideoProvider, state: providers.ProviderJob) -> Event:
        """What a job's status means for its row."""
        match state.status:
            case "completed":
                return Generated(provider.content_url(state.id), state.expires_at)
            case "failed":
                return GenerationFailed(
                    state.error or "the provider failed the job",
                    state.error_kind or "provider_error",
                )
            case "queued" | "running":
                stretched = None  # webhooks seen to arrive: the poll is only a safety net
                if self.webhooks is not None:
                    stretched = self.webhooks.poll_interval(provider.name)
                return Progressed(state.progress, state.raw_status, stretched, state.poll_after)

    # ------------------------------------------------------------ archive

    async def archive(self, job: Job) -> Event:
        """Stream the video into the store (``service.worker.archive``)."""
        return await self.archiver.archive(job)
