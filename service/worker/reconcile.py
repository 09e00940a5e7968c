"""Reconciliation: an earlier create's outcome is unknown; find its job at the provider
before anything is submitted again (DESIGN.md, principle 3: never pay twice).

Our job is a match created after our intent that no row has recorded. When it is the
only one and no identical request (a twin) is in doubt beside us, it is ours. Otherwise
jobs made from photos are told apart by their first frames (``service.core.likeness``):
a row takes a job only when it clearly looks like its own reference and not like any
twin's. What cannot be settled stays in doubt.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

import httpx
import structlog

from service.core import likeness
from service.core.events import (
    Accepted,
    Event,
    NotFoundAtProvider,
    Transient,
    Unreconcilable,
    Waiting,
)
from service.core.job import Job
from service.core.request import VideoRequest
from service.media import images, prints
from service.providers import base as providers
from service.providers.base import VideoProvider
from service.providers.lookup import Providers, UnknownProvider
from service.worker.archive import take_image

log = structlog.get_logger("service.worker.reconcile")


class Ledger(Protocol):
    """What reconciliation asks about other rows (part of the Repository port; named
    apart so that steps cannot claim, checkpoint or release)."""

    async def recorded_video_ids(self, candidates: Iterable[str]) -> frozenset[str]: ...

    async def twins_in_doubt(
        self, prompt: str, model: str, size: str, seconds: str
    ) -> list[likeness.Twin]: ...


FRAME_CACHE = 512
"""First-frame prints kept per process (a job's first frame never changes): a crash
that leaves many twins in doubt fetches each candidate's thumbnail about once."""
FIRST_FRAME_MAX_BYTES = 32 * 1024 * 1024
"""How much of a video is read to decode its first frame when no thumbnail is served
(a faststart MP4 holds its index and first frame in the first few hundred KiB)."""


class Reconciler:
    """Finds the job an in-doubt create made, for one worker process (its first-frame
    prints cached: a job's first frame never changes)."""

    def __init__(self, providers: Providers, ledger: Ledger) -> None:
        self.providers = providers
        self.ledger = ledger
        self._frames: OrderedDict[str, likeness.Print] = OrderedDict()

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
