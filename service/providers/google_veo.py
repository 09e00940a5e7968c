"""Google Veo through the official ``google-genai`` SDK (Vertex AI, API-key "express" mode).

Why Vertex and not the Gemini Developer API: in ``google-genai`` 3.6.1
``models.generate_videos`` and ``operations.get`` for videos raise "only supported in
Gemini Enterprise Agent Platform mode" unless the client is built with
``vertexai=True``; the Developer API's ``predictLongRunning`` + ``files.download`` path
is gone from the SDK. So the client is ``genai.Client(vertexai=True, api_key=...)``:

- create: ``POST v1beta1/publishers/google/models/{model}:predictLongRunning``, the
  photos as the model takes them: the first frame (``source.image``), the last frame
  (``config.last_frame``, Vertex's ``lastFrame``) and reference images
  (``config.reference_images``, type ``asset``); the job id is the operation's name
  (``projects/.../operations/{uuid}``);
- status: ``POST v1beta1/{model resource}:fetchPredictOperation`` (what
  ``operations.get`` sends); done with ``videos`` = completed; done with no videos and
  ``raiMediaFilteredCount`` = the safety filter (failed, ``safety_filtered``, never
  retried, not charged);
- the video: without ``output_gcs_uri`` Vertex returns it inline, base64 in that same
  operation JSON, and the SDK parses it whole: measured, a 20 MiB video grew the
  worker's RSS by 140 MiB, a 60 MiB one by 423 MiB, on every poll of a done operation
  and again on download. So status and download read the answer as a stream
  (``inline_video``): the video is decoded chunk by chunk as it arrives (growth: 2 MiB
  for either), and the JSON without it goes to the SDK's own parser
  (``GenerateVideosOperation.from_api_response``). ``gs://`` outputs are not supported.

Never paying twice: Veo has no way to list or search operations, so a create whose
answer was lost cannot be matched afterwards. ``find_submitted`` raises
``CannotReconcile``: the row fails (``in_doubt``) with the time, parameters and key of
the create, which also travels as a Vertex ``labels`` entry (``sora_submit_key``) that
billing exports show. The SDK never retries (its default is one attempt).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from google import genai
from google.genai import errors, types

from service.core.request import ErrorKind, ImageRole, VideoRequest
from service.providers.base import (
    CannotReconcile,
    OutcomeUnknown,
    ProviderError,
    ProviderJob,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    Variant,
    VideoGone,
)
from service.providers.inline_video import InlineVideoScanner, scan
from service.providers.registry import AdapterOptions
from service.providers.sizes import frame_of

log = structlog.get_logger("service.providers.google_veo")

DEFAULT_BASE_URL = "https://aiplatform.googleapis.com"
CHUNK_SIZE = 256 * 1024
THROTTLED_PAUSE = timedelta(seconds=10)
"""How long every replica holds off after Google's 429 (RESOURCE_EXHAUSTED), which
carries no Retry-After."""


async def open_adapter(api_key: str, base_url: str | None, options: AdapterOptions) -> GoogleVeo:
    """The adapter as a worker runs it (``providers.registry``)."""
    return GoogleVeo(api_key, base_url, timeout=options.timeout.total_seconds())


class GoogleVeo:
    """``VideoProvider`` for Veo on Vertex AI."""

    name = "google_veo"

    def __init__(self, api_key: str, base_url: str | None = None, *, timeout: float = 120.0):
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        # Our own httpx client: the SDK's aiohttp path subclasses ClientSession (which
        # aiohttp deprecates, an error under -W error), and one client type means one
        # set of transport errors to sort into "never sent" and "maybe created".
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0))
        options = types.HttpOptions(
            base_url=self.base_url, timeout=int(timeout * 1000), httpx_async_client=self._http
        )
        self._client = genai.Client(vertexai=True, api_key=api_key, http_options=options)
        self._api_key = api_key
        self.submit_timeout = timedelta(seconds=timeout)

    def validate(self, model: str, size: str, seconds: str) -> None:
        """Only what this API's shape needs: a size that is an aspect ratio and a
        resolution. Lengths and the 1080p rule of the models we know are the registry's
        (``models.py``); for the others Google judges."""
        frame_of(size, model)

    async def submit(self, request: VideoRequest) -> ProviderJob:
        frame = frame_of(request.size, request.model)
        references = [
            types.VideoGenerationReferenceImage(
                image=types.Image(image_bytes=r.data, mime_type=r.content_type),
                reference_type=types.VideoGenerationReferenceType.ASSET,
            )
            for r in request.references
        ]
        config = types.GenerateVideosConfig(
            number_of_videos=1,
            duration_seconds=int(request.seconds),
            aspect_ratio=frame.aspect_ratio,
            resolution=frame.resolution,
            labels={"sora_submit_key": request.idempotency_key},
            last_frame=_image(request, "last_frame"),
            reference_images=references or None,
        )
        image = _image(request, "first_frame")
        try:
            operation = await self._client.aio.models.generate_videos(
                model=request.model,
                source=types.GenerateVideosSource(prompt=request.prompt, image=image),
                config=config,
            )
        except errors.APIError as err:
            raise self._create_error(err, request) from err
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise ProviderUnavailable(f"cannot reach {self.base_url}: {err!r}") from err
        except (httpx.HTTPError, TimeoutError) as err:
            raise OutcomeUnknown(
                f"no answer from {self.base_url} to create: {err!r}; an operation may exist"
            ) from err
        if not operation.name:
            raise OutcomeUnknown(f"{self.base_url} accepted the create but named no operation")
        return self._job(operation)

    def _create_error(self, err: errors.APIError, request: VideoRequest) -> ProviderError:
        detail = f"HTTP {err.code} {err.status or ''}: {err.message or 'no details'}".strip()
        if err.code == 404:
            return RequestRejected(
                f"model {request.model!r} is not available at {self.base_url} ({detail}). "
                "Set SORA_MODEL (or the row's model) to a Veo model your project can use."
            )
        if err.code in (401, 403):
            return ProviderUnavailable(
                f"Google refused our credentials ({detail}); check GOOGLE_API_KEY "
                "(a Vertex AI API key) and that the Vertex AI API is enabled"
            )
        if err.code == 429:
            return RateLimited(f"rate limited or out of quota ({detail})", THROTTLED_PAUSE)
        if err.code == 408 or err.code >= 500:
            return OutcomeUnknown(f"provider error on create ({detail})")
        return RequestRejected(f"Veo refused the request ({detail})")

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        """Veo cannot list operations: an unknown create outcome is settled by hand."""
        raise CannotReconcile(
            "Veo has no list of operations; look in the Google Cloud console or billing "
            "export for an operation at that time, labelled sora_submit_key="
            f"{request.idempotency_key}"
        )

    async def retrieve(self, job_id: str) -> ProviderJob:
        scanner = InlineVideoScanner(keep_video=False)
        async with self._fetch(job_id) as body:
            async for _ in scan(body, scanner):
                pass
        return self._job(_operation_of(scanner.json, job_id))

    @asynccontextmanager
    async def _fetch(self, job_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """``fetchPredictOperation`` (what ``operations.get`` sends), read as a stream.

        Its answer holds the whole video inline once done; parsed whole as the SDK
        parses it, that costs about seven times the video's size, so the body is scanned
        instead (``inline_video``) and only the emptied JSON goes to the SDK's parser.
        """
        resource = job_id.rpartition("/operations/")[0]
        if not resource:
            raise VideoGone(f"{job_id!r} is not a Veo operation name")
        url = f"{self.base_url}/v1beta1/{resource}:fetchPredictOperation"
        headers = {"x-goog-api-key": self._api_key, "content-type": "application/json"}
        body = json.dumps({"operationName": job_id})
        try:
            async with self._http.stream("POST", url, headers=headers, content=body) as response:
                if response.status_code >= 400:
                    message = _google_message(await response.aread())
                    if response.status_code == 404:
                        raise VideoGone(
                            f"operation {job_id} no longer exists at {self.base_url}: {message}"
                        )
                    if response.status_code == 429:
                        raise RateLimited(
                            f"status of {job_id} unavailable: rate limited ({message})",
                            THROTTLED_PAUSE,
                        )
                    raise ProviderUnavailable(
                        f"status of {job_id} unavailable (HTTP {response.status_code}: {message})"
                    )
                yield _http_chunks(response, job_id)
        except httpx.HTTPError as err:
            raise ProviderUnavailable(f"cannot reach {self.base_url}: {err!r}") from err

    @asynccontextmanager
    async def download(
        self, job_id: str, variant: Variant = "video"
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        if variant != "video":
            raise VideoGone("Veo makes no thumbnails; only the video can be downloaded")
        async with self._fetch(job_id) as body:
            scanner = InlineVideoScanner(keep_video=True)
            yield _checked(scan(body, scanner), scanner, job_id)

    def content_url(self, job_id: str) -> str:
        """The operation's address (its video is inline, so there is no file URL)."""
        return f"{self.base_url}/v1beta1/{job_id}"

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()  # ours: the SDK leaves a client it was given open

    def _job(self, operation: types.GenerateVideosOperation) -> ProviderJob:
        name = str(operation.name)
        if not operation.done:
            metadata: dict[str, Any] = operation.metadata or {}
            progress = metadata.get("progressPercent", 0)
            return ProviderJob(
                id=name,
                status="running",
                progress=int(progress) if isinstance(progress, int | float) else 0,
                raw_status="running",
            )
        if operation.error:
            message = operation.error.get("message") or "no details"
            return _failed(name, f"Veo failed the job ({operation.error.get('code')}): {message}")
        response = operation.response
        if response is not None and response.generated_videos:
            return ProviderJob(id=name, status="completed", progress=100, raw_status="done")
        filtered = response.rai_media_filtered_count if response is not None else None
        if filtered:
            reasons = "; ".join((response.rai_media_filtered_reasons or []) if response else [])
            return _failed(
                name,
                f"Veo's safety filter blocked {filtered} video(s) (not charged): "
                f"{reasons or 'no reason given'}. Change the prompt or photos and queue again.",
                "safety_filtered",
            )
        return _failed(name, "Veo finished the job without a video and without saying why")


