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
  cannot retrieve ids it did not mint, and gateways invent statuses (``NOT_START``).

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
from service.providers.base import (
    JobStatus,
    OutcomeUnknown,
    ProviderJob,
    ProviderUnavailable,
    RequestRejected,
    Variant,
    VideoGone,
)
from service.providers.ids import is_litellm_id
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
from service.providers.openai_sdk import connection_limits, quiet
from service.providers.openai_sdk import retrieve as retrieve_video
from service.providers.registry import AdapterOptions

log = structlog.get_logger("service.providers.openai_videos")

STATUS_MAP: dict[str, JobStatus] = {
    "queued": "queued",
    "in_progress": "running",
    "completed": "completed",
    "failed": "failed",
    # Seen in practice although the SDK's enum lacks them.
    "expired": "failed",
    "cancelled": "failed",
}
ODD_STATUSES_REMEMBERED = 10_000
CHUNK_SIZE = 256 * 1024
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
    videos = OpenAIVideos(api_key, base_url, timeout=options.timeout.total_seconds())
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
        # Downloads hold a connection for as long as a video streams: their own pool, so
        # that polls never wait behind them.
        self._download_client = self._client.copy(http_client=openai.DefaultAioHttpClient())
        self.base_url = str(self._client.base_url).rstrip("/")
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
        if request.reference is not None:
            reference = (
                request.reference_filename,
                request.reference,
                request.reference_content_type,
            )
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
        return self._job(video)

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
            if err.status_code != 429 and from_litellm(err) and not is_litellm_id(job_id):
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
        return replace(self._job(video), poll_after=_poll_after(headers))

    @asynccontextmanager
    async def download(
        self, job_id: str, variant: Variant = "video"
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        streaming = self._download_client.videos.with_streaming_response
        try:
            async with quiet(
                lambda: streaming.download_content(job_id, variant=variant)
            ) as response:
                yield _read(response, job_id)
        except (openai.NotFoundError, openai.APIStatusError) as err:
            if err.status_code in (404, 410):
                raise VideoGone(
                    f"the {variant} of {job_id} is gone from {self.base_url}: {message(err)}"
                ) from err
            raise ProviderUnavailable(
                f"download of {job_id} failed ({detail(err)})", retry_after(err)
            ) from err
        except openai.APIConnectionError as err:
            raise ProviderUnavailable(f"download of {job_id} broke off: {err}") from err

    def content_url(self, job_id: str) -> str:
        return f"{self.base_url}/videos/{job_id}/content"

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
        await self._download_client.close()

    def _job(self, video: Any) -> ProviderJob:
        raw = str(video.status)
        status = STATUS_MAP.get(raw)
        if status is None:
            # Gateways invent statuses (one sent NOT_START): treat as running, and say so
            # once per job and status, not on every poll.
            status = "running"
            self._odd_status(str(video.id), raw)
        error, kind = (None, None) if status != "failed" else job_error(video, raw)
        return ProviderJob(
            id=str(video.id),
            status=status,
            progress=int(video.progress or 0),
            raw_status=raw,
            error=error,
            error_kind=kind,
            created_at=_timestamp(video.created_at),
            expires_at=_timestamp(getattr(video, "expires_at", None)),
            prompt=getattr(video, "prompt", None),
            model=str(video.model) if getattr(video, "model", None) else None,
            size=str(video.size) if getattr(video, "size", None) else None,
            seconds=str(video.seconds) if getattr(video, "seconds", None) else None,
        )

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


async def _read(response: Any, job_id: str) -> AsyncIterator[bytes]:
    """The body in chunks; a transport error mid-stream becomes a retryable error."""
    try:
        async for chunk in response.iter_bytes(CHUNK_SIZE):
            yield chunk
    except Exception as err:  # the SDK's HTTP client raises its own transport errors
        raise ProviderUnavailable(f"download of {job_id} broke off: {err!r}") from err
