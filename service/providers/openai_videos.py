"""The OpenAI Videos API adapter (``POST /v1/videos``), through the official SDK.

OpenAI shut its own Videos API down on 2026-09-24, but the shape lives on at gateways
(LiteLLM, new-api) and other hosts, so base URL, key and model are free-form settings.
What this adapter adds on top of the SDK:

- create is never retried by the SDK (``max_retries=0``): a retried POST could pay
  twice. Instead each error is sorted into "nothing was created" (retry freely) and
  "a job may exist" (the worker reconciles through ``find_submitted`` first);
- the SDK marks every videos method deprecated; the warning is silenced at each call so
  it does not flood the logs of a worker that calls it every few seconds;
- "model not found" and "gone" become permanent failures that say what to change.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import openai
import structlog
from openai._constants import (  # pinned SDK
    DEFAULT_CONNECTION_LIMITS,  # the SDK's own Limits type (its vendored httpx's)
    RAW_RESPONSE_HEADER,  # with_raw_response's switch
)

from service.providers.base import (
    JobStatus,
    OutcomeUnknown,
    ProviderError,
    ProviderJob,
    ProviderUnavailable,
    RequestRejected,
    Variant,
    VideoGone,
    VideoRequest,
)

log = structlog.get_logger("service.providers.openai_videos")

T = TypeVar("T")

# Sora 2's own limits, from OpenAI's docs. Other models (behind gateways) are checked
# by the provider itself; a refusal there arrives as a 400 and fails the row clearly.
SORA_SECONDS = frozenset({"4", "8", "12"})
SORA_SIZES = {
    "sora-2-pro": frozenset({"720x1280", "1280x720", "1024x1792", "1792x1024"}),
    "sora-2": frozenset({"720x1280", "1280x720"}),
}

STATUS_MAP: dict[str, JobStatus] = {
    "queued": "queued",
    "in_progress": "running",
    "completed": "completed",
    "failed": "failed",
    # Seen in practice although the SDK's enum lacks them.
    "expired": "failed",
    "cancelled": "failed",
}
CHUNK_SIZE = 256 * 1024
STATUS_LIMITS = DEFAULT_CONNECTION_LIMITS.__class__(
    max_connections=8, max_keepalive_connections=8, keepalive_expiry=30.0
)
"""Connections for polls, creates and listings. Few on purpose: before each request the
HTTP pool checks every idle connection it keeps (a ``select`` on each socket), which
with the SDK's default (100 kept alive, one per concurrent row) cost most of a poll's
CPU; each of these calls takes milliseconds, so 8 carry hundreds of polls a second."""
RECONCILE_SLACK = timedelta(minutes=2)
RECONCILE_MAX_PAGES = 50


def _quiet(call: Callable[[], T]) -> T:
    """Run an SDK call with its DeprecationWarning silenced.

    The SDK's ``@deprecated`` wrapper warns synchronously when the method is called,
    before any await, so this block holds no await and is safe under asyncio.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return call()