def _image(request: VideoRequest, role: ImageRole) -> types.Image | None:
    found = request.image(role)
    return (
        None if found is None else types.Image(image_bytes=found.data, mime_type=found.content_type)
    )


def _failed(name: str, error: str, kind: ErrorKind = "provider_error") -> ProviderJob:
    return ProviderJob(
        id=name, status="failed", progress=0, raw_status="done", error=error, error_kind=kind
    )


async def _checked(
    video: AsyncIterator[bytes], scanner: InlineVideoScanner, job_id: str
) -> AsyncIterator[bytes]:
    """The decoded video; an answer that held none is an error, not an empty file."""
    sent = 0
    async for chunk in video:
        sent += len(chunk)
        yield chunk
    if sent:
        return
    response = _operation_of(scanner.json, job_id).response
    first = response.generated_videos[0].video if response and response.generated_videos else None
    if first is not None and first.uri:
        raise ProviderUnavailable(
            f"the video of {job_id} is at {first.uri!r}, not inline; this worker fetches "
            "inline videos only (do not set output_gcs_uri)"
        )
    raise VideoGone(f"operation {job_id} holds no video to download")


def _operation_of(body: bytes, job_id: str) -> types.GenerateVideosOperation:
    try:
        parsed = json.loads(body)
    except ValueError as err:
        raise ProviderUnavailable(f"the status of {job_id} was not JSON") from err
    return types.GenerateVideosOperation.from_api_response(parsed, is_vertex_ai=True)


def _google_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error", {})
        return str(error.get("message") or error.get("status") or "no details")
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace") or "no details"


async def _http_chunks(response: httpx.Response, job_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes(CHUNK_SIZE):
            yield chunk
    except httpx.HTTPError as err:
        raise ProviderUnavailable(f"download of {job_id} broke off: {err!r}") from err
