"""Replicate's video models through the official ``replicate`` SDK.

What the worker relies on, and why:

- create: ``predictions.async_create(model="owner/name", input=...)`` (model-scoped
  ``POST /v1/models/{owner}/{name}/predictions``) or ``version=`` for
  ``owner/name:version``. The SDK never retries a POST (its retrying transport skips
  it), so a create is sent exactly once per call; ambiguity raises OutcomeUnknown.
- deadline: ``async_create`` takes no headers, so ``Cancel-After`` travels as a
  default header of the client: every prediction gets the same deadline (the worker's
  generation timeout); Replicate's own limit (30 min for API predictions) still applies.
- models: only those rows may ask for (``SORA_ALLOWED_MODELS``: by default the
  registry's Replicate models), refused in ``validate`` before any call. Replicate runs
  any public model, whatever it does and costs, so a free-form ``owner/name`` is not
  enough.
- input: video models on Replicate do not share one schema; each registry model says
  its own field names (``models.ReplicateInputs``: ``image``/``start_image``/
  ``first_frame_image`` for the first frame, ``last_frame``/``end_image``/
  ``last_frame_image``/``last_image`` for the last, ``mode`` standard|pro for Kling's
  resolution, ``num_frames`` for Wan's length). A model the registry does not know gets
  the Veo-like shape. Images go as ``data:`` URIs, so no separate upload is made.
- outputs are fetched through ``Delivery`` (``service.media.delivery``): only from
  Replicate's delivery hosts (or the API's own origin), public addresses only, every
  redirect checked, never with our token.
- outputs are deleted an hour after the prediction finishes: ``expires_at`` says so,
  and the worker archives at once (the archive deadline is that hour).
- reconcile: ``GET /v1/predictions`` (newest first, cursor pages) lists inputs, so an
  ambiguous create is matched by prompt and model among predictions made since the
  intent. Replicate documents a status ``aborted`` (a deadline reached before start)
  that the SDK's model rejects (replicate 1.0.7; replicate-python#449 would add it);
  such answers are read as plain JSON instead, through our own HTTP client.
- connections: the SDK's ``Client`` has no close, so it is given a transport of ours
  (its keyword arguments go to its httpx client); our client for plain JSON reads
  shares that transport, and ``aclose`` closes it. Both facts of the SDK are checked by
  tests/test_provider_outcomes.py (``..._does_around_the_sdk_is_still_needed``).
- safety: a prediction that fails with Replicate's E005 ("flagged as sensitive") is
  ``safety_filtered``.
"""

from __future__ import annotations

import base64
import importlib.metadata
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from replicate.client import Client, RetryTransport
from replicate.exceptions import ReplicateError

from service.core.request import ImageRole, RequestImage, VideoRequest
from service.media.delivery import (
    Delivery,
    DeliveryError,
    DeliveryFailed,
    DeliveryGone,
    DeliveryRefused,
)
from service.providers import replicate_predictions as predictions
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
from service.providers.models import ReplicateInputs, spec_for
from service.providers.registry import AdapterOptions
from service.providers.sizes import frame_of

try:
    from pydantic.v1 import ValidationError
except ImportError:  # pragma: no cover - pydantic 1
    from pydantic import ValidationError  # type: ignore[assignment]

log = structlog.get_logger("service.providers.replicate_videos")

DEFAULT_BASE_URL = "https://api.replicate.com"
USER_AGENT = f"replicate-python/{importlib.metadata.version('replicate')}"
"""What the SDK sends as its User-Agent."""
OUTPUT_LIFETIME = timedelta(hours=1)
DELIVERY_HOSTS = ("replicate.delivery", ".replicate.delivery")
"""Where Replicate serves outputs (the worker's own list comes from the registry)."""
DOWNLOAD_MAX_BYTES = 2 * 1024**3
"""The largest output taken when the worker gave no limit (tests)."""
RECONCILE_SLACK = timedelta(minutes=2)
RECONCILE_MAX_PAGES = 50
KNOWN_OUTPUTS = 1000

STATUS_MAP: dict[str, JobStatus] = {
    "starting": "queued",
    "processing": "running",
    "succeeded": "completed",
    "failed": "failed",
    "canceled": "failed",
    "aborted": "failed",
}

VEO_LIKE = ReplicateInputs(first="image", last="last_frame")
"""The input names of a model the registry does not know (Veo's on Replicate)."""
THROTTLED_PAUSE = timedelta(seconds=30)
"""How long to hold off after a 429 that says nothing more (Replicate's text says
"resets in ~30s")."""
_RESETS_IN = re.compile(r"resets in ~?(\d+(?:\.\d+)?)\s*s")


