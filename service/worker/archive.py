"""The archive and describe steps: a finished video into the store, recorded at once,
then its media.

The video is what was paid for and what expires at the provider, so ``archive`` does
nothing but store it, and the row records it (URL, size, SHA-256) before anything else
happens. ``describe`` then makes the rest, best effort: the provider's thumbnail (taken
only if its bytes are an image), the media facts, poster and rendition
(``service.worker.archive_media``). Errors become the machine's events, as in
``service.worker.steps``.

Idempotent against a crash at any line: the key is the row's and the job's
(``{row}/{video}.mp4``), and the store replaces what is at it, so an attempt after a
crash stores the video again. When the provider can no longer give it (gone, failing,
past its expiry), the attempt looks in the store first: a video an earlier attempt
stored before it crashed is read back, measured and recorded (``Archived.recovered``).
Only a store that said "not here" lets the row fail as ``expired``; one that cannot
say keeps it trying (``StoreSilent``).

The copy that streams past on the way in (a scratch file) is kept for this row's
``describe``, which the same claim runs next, so the media need no second download;
after a crash or on another replica, ``describe`` reads the video back from the store
(never from the provider, whose copy may be gone).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import httpx
import structlog

from service.core.events import (
    Archived,
    Described,
    Event,
    Media,
    StoreSilent,
    Transient,
    Vanished,
)
from service.core.job import Job, RowId
from service.media import fetch, images, thumbnails
from service.providers import base as providers
from service.providers.lookup import Providers, UnknownProvider
from service.storage.base import ObjectStore, StorageError, StoredObject, measure
from service.worker.archive_media import Describer, ScratchCopy

log = structlog.get_logger("service.worker.steps")  # the step's log, as the other steps'

THUMBNAIL_MAX_BYTES = 20_000_000
"""The largest provider thumbnail taken into memory (anything bigger is not one)."""


class Archiver:
    """Performs the machine's archive and describe actions for one worker process."""

    def __init__(
        self, providers: Providers, store: ObjectStore, video_bucket: str, rendition_kbps: int
    ) -> None:
        self.providers = providers
        self.store = store
        self.video_bucket = video_bucket
        self.describer = Describer(store, video_bucket, rendition_kbps)
        self._kept: dict[RowId, ScratchCopy] = {}
        """The scratch copy of each row whose video this process just stored, until its
        describe step (or ``release``) takes it."""

    async def archive(self, job: Job) -> Event:
        """Stream the video from the provider into the store; never whole in memory.

        When that fails, look for it in the store before saying so (module docstring).
        """
        assert job.video_id is not None, "archiving rows always hold a video_id"
        key = f"{_name(job)}.mp4"
        copy = await ScratchCopy().open()
        kept = False
        try:
            outcome = await self._copy(job, job.video_id, key, copy)
            if isinstance(outcome, StoredObject):
                kept = self._keep(job.id, copy)
                return Archived(outcome.url, outcome.size, outcome.sha256)
            try:
                found = await measure(self.store, self.video_bucket, key, tap=copy.tap)
            except StorageError as err:
                return StoreSilent(
                    f"{outcome.reason}; whether storage already holds the video is unknown ({err})"
                )
            if found is None:
                return outcome
            log.warning(
                "video.archive_recovered",
                video_id=job.video_id,
                reason=outcome.reason,
                video_bytes=found.size,
            )
            kept = self._keep(job.id, copy)
            return Archived(found.url, found.size, found.sha256, recovered=True)
        finally:
            if not kept:
                await copy.close()

    async def _copy(
        self, job: Job, video_id: str, key: str, copy: ScratchCopy
    ) -> StoredObject | Transient | Vanished:
        try:
            provider = self.providers.get(job.provider)
            async with provider.download(video_id, "video") as chunks:
                return await self.store.put(self.video_bucket, key, copy.tap(chunks), "video/mp4")
        except UnknownProvider as err:
            return Transient(str(err))
        except providers.VideoGone as err:
            return Vanished(f"the video is gone from the provider before it was archived: {err}")
        except providers.ProviderError as err:
            return Transient(str(err), err.retry_after)
        except StorageError as err:
            # Even a refusal (bucket too small, wrong type) is a setting the operator can
            # fix while the provider still holds the video: keep trying (StorageError).
            return Transient(f"storage refused the video: {err}")
        except httpx.HTTPError as err:
            return Transient(f"archive interrupted: {fetch.describe_http_error(err)}")
        except OSError as err:
            return Transient(f"archive interrupted: {err.strerror or 'an I/O error'}")
        except Exception as err:
            # A bug (ours or a library's): the store is still asked whether it holds the
            # video, so even this never fails a stored video as expired.
            log.exception("video.archive_crashed", video_id=video_id)
            return Transient(f"internal error in archive: {type(err).__name__}")

    def _keep(self, row_id: RowId, copy: ScratchCopy) -> bool:
        """Hand a whole copy on to this row's describe step; False if it is not whole."""
        if not copy.complete or copy.path is None:
            return False
        self._kept[row_id] = copy  # a row runs one step at a time: nothing to replace
        return True

    async def release(self, row_id: RowId) -> None:
        """Drop a copy no describe step took (the claim ended first)."""
        copy = self._kept.pop(row_id, None)
        if copy is not None:
            await copy.close()

    async def describe(self, job: Job) -> Event:
        """The stored video's thumbnail and media. Never fails the row: only a store
        that cannot give the video back at all asks to be retried (``Transient``)."""
        assert job.video_id is not None, "describing rows always hold a video_id"
        name = _name(job)
        copy = self._kept.pop(job.id, None)
        try:
            if copy is None:
                copy = await ScratchCopy().open()
                try:
                    found = await measure(self.store, self.video_bucket, f"{name}.mp4", copy.tap)
                except StorageError as err:
                    return Transient(f"could not read the stored video back: {err}")
                if found is None:
                    log.warning("video.media_skipped", part="all", error="the stored video is gone")
            thumbnail_url = await self._provider_thumbnail(job, job.video_id, f"{name}.webp")
            media = Media()
            if copy.complete and copy.path is not None:
                media = await self.describer.describe(name, copy.path)
            return Described(thumbnail_url or media.poster_url, media)
        finally:
            if copy is not None:
                await copy.close()

    async def _provider_thumbnail(self, job: Job, video_id: str, key: str) -> str | None:
        """The provider's thumbnail as WebP, only if its bytes really are an image.

        Best effort: a missing thumbnail never costs a finished video. A host that
        answers with the MP4 (a LiteLLM proxy drops the variant) or has none gets None,
        and the row's thumbnail is then the poster made from the archived video's first
        frame. The download is capped; it is never the video twice.
        """
        try:
            provider = self.providers.get(job.provider)
        except UnknownProvider:
            return None
        try:
            # Bounded in time as in bytes: a trickling thumbnail must not hold the row.
            async with asyncio.timeout(provider.submit_timeout.total_seconds()) as bound:
                head, data = await take_image(provider.download(video_id, "thumbnail"))
            if data is None:
                if thumbnails.is_mp4(head):
                    log.info("video.thumbnail_was_the_video", video_id=video_id)
                elif head:
                    log.info("video.thumbnail_not_an_image", video_id=video_id)
                return None
            image = await images.in_photo_thread(lambda: thumbnails.as_webp(data))
            stored = await self.store.put(self.video_bucket, key, _once(image), "image/webp")
        except providers.ProviderError as err:
            log.info("video.thumbnail_missing", video_id=video_id, error=str(err))
            return None
        except TimeoutError as err:  # before OSError, of which it is a kind
            within = provider.submit_timeout.total_seconds()
            said = f"no whole thumbnail within {within:g} s" if bound.expired() else repr(err)
            log.warning("video.thumbnail_skipped", row_id=str(job.id), error=said)
            return None
        except (StorageError, httpx.HTTPError, OSError) as err:
            log.warning("video.thumbnail_skipped", row_id=str(job.id), error=str(err))
            return None
        except Exception as err:
            # Decoders (Pillow) raise many kinds for bytes that are not what they claim;
            # whatever it is, the stored video's row must not be retried for it.
            log.warning("video.thumbnail_skipped", row_id=str(job.id), error=repr(err))
            return None
        return stored.url


