"""The archive step: a finished video streamed from its provider into the store.

The video is what was paid for and what expires at the provider, so it is stored
first and nothing after it can fail it: the provider's thumbnail (taken only if its
bytes are an image) and the media facts, poster and rendition
(``service.worker.archive_media``) are best effort. Errors become the machine's
events, as in ``service.worker.steps``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

import httpx
import structlog

from service.core.events import Archived, Event, Transient, Vanished
from service.core.job import Job
from service.media import fetch, images, thumbnails
from service.providers import base as providers
from service.providers.base import VideoProvider
from service.providers.lookup import Providers, UnknownProvider
from service.storage.base import ObjectStore, StorageError
from service.worker.archive_media import Describer, ScratchCopy

log = structlog.get_logger("service.worker.steps")  # the step's log, as the other steps'

THUMBNAIL_MAX_BYTES = 20_000_000
"""The largest provider thumbnail taken into memory (anything bigger is not one)."""


class Archiver:
    """Performs the machine's archive action for one worker process."""

    def __init__(
        self, providers: Providers, store: ObjectStore, video_bucket: str, rendition_kbps: int
    ) -> None:
        self.providers = providers
        self.store = store
        self.video_bucket = video_bucket
        self.describer = Describer(store, video_bucket, rendition_kbps)

    async def archive(self, job: Job) -> Event:
        """Stream the video from the provider into the store; never whole in memory.

        A copy is written to a scratch file on the way (chunk by chunk, as it passes),
        so the media facts, the poster and the rendition are read from local disk
        without a second download; the scratch file is gone when the step ends. The
        row's thumbnail is the provider's when its bytes are an image, else the poster.
        """
        assert job.video_id is not None, "archiving rows always hold a video_id"
        name = f"{job.id}/{_key_part(job.video_id)}"
        async with ScratchCopy() as copy:
            event = await self._archive_video(job, job.video_id, name, copy)
            if isinstance(event, Archived) and copy.complete and copy.path is not None:
                media = await self.describer.describe(name, copy.path)
                thumbnail_url = event.thumbnail_url or media.poster_url
                event = replace(event, media=media, thumbnail_url=thumbnail_url)
            return event

    async def _archive_video(self, job: Job, video_id: str, name: str, copy: ScratchCopy) -> Event:
        key = f"{name}.mp4"
        try:
            provider = self.providers.get(job.provider)
            async with provider.download(video_id, "video") as chunks:
                stored = await self.store.put(self.video_bucket, key, copy.tap(chunks), "video/mp4")
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
        thumbnail_url = await self._provider_thumbnail(job, provider, f"{name}.webp")
        return Archived(stored.url, stored.size, stored.sha256, thumbnail_url)

    async def _provider_thumbnail(self, job: Job, provider: VideoProvider, key: str) -> str | None:
        """The provider's thumbnail as WebP, only if its bytes really are an image.

        Best effort: a missing thumbnail never costs a finished video. A host that
        answers with the MP4 (a LiteLLM proxy drops the variant) or has none gets None,
        and the row's thumbnail is then the poster made from the archived video's first
        frame (``media_steps``). The download is capped; it is never the video twice.
        """
        assert job.video_id is not None
        try:
            # Bounded in time as in bytes: the video is stored; a trickling thumbnail
            # must not keep the row from completing.
            async with asyncio.timeout(provider.submit_timeout.total_seconds()) as bound:
                head, data = await take_image(provider.download(job.video_id, "thumbnail"))
            if data is None:
                if thumbnails.is_mp4(head):
                    log.info("video.thumbnail_was_the_video", video_id=job.video_id)
                elif head:
                    log.info("video.thumbnail_not_an_image", video_id=job.video_id)
                return None
            image = await images.in_photo_thread(lambda: thumbnails.as_webp(data))
            stored = await self.store.put(self.video_bucket, key, _once(image), "image/webp")
        except providers.ProviderError as err:
            log.info("video.thumbnail_missing", video_id=job.video_id, error=str(err))
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
            # whatever it is, the archived video must not be retried for it.
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


def _key_part(video_id: str) -> str:
    """The provider's id as an object name: each generation gets its own, never reused.

    A remade row must not overwrite the old file, which caches may hold as immutable.
    Ids that are not plain names (gateways mint odd ones) are hashed.
    """
    if _SAFE_KEY.match(video_id):
        return video_id
    return hashlib.sha256(video_id.encode()).hexdigest()[:32]
