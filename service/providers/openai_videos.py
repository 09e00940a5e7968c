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

from service.core.diagnosis import Finding
from service.core.request import ErrorKind, VideoRequest
from service.providers.base import (
    CannotReconcile,
    JobStatus,
    OutcomeUnknown,
    ProviderError,
    ProviderJob,
    ProviderUnavailable,
    RequestRejected,
    Variant,
    VideoGone,
)
from service.providers.ids import is_litellm_id
from service.providers.registry import AdapterOptions

log = structlog.get_logger("service.providers.openai_videos")

T = TypeVar("T")

STATUS_MAP: dict[str, JobStatus] = {
    "queued": "queued",
    "in_progress": "running",
    "completed": "completed",
    "failed": "failed",
    # Seen in practice although the SDK's enum lacks them.
    "expired": "failed",
    "cancelled": "failed",
}
SAFETY_CODES = ("moderation", "safety", "content_policy", "content_filter")
"""Error codes (substrings) that mean a content filter stopped the request."""
ODD_STATUSES_REMEMBERED = 10_000
PROBE_TIMEOUT = 10.0
"""The startup probe is one try: a host that does not answer is probed again by use."""
CHUNK_SIZE = 256 * 1024
STATUS_LIMITS = DEFAULT_CONNECTION_LIMITS.__class__(
    max_connections=8, max_keepalive_connections=8, keepalive_expiry=30.0
)
"""Connections for polls, listings and cancels. Few on purpose: each of these calls
takes milliseconds, so 8 carry hundreds of polls a second, and a host is not held to
one open connection per row in flight (the SDK's default keeps 100)."""
CREATE_LIMITS = DEFAULT_CONNECTION_LIMITS.__class__(
    max_connections=16, max_keepalive_connections=4, keepalive_expiry=30.0
)
"""Connections for creates, which take seconds each (the reference photo goes up)."""
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


def _error_field(err: openai.APIStatusError, name: str) -> str | None:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get(name) is not None:
            return str(inner[name])
    return None


def _error_code(err: openai.APIStatusError) -> str | None:
    return _error_field(err, "code") or err.code


def _detail(err: openai.APIStatusError) -> str:
    """``HTTP 400 code: message``; a gateway's code that only repeats the status (LiteLLM
    sends code "400") is said once."""
    status, code = err.status_code, _error_code(err)
    shown = f" {code}" if code and code != str(status) else ""
    return f"HTTP {status}{shown}: {_message(err)}"


def _from_litellm(err: openai.APIStatusError) -> bool:
    """A LiteLLM proxy's own error (its messages name it; its list refusal is this one)."""
    text = _message(err)
    return "litellm" in text.casefold() or "LLM Provider NOT provided" in text


def _kind_of(code: str | None) -> ErrorKind:
    folded = (code or "").casefold()
    return "safety_filtered" if any(w in folded for w in SAFETY_CODES) else "invalid_request"