async def take_image(
    download: AbstractAsyncContextManager[AsyncIterator[bytes]],
) -> tuple[bytes, bytes | None]:
    """A download's first bytes, and the whole of it if those say it is an image of at
    most THUMBNAIL_MAX_BYTES; anything else is left unread (an MP4 is not read twice)."""
    head = b""
    body = bytearray()
    async with download as chunks:
        async for chunk in chunks:
            body += chunk
            if len(head) < 16:
                head = bytes(body[:16])
                if len(head) < 16:
                    continue
                if thumbnails.image_type(head) is None:
                    return head, None
            if len(body) > THUMBNAIL_MAX_BYTES:
                return head, None
    return head, bytes(body) if thumbnails.image_type(head) is not None else None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,100}$")


def _name(job: Job) -> str:
    """The row's files' common name, ``{row}/{video}``: ``.mp4``, ``.webp``, ...."""
    assert job.video_id is not None
    return f"{job.id}/{_key_part(job.video_id)}"


def _key_part(video_id: str) -> str:
    """The provider's id as an object name: each generation gets its own, never reused.

    A remade row must not overwrite the old file, which caches may hold as immutable.
    Ids that are not plain names (gateways mint odd ones) are hashed.
    """
    if _SAFE_KEY.match(video_id):
        return video_id
    return hashlib.sha256(video_id.encode()).hexdigest()[:32]