def inputs_of(model: str) -> ReplicateInputs:
    """The input names ``model`` takes (``owner/name`` or ``owner/name:version``)."""
    spec = spec_for(model.partition(":")[0])
    return spec.replicate if spec is not None and spec.replicate is not None else VEO_LIKE


def _go_duration(delta: timedelta) -> str:
    """``Cancel-After`` takes Go-style durations (``90s``, ``1h30m``); at least 5 s."""
    return f"{max(5, int(delta.total_seconds()))}s"


async def open_adapter(
    api_token: str, base_url: str | None, options: AdapterOptions
) -> ReplicateVideos:
    """The adapter as a worker runs it (``providers.registry``): every prediction is
    cancelled by Replicate when the row would time out, and reports to this worker's
    ``/webhooks/replicate`` when it has a public URL."""
    webhook = options.webhook_url
    return ReplicateVideos(
        api_token,
        base_url,
        timeout=options.timeout.total_seconds(),
        cancel_after=options.generation_timeout,
        webhook_url=f"{webhook.rstrip('/')}/webhooks/replicate" if webhook else None,
        delivery=options.delivery,
        allowed_models=options.allowed_models,
    )


class ReplicateVideos:
    """``VideoProvider`` for video models hosted on Replicate."""

    name = "replicate"

    def __init__(
        self,
        api_token: str,
        base_url: str | None = None,
        *,
        timeout: float = 120.0,
        cancel_after: timedelta | None = None,
        webhook_url: str | None = None,
        delivery: Delivery | None = None,
        allowed_models: frozenset[str] | None = None,
    ) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        guard = delivery or Delivery(DELIVERY_HOSTS, max_bytes=DOWNLOAD_MAX_BYTES, timeout=timeout)
        self.delivery = guard.with_origin(self.base_url)
        self.allowed_models = allowed_models
        # The SDK's own headers, said here so that both clients send the same ones.
        headers = {"Authorization": f"Bearer {api_token}", "User-Agent": USER_AGENT}
        if cancel_after is not None:
            headers["Cancel-After"] = _go_duration(cancel_after)
        http_timeout = httpx.Timeout(timeout, connect=5.0)
        self._transport = httpx.AsyncHTTPTransport()
        self._client = Client(
            api_token=api_token,
            base_url=self.base_url,
            timeout=http_timeout,
            headers=headers,
            transport=self._transport,
        )
        # Plain JSON reads, on the same connections, retried as the SDK retries a GET.
        self._json = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=http_timeout,
            transport=RetryTransport(wrapped_transport=self._transport),
        )
        self.submit_timeout = timedelta(seconds=timeout)
        self.webhook_url = webhook_url
        self._outputs: OrderedDict[str, str] = OrderedDict()
        """The output URL of each recently finished prediction, for ``content_url``."""

    def validate(self, model: str, size: str, seconds: str) -> None:
        if "/" not in model:
            raise RequestRejected(
                f"model {model!r} is not a Replicate model; name it owner/name "
                "(e.g. google/veo-3.1) or owner/name:version"
            )
        name = model.partition(":")[0]
        allowed = self.allowed_models
        if allowed is not None and model not in allowed and name not in allowed:
            raise RequestRejected(
                f"model {model} may not run on Replicate here (only "
                f"{', '.join(sorted(allowed)) or 'none'}); an operator can allow it with "
                "SORA_ALLOWED_MODELS=default,replicate:" + name
            )
        frame = frame_of(size, model)
        inputs = inputs_of(model)
        if frame.resolution not in inputs.resolution_values:
            offered = ", ".join(sorted(inputs.resolution_values))
            raise RequestRejected(f"{model} makes {offered} videos only; size {size} is not")
        if inputs.aspect_ratio is None and frame.aspect_ratio != "16:9" and inputs.first is None:
            raise RequestRejected(f"{model} makes landscape videos only")
        if not seconds.isdigit():
            raise RequestRejected(f"seconds {seconds} is not a whole number")

    def _input(self, request: VideoRequest) -> dict[str, Any]:
        """The prediction's input in the model's own names (``models.ReplicateInputs``)."""
        frame = frame_of(request.size, request.model)
        inputs = inputs_of(request.model)
        values: dict[str, Any] = {"prompt": request.prompt}
        seconds = int(request.seconds)
        if inputs.frames_per_second is not None:
            values[inputs.duration] = seconds * inputs.frames_per_second + 1
            values["frames_per_second"] = inputs.frames_per_second
        else:
            values[inputs.duration] = seconds
        if inputs.aspect_ratio is not None:
            values[inputs.aspect_ratio] = inputs.aspect_values[frame.aspect_ratio]
        if inputs.resolution is not None:
            values[inputs.resolution] = inputs.resolution_values[frame.resolution]
        frames: tuple[tuple[ImageRole, str | None], ...] = (
            ("first_frame", inputs.first),
            ("last_frame", inputs.last),
        )
        for role, name in frames:
            image = request.image(role)
            if image is None:
                continue
            if name is None:
                raise RequestRejected(f"{request.model} takes no {role.replace('_', ' ')}")
            values[name] = _data_uri(image)
        if request.references:
            if inputs.references is None:
                raise RequestRejected(f"{request.model} takes no reference images")
            values[inputs.references] = [_data_uri(i) for i in request.references]
        return values

    async def submit(self, request: VideoRequest) -> ProviderJob:
        params: dict[str, Any] = {"input": self._input(request)}
        if self.webhook_url:
            params["webhook"] = self.webhook_url
            params["webhook_events_filter"] = ["completed"]
        model, _, version = request.model.partition(":")
        sdk = self._client.predictions
        try:
            if version:
                prediction = await sdk.async_create(version=version, **params)
            else:
                prediction = await sdk.async_create(model=model, **params)
        except ReplicateError as err:
            raise self._create_error(err, request) from err
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise ProviderUnavailable(f"cannot reach {self.base_url}: {err!r}") from err
        except httpx.HTTPError as err:
            raise OutcomeUnknown(
                f"no answer from {self.base_url} to create: {err!r}; a prediction may exist"
            ) from err
        except ValidationError as err:
            raise OutcomeUnknown(f"{self.base_url} answered the create oddly: {err}") from err
        return self._job(prediction.dict())

    def _create_error(self, err: ReplicateError, request: VideoRequest) -> ProviderError:
        status = err.status or 0
        detail = f"HTTP {status}: {err.title or 'error'}: {err.detail or 'no details'}"
        if status == 404:
            return RequestRejected(
                f"model {request.model!r} does not exist at {self.base_url} ({detail}). "
                "Set SORA_MODEL (or the row's model) to a Replicate video model, owner/name."
            )
        if status in (401, 403):
            return ProviderUnavailable(
                f"Replicate refused our token ({detail}); check REPLICATE_API_TOKEN"
            )
        if status == 402:
            return ProviderUnavailable(f"the Replicate account cannot pay ({detail})")
        if status == 429:
            return RateLimited(f"rate limited ({detail})", _throttled_for(err))
        if status == 408 or status >= 500:
            return OutcomeUnknown(f"provider error on create ({detail})")
        return RequestRejected(f"Replicate refused the request ({detail})")

    async def _read(
        self, typed: Callable[[], Awaitable[Any]], path: str, what: str
    ) -> dict[str, Any]:
        """A GET through the SDK; a status the SDK's model rejects is read as JSON."""
        try:
            try:
                result = await typed()
                return dict(result.dict())
            except ValidationError:
                response = await self._json.get(path)
                if 400 <= response.status_code < 600:
                    raise ReplicateError.from_response(response) from None
                body: dict[str, Any] = response.json()
                return body
        except ReplicateError as err:
            if err.status in (404, 410):
                raise VideoGone(f"{what} no longer exists at {self.base_url}") from err
            if err.status == 429:
                raise RateLimited(
                    f"{what} unavailable: rate limited ({err.detail or err.title})",
                    _throttled_for(err),
                ) from err
            raise ProviderUnavailable(
                f"{what} unavailable (HTTP {err.status}: {err.detail or err.title})"
            ) from err
        except httpx.HTTPError as err:
            raise ProviderUnavailable(f"cannot reach {self.base_url}: {err!r}") from err

    async def _prediction(self, job_id: str) -> dict[str, Any]:
        return await self._read(
            lambda: self._client.predictions.async_get(job_id),
            f"/v1/predictions/{job_id}",
            f"prediction {job_id}",
        )

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        """Predictions since the intent with our prompt and model, newest first.

        The list echoes each prediction's input, so the prompt is the evidence; the
        walk stops at the first prediction older than the intent (less clock slack),
        and raises rather than answer from an incomplete listing.
        """
        horizon = submitted_after - RECONCILE_SLACK
        found: list[ProviderJob] = []
        cursor: str | None = None
        for _ in range(RECONCILE_MAX_PAGES):
            page = await self._page(cursor)
            for item in page.get("results", []):
                created = predictions.parse_time(item.get("created_at"))
                if created is not None and created < horizon:
                    return found
                if predictions.matches(item, request):
                    found.append(self._job(item))
            cursor = page.get("next")
            if not cursor:
                return found
        raise ProviderUnavailable(
            f"more than {RECONCILE_MAX_PAGES} pages of predictions were made at {self.base_url} "
            "since the earlier submission; cannot reach back to it"
        )

    async def _page(self, cursor: str | None) -> dict[str, Any]:
        async def typed() -> Any:
            page = await self._client.predictions.async_list(... if cursor is None else cursor)
            return predictions.PageDict(page)

        return await self._read(typed, cursor or "/v1/predictions", "the prediction list")

    async def retrieve(self, job_id: str) -> ProviderJob:
        return self._job(await self._prediction(job_id))

    @asynccontextmanager
    async def download(
        self, job_id: str, variant: Variant = "video"
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        if variant != "video":
            raise VideoGone("Replicate video models make no separate thumbnail")
        prediction = await self._prediction(job_id)
        url = predictions.output_url(prediction)
        if prediction.get("data_removed") or url is None:
            raise VideoGone(
                f"the output of {job_id} was deleted by Replicate (outputs are kept 1 hour)"
            )
        try:
            # No Authorization: output URLs are on a delivery host, not the API (the
            # guard sends credentials to the API's own origin only, and none are given).
            async with self.delivery.stream(url, f"the output of {job_id}") as chunks:
                yield _delivered(chunks, job_id)
        except DeliveryError as err:
            raise _delivery_error(err, job_id) from err

    def content_url(self, job_id: str) -> str:
        """The output's own URL when this worker saw it finish, else the prediction's."""
        return self._outputs.get(job_id) or f"{self.base_url}/v1/predictions/{job_id}"

    async def webhook_secret(self) -> str:
        """The account's webhook signing secret (``GET /v1/webhooks/default/secret``)."""
        try:
            secret = await self._client.webhooks.default.async_secret()
        except (ReplicateError, httpx.HTTPError) as err:
            raise ProviderUnavailable(
                f"cannot get the webhook secret from {self.base_url}: {err!r}; "
                "set SORA_REPLICATE_WEBHOOK_SECRET"
            ) from err
        return str(secret.key)

    async def aclose(self) -> None:
        await self._json.aclose()  # and with it the transport the SDK's client sends through

    def _job(self, prediction: dict[str, Any]) -> ProviderJob:
        job_id = str(prediction["id"])
        raw = str(prediction.get("status"))
        status = STATUS_MAP.get(raw)
        if status is None:
            log.warning("provider.unknown_status", video_id=job_id, status=raw)
            status = "running"
        completed = predictions.parse_time(prediction.get("completed_at"))
        error, kind = None, None
        if status == "failed":
            error, kind = predictions.failure(prediction, raw)
        url = predictions.output_url(prediction)
        if status == "completed" and url is not None:
            self._outputs[job_id] = url
            while len(self._outputs) > KNOWN_OUTPUTS:
                self._outputs.popitem(last=False)
        inputs = prediction.get("input") or {}
        return ProviderJob(
            id=job_id,
            status=status,
            progress=100 if status == "completed" else predictions.progress(prediction.get("logs")),
            raw_status=raw,
            error=error,
            error_kind=kind,
            created_at=predictions.parse_time(prediction.get("created_at")),
            finished_at=completed,
            expires_at=None if completed is None else completed + OUTPUT_LIFETIME,
            prompt=inputs.get("prompt") if isinstance(inputs, dict) else None,
            model=prediction.get("model"),
        )


async def _delivered(chunks: AsyncIterator[bytes], job_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except DeliveryError as err:
        raise _delivery_error(err, job_id) from err


def _delivery_error(err: DeliveryError, job_id: str) -> ProviderError:
    """A guarded download's failure in the port's terms: a refused address can never be
    fetched (as good as gone, said why), a missing file is gone, the rest is retried."""
    if isinstance(err, DeliveryRefused):
        return VideoGone(f"refused to download the output of {job_id}: {err}")
    if isinstance(err, DeliveryGone):
        return VideoGone(f"the output of {job_id} is gone: {err}")
    assert isinstance(err, DeliveryFailed)
    return ProviderUnavailable(f"download of {job_id} failed: {err}")


def _data_uri(image: RequestImage) -> str:
    return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"


def _throttled_for(err: ReplicateError) -> timedelta:
    """How long Replicate said to wait ("Your rate limit resets in ~30s"), else 30 s."""
    found = _RESETS_IN.search(str(err.detail or ""))
    return timedelta(seconds=float(found.group(1))) if found else THROTTLED_PAUSE