def _never_connected(err: openai.APIConnectionError) -> bool:
    """True when the request provably never reached the server (connect failed)."""
    cause = err.__cause__
    never = {"ConnectError", "ConnectTimeout", "PoolTimeout"}  # PoolTimeout: no connection yet
    return cause is not None and type(cause).__name__ in never


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
        self.lists_jobs: bool | None = None
        """Whether the host can list its jobs: None until ``probe`` or a list tells."""
        self._list_refusal = ""
        self._odd_statuses: dict[str, str] = {}

    def validate(self, model: str, size: str, seconds: str) -> None:
        """Nothing of its own: ``models.py`` checks the models we have facts for, and
        the host judges the rest (a refusal arrives as a 400 and fails the row)."""

    async def probe(self) -> bool | None:
        """One cheap call at startup: can this host list its jobs (reconcile a create in
        doubt)? Said in the log either way; None when the host is unreachable now."""
        once = self._client.with_options(max_retries=0, timeout=PROBE_TIMEOUT)
        try:
            await _quiet(lambda: once.videos.list(limit=1))
        except openai.APIConnectionError as err:
            log.warning("provider.unreachable", base_url=self.base_url, error=str(err))
            return None
        except openai.APIStatusError as err:
            if not self._cannot_list(err):
                log.warning("provider.list_failed", base_url=self.base_url, error=_detail(err))
                return None
            return False
        self.lists_jobs = True
        log.info("provider.lists_jobs", base_url=self.base_url)
        return True

    def _cannot_list(self, err: openai.APIStatusError) -> bool:
        """Record (and say) that the host cannot list, if ``err`` means that for good:
        any 4xx to a plain list, or a LiteLLM proxy's 5xx (it tries another host)."""
        permanent = 400 <= err.status_code < 500 and err.status_code not in (401, 403, 408, 429)
        if not (permanent or (err.status_code >= 500 and _from_litellm(err))):
            return False
        if self.lists_jobs is not False:
            log.warning(
                "provider.cannot_list",
                base_url=self.base_url,
                error=_detail(err),
                message="this host cannot list its jobs, so a create that gets no clear "
                "answer cannot be reconciled: such a row fails at once (error_kind in_doubt) "
                "with what a person needs to settle it (sora-worker adopt ROW VIDEO_ID)",
            )
        self.lists_jobs = False
        self._list_refusal = _detail(err)
        return True

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
        detail = _detail(err)
        if status == 410:
            return RequestRejected(
                f"model {request.model!r} is gone from {self.base_url} ({detail}). "
                "Set SORA_MODEL (or the row's model) to a model this host serves.",
                kind="model_retired",
            )
        if (status == 404 and code == "model_not_found") or _unknown_model(err):
            return RequestRejected(
                f"model {request.model!r} is not available at {self.base_url} ({detail}). "
                "Set SORA_MODEL (or the row's model) to a model this host serves "
                "(a gateway lists them at /v1/models), or OPENAI_BASE_URL to a host that "
                "serves this one."
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
        return RequestRejected(f"the provider refused the request ({detail})", _kind_of(code))

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
        if self.lists_jobs is False:
            raise CannotReconcile(f"its list fails ({self._list_refusal})")
        horizon = submitted_after - RECONCILE_SLACK
        found: list[ProviderJob] = []
        try:
            page = await _quiet(lambda: self._client.videos.list(limit=100, order="desc"))
            self.lists_jobs = True
            for pages in range(1, RECONCILE_MAX_PAGES + 1):
                for video in page.data:
                    job = self._job(video)
                    if job.created_at is not None and job.created_at < horizon:
                        return found
                    if job.prompt is None:
                        raise CannotReconcile(
                            "its job list does not echo prompts, so the earlier submission "
                            "cannot be told apart from other jobs"
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
            if self._cannot_list(err):
                raise CannotReconcile(f"its list fails ({_detail(err)})") from err
            raise ProviderUnavailable(
                f"cannot list jobs at {self.base_url} ({_detail(err)})", _retry_after(err)
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
            if err.status_code != 429 and _from_litellm(err) and not is_litellm_id(job_id):
                # Not an outage: a LiteLLM proxy routes by the id it minted, so it can
                # never poll a job made elsewhere. Polling for hours would not help.
                raise RequestRejected(
                    f"{self.base_url} is a LiteLLM gateway and cannot look up {job_id}, an id "
                    f"it did not mint ({_detail(err)}); adopt the id this gateway returned, "
                    "or point OPENAI_BASE_URL at the host that made the job"
                ) from err
            raise ProviderUnavailable(
                f"status of {job_id} unavailable ({_detail(err)})", _retry_after(err)
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
                f"download of {job_id} failed ({_detail(err)})", _retry_after(err)
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
        found.append(await self._diagnose_listing())
        return found

    async def _diagnose_listing(self) -> Finding:
        try:
            await _quiet(lambda: self._client.with_options(max_retries=0).videos.list(limit=1))
        except openai.APIError as err:
            return Finding(
                "list videos",
                "FAIL",
                f"GET /videos?limit=1 failed: {err}",
                "use a host that lists videos: without it a submission whose answer was lost "
                "cannot be reconciled, and its row fails as in_doubt for a person to settle "
                "(sora-worker adopt)",
            )
        return Finding("list videos", "OK", "GET /videos?limit=1 works (reconciliation)")

    async def cancel(self, job_id: str) -> None:
        """The API has no cancel: ``DELETE /videos/{id}`` removes the job (and its files).
        A job already gone counts as cancelled."""
        try:
            await _quiet(lambda: self._client.videos.delete(job_id))
        except openai.NotFoundError:
            return
        except openai.APIConnectionError as err:
            raise ProviderUnavailable(f"cannot reach {self.base_url}: {err}") from err
        except openai.APIStatusError as err:
            raise ProviderUnavailable(
                f"deleting {job_id} failed (HTTP {err.status_code}: {_message(err)})"
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
        error, kind = (None, None) if status != "failed" else _job_error(video, raw)
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


def _message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return err.message


def _job_error(video: Any, raw_status: str) -> tuple[str, ErrorKind]:
    """A failed job's reason and outcome."""
    if raw_status == "expired":
        return "the provider expired the job before it could be archived", "expired"
    err = getattr(video, "error", None)
    code = getattr(err, "code", None) if err is not None else None
    message = getattr(err, "message", None) if err is not None else None
    kind: ErrorKind = "safety_filtered" if _kind_of(code) == "safety_filtered" else "provider_error"
    if code or message:
        return f"the provider failed the job ({code or 'error'}): {message or 'no details'}", kind
    return "the provider failed the job without saying why", kind


def _unknown_model(err: openai.APIStatusError) -> bool:
    """A gateway's own "no such model" (LiteLLM: 400, code "400", "Invalid model name
    passed in model=...")."""
    return err.status_code == 400 and (
        "invalid model name" in _message(err).casefold() or _error_field(err, "param") == "model"
    )


def _matches(job: ProviderJob, request: VideoRequest) -> bool:
    if job.prompt != request.prompt:
        return False  # without the prompt echoed back, nothing proves the job is ours
    pairs = (
        (job.model, request.model),
        (job.size, request.size),
        (job.seconds, request.seconds),
    )
    return all(theirs is None or theirs == ours for theirs, ours in pairs)
