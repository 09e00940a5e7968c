"""The OpenAI Videos API adapter (``POST /v1/videos``), through the official SDK.

OpenAI shut its own Videos API down on 2026-09-24, but the shape lives on at gateways
(LiteLLM, new-api) and other hosts, so base URL, key and model are free-form settings.
What this adapter adds on top of the SDK:

- create is never retried by the SDK (``max_retries=0``): a retried POST could pay
  twice. Instead each error is sorted into "nothing was created" (retry freely) and
  "a job may exist" (the worker reconciles through ``find_submitted`` first);
- the SDK marks every videos method deprecated; the warning is silenced at each call so
  it does not flood the logs of a worker that calls it every few seconds;
- "model not found" and "gone" become permanent failures that say what to change;
- gateways as they really are (``contracts/providers.md``): a LiteLLM proxy's list
  fails outright (learned by ``probe`` at startup; an in-doubt create there can only
  be settled by a person), its unknown-model answer is a 400 in its own words, it
  cannot retrieve ids it did not mint, and with keys per model it mints ids whose
  model is empty, which it then cannot route (the id is completed with the model
  asked for, ``ids.with_model``); gateways invent statuses (``NOT_START``,
  ``THROTTLED``) or send none (new-api's xAI relay): unknown or missing, a job is still
  running until the generation timeout; ``done``/``succeeded`` mean completed;
- downloads go through ``Delivery`` (``service.media.delivery``), never the SDK's
  redirect-following client: a finished job that names its file inline (``url``,
  ``video.url``, ``metadata.url``: new-api's xAI relay) is fetched from there first,
  if its host is allowed, else ``/videos/{id}/content``, whose redirects are each
  checked and never carry the key.

Beside it: ``openai_errors`` (what a host's errors mean), ``openai_listing`` (the job
list: probe and reconciliation) and ``openai_sdk`` (the SDK's edges, public API only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import structlog

from service.core.diagnosis import Finding
from service.core.request import VideoRequest
from service.media.delivery import (
    Delivery,
    DeliveryError,
    DeliveryFailed,
    DeliveryGone,
    DeliveryRefused,
)
from service.providers.base import (
    JobStatus,
    OutcomeUnknown,
    ProviderError,
    ProviderJob,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    Variant,
    VideoGone,
)
from service.providers.ids import is_litellm_id, with_model
from service.providers.openai_errors import (
    create_error,
    detail,
    from_litellm,
    job_error,
    message,
    never_connected,
    retry_after,
)
from service.providers.openai_listing import JobListing
from service.providers.openai_sdk import connection_limits, path_segment, quiet
from service.providers.openai_sdk import retrieve as retrieve_video
from service.providers.registry import AdapterOptions

log = structlog.get_logger("service.providers.openai_videos")

STATUS_MAP: dict[str, JobStatus] = {
    "queued": "queued",
    "in_progress": "running",
    "completed": "completed",
    "failed": "failed",
    # Seen in practice although the SDK's enum lacks them (matched in any case): relays
    # pass their upstream's words through (new-api's xAI relay: done).
    "expired": "failed",
    "cancelled": "failed",
    "canceled": "failed",
    "done": "completed",
    "succeeded": "completed",
}
MISSING_STATUS = "(none)"
"""How a job without a status is logged and recorded (new-api's xAI relay sends none
at times): it counts as still running."""
ODD_STATUSES_REMEMBERED = 10_000
INLINE_URLS_REMEMBERED = 1000
DOWNLOAD_MAX_BYTES = 2 * 1024**3
"""The largest file taken from a host when the worker gave no limit (tests)."""
STATUS_LIMITS = connection_limits(8, 8, 30.0)
"""Connections for polls, listings and cancels. Few on purpose: each of these calls
takes milliseconds, so 8 carry hundreds of polls a second, and a host is not held to
one open connection per row in flight (the SDK's default keeps 100)."""
CREATE_LIMITS = connection_limits(16, 4, 30.0)
"""Connections for creates, which take seconds each (the reference photo goes up)."""


def _timestamp(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def _poll_after(headers: Mapping[str, str]) -> timedelta | None:
    """The host's ``openai-poll-after-ms`` (what the SDK's own ``poll()`` honours)."""
    try:
        value = float(headers.get("openai-poll-after-ms", ""))
    except ValueError:
        return None
    return timedelta(milliseconds=value) if 0 < value < 86_400_000 else None


async def open_adapter(api_key: str, base_url: str | None, options: AdapterOptions) -> OpenAIVideos:
    """The adapter as a worker runs it (``providers.registry``): probed once, so the log
    says whether this host can list its jobs (reconcile a create in doubt)."""
    videos = OpenAIVideos(
        api_key, base_url, timeout=options.timeout.total_seconds(), delivery=options.delivery
    )
    await videos.probe()
    return videos


class OpenAIVideos:
    """``VideoProvider`` for any host of the OpenAI Videos API."""

    name = "openai"

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 2,
        delivery: Delivery | None = None,
    ) -> None:
        # Polls, listings and downloads go through the SDK's aiohttp transport: about
        # 40 % less CPU per poll and twice the download speed of its default HTTPX2
        # transport (bench/transport.py).
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=openai.DefaultAioHttpClient(limits=STATUS_LIMITS),
        )
        self.submit_timeout = timedelta(seconds=timeout)
        # The POST that costs money is made exactly once per call (see module
        # docstring), on the default transport: it tells a connection that never opened
        # (ConnectError, nothing was sent) from one dropped after the request went out.
        # The aiohttp transport reports both as ConnectTimeout, which would let a create
        # that reached the host be sent again.
        self._create_client = self._client.copy(
            max_retries=0, http_client=openai.DefaultAsyncHttpxClient(limits=CREATE_LIMITS)
        )
        self.base_url = str(self._client.base_url).rstrip("/")
        # Downloads: each on a connection of its own, pinned and checked hop by hop.
        guard = delivery or Delivery((), max_bytes=DOWNLOAD_MAX_BYTES, timeout=timeout)
        self.delivery = guard.with_origin(self.base_url)
        self._api_key = api_key
        self._inline: dict[str, str] = {}
        """The inline file URL of each recently finished job that named one."""
        self.listing = JobListing(self._client, self.base_url, self._job)
        """Whether the host can list its jobs, and reconciliation through that list."""
        self._odd_statuses: dict[str, str] = {}

    def validate(self, model: str, size: str, seconds: str) -> None:
        """Nothing of its own: ``models.py`` checks the models we have facts for, and
        the host judges the rest (a refusal arrives as a 400 and fails the row)."""

    async def probe(self) -> bool | None:
        """Can this host list its jobs? (``JobListing.probe``, once at startup.)"""
        return await self.listing.probe()

    async def submit(self, request: VideoRequest) -> ProviderJob:
        reference: Any = openai.omit
        first = request.image("first_frame")
        if first is not None:  # the shape carries one image: the first frame
            reference = (first.filename, first.data, first.content_type)
        try:
            video = await quiet(
                lambda: self._create_client.videos.create(
                    prompt=request.prompt,
                    model=request.model,
                    size=request.size,  # type: ignore[arg-type]  # free-form for gateways
                    seconds=request.seconds,  # type: ignore[arg-type]
                    input_reference=reference,
                    extra_headers={"Idempotency-Key": request.idempotency_key},
                )
            )
        except openai.APIConnectionError as err:
            if never_connected(err):
                raise ProviderUnavailable(f"cannot reach {self.base_url}: {err}") from err
            raise OutcomeUnknown(f"no answer from {self.base_url} to create: {err}") from err
        except openai.APIStatusError as err:
            raise create_error(err, request.model, self.base_url) from err
        job = self._job(video)
        # LiteLLM with keys per model mints ids whose model part is empty, and cannot
        # route them afterwards (litellm#33423): complete the id with the model asked for.
        return replace(job, id=with_model(job.id, request.model))

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        """Every job since the intent that matches ``request`` (``JobListing``)."""
        return await self.listing.find_submitted(request, submitted_after)

    async def retrieve(self, job_id: str) -> ProviderJob:
        # With the answer's headers, for the host's poll-after hint (openai_sdk.retrieve).
        try:
            video, headers = await retrieve_video(self._client, job_id)
        except openai.NotFoundError as err:
            raise VideoGone(f"job {job_id} no longer exists at {self.base_url}") from err
        except openai.APIConnectionError as err:
            raise ProviderUnavailable(f"cannot reach {self.base_url}: {err}") from err
        except openai.APIStatusError as err:
            if err.status_code == 429:
                raise RateLimited(
                    f"status of {job_id} unavailable ({detail(err)})", retry_after(err)
                ) from err
            if from_litellm(err) and not is_litellm_id(job_id):
                # Not an outage: a LiteLLM proxy routes by the id it minted, so it can
                # never poll a job made elsewhere. Polling for hours would not help.
                raise RequestRejected(
                    f"{self.base_url} is a LiteLLM gateway and cannot look up {job_id}, an id "
                    f"it did not mint ({detail(err)}); adopt the id this gateway returned, "
                    "or point OPENAI_BASE_URL at the host that made the job"
                ) from err
            raise ProviderUnavailable(
                f"status of {job_id} unavailable ({detail(err)})", retry_after(err)
            ) from err
        # Under the id asked for: a gateway may spell the same job another way (LiteLLM
        # re-encodes its ids), and the one this worker holds is the one that routes.
        job = self._job(video)
        if job.status == "completed":
            self._remember_inline(job_id, video)
        return replace(job, id=job_id, poll_after=_poll_after(headers))

    @asynccontextmanager
    async def download(
        self, job_id: str, variant: Variant = "video"
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The job's file: from its inline URL when it named one (and its host is
        allowed), else ``/content``; both through ``Delivery``."""
        what = f"the {variant} of {job_id}"
        inline = self._inline.get(job_id) if variant == "video" else None
        if inline is not None and self.delivery.allows(inline):
            try:
                async with self.delivery.stream(inline, what) as chunks:
                    yield _delivered(chunks, what)
                    return
            except (DeliveryRefused, DeliveryGone, DeliveryFailed) as err:
                log.warning("provider.inline_url_failed", video_id=job_id, error=str(err))
        elif inline is not None:
            log.warning(
                "provider.inline_url_refused",
                video_id=job_id,
                message="its host is not a delivery host of this provider "
                "(SORA_DELIVERY_HOSTS); trying /content",
            )
        url = f"{self._content(job_id)}?variant={variant}"
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/binary"}
        try:
            async with self.delivery.stream(url, what, headers) as chunks:
                yield _delivered(chunks, what)
        except DeliveryError as err:
            raise _delivery_error(err, what, self.base_url) from err

    def content_url(self, job_id: str) -> str:
        """The file a finished job named inline when this worker saw one, else its
        ``/content`` address (the id escaped as the SDK escapes it)."""
        return self._inline.get(job_id) or self._content(job_id)

    def _content(self, job_id: str) -> str:
        return f"{self.base_url}/videos/{path_segment(job_id)}/content"

    async def diagnose(self, model: str) -> list[Finding]:
        """``doctor``'s provider lines: reachable with this key, ``model`` served (where
        the host lists its models), and listing supported (reconciliation needs it)."""
        where = self.base_url
        try:
            page = await self._client.with_options(max_retries=0).models.list()
            served = [m.id async for m in page]
        except openai.APIConnectionError as err:
            return [
                Finding(
                    "provider",
                    "FAIL",
                    f"cannot reach {where}: {err}",
                    "check OPENAI_BASE_URL and the network path to it",
                )
            ]
        except openai.AuthenticationError:
            return [Finding("provider", "FAIL", f"{where} refused the key", "check OPENAI_API_KEY")]
        except openai.APIStatusError as err:
            found = [Finding("provider", "OK", f"{where} answers (HTTP {err.status_code})")]
            found.append(
                Finding(
                    "model",
                    "WARN",
                    f"{where} lists no models (HTTP {err.status_code}); "
                    f"cannot tell whether {model!r} is served",
                    "make sure SORA_MODEL is a model this host serves",
                )
            )
        else:
            found = [Finding("provider", "OK", f"{where} answers with this key")]
            if model in served:
                found.append(Finding("model", "OK", f"{model!r} is served"))
            else:
                shown = ", ".join(sorted(served)[:10]) or "none"
                found.append(
                    Finding(
                        "model",
                        "FAIL",
                        f"{model!r} is not among the served models ({shown})",
                        "set SORA_MODEL to a served model (sora-2 was retired by OpenAI on "
                        "2026-09-24; gateways serve others)",
                    )
                )
        found.append(await self.listing.diagnose())
        return found

    async def cancel(self, job_id: str) -> None:
        """The API has no cancel: ``DELETE /videos/{id}`` removes the job (and its files).
        A job already gone counts as cancelled."""
        try:
            await quiet(lambda: self._client.videos.delete(job_id))
        except openai.NotFoundError:
            return
        except openai.APIConnectionError as err:
            raise ProviderUnavailable(f"cannot reach {self.base_url}: {err}") from err
        except openai.APIStatusError as err:
            raise ProviderUnavailable(
                f"deleting {job_id} failed (HTTP {err.status_code}: {message(err)})"
            ) from err

    async def aclose(self) -> None:
        await self._client.close()
        await self._create_client.close()

    def _job(self, video: Any) -> ProviderJob:
        said = getattr(video, "status", None)
        raw = str(said) if said else MISSING_STATUS
        status = STATUS_MAP.get(raw.casefold())
        if status is None:
            # Gateways invent statuses (NOT_START, THROTTLED) or send none: treat as
            # running (the generation timeout still ends it), and say so once per job
            # and status, not on every poll.
            status = "running"
            self._odd_status(str(video.id), raw)
        error, kind = (None, None) if status != "failed" else job_error(video, raw.casefold())
        return ProviderJob(
            id=str(video.id),
            status=status,
            progress=int(getattr(video, "progress", None) or 0),
            raw_status=raw,
            error=error,
            error_kind=kind,
            created_at=_timestamp(getattr(video, "created_at", None)),
            finished_at=_timestamp(getattr(video, "completed_at", None)),
            expires_at=_timestamp(getattr(video, "expires_at", None)),
            prompt=getattr(video, "prompt", None),
            model=str(video.model) if getattr(video, "model", None) else None,
            size=str(video.size) if getattr(video, "size", None) else None,
            seconds=str(video.seconds) if getattr(video, "seconds", None) else None,
        )

    def _remember_inline(self, video_id: str, video: Any) -> None:
        url = inline_url(video)
        if url is None:
            return
        if len(self._inline) >= INLINE_URLS_REMEMBERED:
            self._inline.clear()  # bounded; a forgotten one is found by the next poll
        self._inline[video_id] = url

    def _odd_status(self, video_id: str, raw: str) -> None:
        if self._odd_statuses.get(video_id) == raw:
            return
        if len(self._odd_statuses) >= ODD_STATUSES_REMEMBERED:
            self._odd_statuses.clear()  # bounded memory; at worst a status is said again
        self._odd_statuses[video_id] = raw
        log.warning(
            "provider.unknown_status",
            video_id=video_id,
            status=raw,
            message="not a status of the Videos API; counted as still running",
        )


def inline_url(video: Any) -> str | None:
    """The file URL a finished job names itself, where relays put it: ``url``,
    ``video.url`` (new-api relaying xAI), ``video_url`` or ``metadata.url``."""
    extra = getattr(video, "model_extra", None) or {}
    candidates = [extra.get("url"), extra.get("video_url")]
    for holder in (extra.get("video"), extra.get("metadata"), getattr(video, "metadata", None)):
        if isinstance(holder, dict):
            candidates.append(holder.get("url"))
    return next(
        (c for c in candidates if isinstance(c, str) and c.startswith(("http://", "https://"))),
        None,
    )


async def _delivered(chunks: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    """The body in chunks; a failure mid-stream becomes a retryable error."""
    try:
        async for chunk in chunks:
            yield chunk
    except DeliveryError as err:
        raise ProviderUnavailable(f"{what} broke off: {err}") from err


def _delivery_error(err: DeliveryError, what: str, base_url: str) -> ProviderError:
    if isinstance(err, DeliveryGone):
        return VideoGone(f"{what} is gone from {base_url}: {err}")
    if isinstance(err, DeliveryRefused):
        return VideoGone(f"refused to download {what}: {err}")
    assert isinstance(err, DeliveryFailed)
    pause = None if err.retry_after is None else timedelta(seconds=err.retry_after)
    if err.status == 429:
        return RateLimited(f"download of {what} rate limited: {err}", pause)
    return ProviderUnavailable(f"download of {what} failed: {err}", pause)