def _timestamp(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def _retry_after(err: openai.APIStatusError) -> timedelta | None:
    headers = err.response.headers
    try:
        if "retry-after-ms" in headers:
            return timedelta(milliseconds=float(headers["retry-after-ms"]))
        if "retry-after" in headers:
            return timedelta(seconds=float(headers["retry-after"]))
    except ValueError:
        return None
    return None


def _poll_after(headers: Mapping[str, str]) -> timedelta | None:
    """The host's ``openai-poll-after-ms`` (what the SDK's own ``poll()`` honours)."""
    try:
        value = float(headers.get("openai-poll-after-ms", ""))
    except ValueError:
        return None
    return timedelta(milliseconds=value) if 0 < value < 86_400_000 else None


def _error_code(err: openai.APIStatusError) -> str | None:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code") is not None:
            return str(inner["code"])
    return err.code


def _never_connected(err: openai.APIConnectionError) -> bool:
    """True when the request provably never reached the server (connect failed)."""
    cause = err.__cause__
    return cause is not None and type(cause).__name__ in {"ConnectError", "ConnectTimeout"}


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
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=openai.DefaultAsyncHttpxClient(limits=STATUS_LIMITS),
        )
        self.submit_timeout = timedelta(seconds=timeout)
        # The POST that costs money is made exactly once per call; see module docstring.
        self._create_client = self._client.with_options(max_retries=0)
        # Downloads hold a connection for as long as a video streams: their own pool, so
        # that polls never wait behind them.
        self._download_client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )
        self.base_url = str(self._client.base_url).rstrip("/")

    def validate(self, model: str, size: str, seconds: str) -> None:
        family = next((name for name in SORA_SIZES if model.startswith(name)), None)
        if family is None:
            return
        if size not in SORA_SIZES[family]:
            allowed = ", ".join(sorted(SORA_SIZES[family]))
            raise RequestRejected(f"size {size} is not offered by {model}; use one of {allowed}")
        if seconds not in SORA_SECONDS:
            raise RequestRejected(f"seconds {seconds} is not offered by {model}; use 4, 8 or 12")

    async def submit(self, request: VideoRequest) -> ProviderJob:
        reference: Any = openai.omit
        if request.reference is not None:
            reference = (
                request.reference_filename,
                request.reference,
                request.reference_content_type,
            )
        try:
            video = await _quiet(
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
            if _never_connected(err):
                raise ProviderUnavailable(f"cannot reach {self.base_url}: {err}") from err
            raise OutcomeUnknown(f"no answer from {self.base_url} to create: {err}") from err
        except openai.APIStatusError as err:
            raise self._create_error(err, request) from err
        return self._job(video)

    def _create_error(self, err: openai.APIStatusError, request: VideoRequest) -> ProviderError:
        status, code = err.status_code, _error_code(err)
        detail = f"HTTP {status}{f' {code}' if code else ''}: {_message(err)}"
        if (status == 404 and code == "model_not_found") or status == 410:
            return RequestRejected(
                f"model {request.model!r} is not available at {self.base_url} ({detail}). "
                "Set SORA_MODEL (or the row's model) to a model this provider serves, "
                "or OPENAI_BASE_URL to a gateway that serves this one."
            )
        if status == 404:
            return RequestRejected(
                f"{self.base_url}/videos does not exist ({detail}). "
                "Check OPENAI_BASE_URL: it should end in /v1 of a Videos API host."
            )
        if status in (401, 403):
            return ProviderUnavailable(
                f"the provider refused our credentials ({detail}); check OPENAI_API_KEY"
            )
        if status == 429:
            return ProviderUnavailable(f"rate limited ({detail})", _retry_after(err))
        if status == 408 or status >= 500:
            return OutcomeUnknown(f"provider error on create ({detail})", _retry_after(err))
        return RequestRejected(f"the provider refused the request ({detail})")

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        """Every job created since our intent was recorded that matches what we sent.

        The Videos API stores no client metadata, so the best evidence is the echoed
        prompt, model, size and seconds of jobs created after ``submitted_after`` (less
        clock slack). When the answer cannot be complete (the list does not reach back
        that far, or the host does not echo prompts) this raises instead of returning
        too little: an incomplete "nothing found" would pay twice.
        """
        horizon = submitted_after - RECONCILE_SLACK
        found: list[ProviderJob] = []
        try:
            page = await _quiet(lambda: self._client.videos.list(limit=100, order="desc"))
            for pages in range(1, RECONCILE_MAX_PAGES + 1):
                for video in page.data:
                    job = self._job(video)
                    if job.created_at is not None and job.created_at < horizon:
                        return found
                    if job.prompt is None:
                        raise ProviderUnavailable(
                            f"{self.base_url} does not echo prompts in its job list, so the "
                            "earlier submission cannot be told apart from other jobs"
                        )
                    if _matches(job, request):
                        found.append(job)
                if not page.has_next_page():
                    return found
                if pages < RECONCILE_MAX_PAGES:
                    page = await page.get_next_page()
        except openai.APIConnectionError as err:
            raise ProviderUnavailable(f"cannot list jobs at {self.base_url}: {err}") from err
        except openai.APIStatusError as err:
            raise ProviderUnavailable(
                f"cannot list jobs at {self.base_url} (HTTP {err.status_code}: {_message(err)})",
                _retry_after(err),
            ) from err
        raise ProviderUnavailable(
            f"more than {RECONCILE_MAX_PAGES * 100} jobs were created at {self.base_url} since "
            "the earlier submission; cannot reach back to it"
        )

    async def retrieve(self, job_id: str) -> ProviderJob:
        # The raw response, for its poll-after header: what ``with_raw_response`` does,
        # asked for directly so that the deprecated method is called inside ``_quiet``
        # (the wrapper would call it later, inside its own coroutine, and warn).
        raw = {RAW_RESPONSE_HEADER: "true"}
        try:
            response: Any = await _quiet(
                lambda: self._client.videos.retrieve(job_id, extra_headers=raw)
            )
            video = response.parse()
        except openai.NotFoundError as err:
            raise VideoGone(f"job {job_id} no longer exists at {self.base_url}") from err
        except openai.APIConnectionError as err:
            raise ProviderUnavailable(f"cannot reach {self.base_url}: {err}") from err
        except openai.APIStatusError as err:
            raise ProviderUnavailable(
                f"status of {job_id} unavailable (HTTP {err.status_code}: {_message(err)})",
                _retry_after(err),
            ) from err
        return replace(self._job(video), poll_after=_poll_after(response.headers))

    @asynccontextmanager
    async def download(
        self, job_id: str, variant: Variant = "video"
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        streaming = self._download_client.videos.with_streaming_response
        try:
            async with _quiet(
                lambda: streaming.download_content(job_id, variant=variant)
            ) as response:
                yield _read(response, job_id)
        except (openai.NotFoundError, openai.APIStatusError) as err:
            if err.status_code in (404, 410):
                raise VideoGone(
                    f"the {variant} of {job_id} is gone from {self.base_url}: {_message(err)}"
                ) from err
            raise ProviderUnavailable(
                f"download of {job_id} failed (HTTP {err.status_code}: {_message(err)})",
                _retry_after(err),
            ) from err
        except openai.APIConnectionError as err:
            raise ProviderUnavailable(f"download of {job_id} broke off: {err}") from err

    def content_url(self, job_id: str) -> str:
        return f"{self.base_url}/videos/{job_id}/content"

    async def aclose(self) -> None:
        await self._client.close()
        await self._download_client.close()

    def _job(self, video: Any) -> ProviderJob:
        raw = str(video.status)
        status = STATUS_MAP.get(raw)
        if status is None:
            # Gateways invent statuses (one sent NOT_START): treat as running, say so.
            log.warning("provider.unknown_status", video_id=video.id, status=raw)
            status = "running"
        error = None
        if status == "failed":
            error = _job_error(video, raw)
        return ProviderJob(
            id=str(video.id),
            status=status,
            progress=int(video.progress or 0),
            raw_status=raw,
            error=error,
            created_at=_timestamp(video.created_at),
            expires_at=_timestamp(getattr(video, "expires_at", None)),
            prompt=getattr(video, "prompt", None),
            model=str(video.model) if getattr(video, "model", None) else None,
            size=str(video.size) if getattr(video, "size", None) else None,
            seconds=str(video.seconds) if getattr(video, "seconds", None) else None,
        )


async def _read(response: Any, job_id: str) -> AsyncIterator[bytes]:
    """The body in chunks; a transport error mid-stream becomes a retryable error."""
    try:
        async for chunk in response.iter_bytes(CHUNK_SIZE):
            yield chunk
    except Exception as err:  # the SDK's HTTP client raises its own transport errors
        raise ProviderUnavailable(f"download of {job_id} broke off: {err!r}") from err


def _message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return err.message


def _job_error(video: Any, raw_status: str) -> str:
    if raw_status == "expired":
        return "the provider expired the job before it could be archived"
    err = getattr(video, "error", None)
    code = getattr(err, "code", None) if err is not None else None
    message = getattr(err, "message", None) if err is not None else None
    if code or message:
        return f"the provider failed the job ({code or 'error'}): {message or 'no details'}"
    return "the provider failed the job without saying why"


def _matches(job: ProviderJob, request: VideoRequest) -> bool:
    if job.prompt != request.prompt:
        return False  # without the prompt echoed back, nothing proves the job is ours
    pairs = (
        (job.model, request.model),
        (job.size, request.size),
        (job.seconds, request.seconds),
    )
    return all(theirs is None or theirs == ours for theirs, ours in pairs)
