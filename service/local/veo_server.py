"""A local stand-in for Veo on Vertex AI that ``google-genai`` talks to unchanged.

Wire format as the SDK (3.6.1, ``vertexai=True`` with an API key) sends and parses it:

- ``POST /v1beta1/publishers/google/models/{model}:predictLongRunning`` (also the
  ``projects/{p}/locations/{l}/...`` form): ``{"instances": [{"prompt", "image":
  {"bytesBase64Encoded", "mimeType"}, "lastFrame": {...}, "referenceImages": [{"image":
  {...}, "referenceType": "asset"}]}], "parameters": {"durationSeconds",
  "aspectRatio", "resolution", "sampleCount"}, "labels"}`` -> ``{"name": operation}``;
- ``POST /v1beta1/{model resource}:fetchPredictOperation`` with ``{"operationName"}``
  -> ``{"name", "done"?, "error"?, "response": {"videos": [{"bytesBase64Encoded",
  "mimeType"}], "raiMediaFilteredCount", "raiMediaFilteredReasons"}}``;
- errors as Google sends them: ``{"error": {"code", "message", "status"}}``; the API
  key in ``x-goog-api-key``.

No kinder than the real host: videos come back inline (base64) as Vertex returns them
without a storage URI, operations are forgotten after ``retention_seconds`` (Google
keeps generated videos about two days), there is no list of operations, and a prompt
containing ``safety_marker`` ends done with no video and the filter's count and reasons.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web
from PIL import Image

from service.local.fake_host import FakeHost, made_with
from service.local.simulator.media import render_mp4
from service.providers.registry import VeoFakeSettings

PROJECT = "sora-worker-local"
LOCATION = "us-central1"
_MAX_BODY = 64 * 1024 * 1024
FILTER_REASON = (
    "Veo could not generate videos because the input image violates Vertex AI's usage "
    "guidelines. Support codes: 58061214"
)
RESPONSE_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"


@dataclass
class VeoConfig:
    """How the fake behaves; read on every request, so tests may change it live."""

    queue_seconds: float = 0.5
    generation_seconds: float = 4.0
    retention_seconds: float = 2 * 86400.0
    models: tuple[str, ...] = (
        "veo-3.1-generate-001",
        "veo-3.1-fast-generate-001",
        "veo-3.1-generate-preview",
        "veo-3.1-fast-generate-preview",
    )
    """What Vertex AI lists (the Veo 3.1 model page, 2026-12); the lite preview was a
    Gemini API model and is not served here."""
    api_key: str | None = None  # None: any non-empty key
    safety_marker: str = "[rai-filtered]"
    clock: Callable[[], float] = time.time


class VeoCreate(NamedTuple):
    """What a test may assert about one accepted create."""

    operation: str
    model: str
    prompt: str
    seconds: int
    aspect_ratio: str
    resolution: str
    has_image: bool
    labels: dict[str, str]
    images: dict[str, bytes] = {}  # noqa: RUF012 (a NamedTuple default, never mutated)
    """The images received, by field: ``image``, ``lastFrame``, ``referenceImages[i]``."""


@dataclass
class _Operation:
    name: str
    request: VeoCreate
    image: bytes | None
    created_at: float
    filtered: bool
    video: bytes | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class GoogleApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message

    def response(self) -> web.Response:
        body = {"error": {"code": self.code, "message": self.message, "status": self.status}}
        return web.json_response(body, status=self.code)


def _invalid(message: str) -> GoogleApiError:
    return GoogleApiError(400, "INVALID_ARGUMENT", message)


class VeoServer(FakeHost):
    """The fake Vertex AI host; ``created`` lists every accepted create."""

    def __init__(self, config: VeoConfig | None = None) -> None:
        super().__init__()
        self.config = config or VeoConfig()
        self.created: list[VeoCreate] = []
        self.fetches = 0
        self._operations: dict[str, _Operation] = {}
        self.app = web.Application(middlewares=[self._errors], client_max_size=_MAX_BODY)
        self.app.router.add_post("/v1beta1/{tail:.+}", self._post)

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            key = request.headers.get("x-goog-api-key", "")
            if not key or (self.config.api_key is not None and key != self.config.api_key):
                raise GoogleApiError(
                    401, "UNAUTHENTICATED", "API key not valid. Please pass a valid API key."
                )
            return await handler(request)
        except GoogleApiError as err:
            return err.response()
        except web.HTTPException as err:
            return GoogleApiError(err.status, "NOT_FOUND", f"{request.path} not found").response()

    async def _post(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _invalid("Invalid JSON payload received.") from None
        if not isinstance(body, dict):
            raise _invalid("Invalid JSON payload received: expected an object.")
        resource, _, verb = tail.rpartition(":")
        if verb == "predictLongRunning":
            return web.json_response({"name": await self._create(resource, body)})
        if verb == "fetchPredictOperation":
            return web.json_response(await self._fetch(str(body.get("operationName", ""))))
        raise GoogleApiError(404, "NOT_FOUND", f"Method {verb or tail} not found.")

    async def _create(self, resource: str, body: dict[str, Any]) -> str:
        model = resource.rpartition("models/")[2]
        if model not in self.config.models:
            raise GoogleApiError(
                404,
                "NOT_FOUND",
                f"Publisher Model `projects/{PROJECT}/locations/{LOCATION}/publishers/google/"
                f"models/{model}` was not found or your project does not have access to it.",
            )
        instances = body.get("instances")
        if not isinstance(instances, list) or len(instances) != 1:
            raise _invalid("Exactly one instance is required.")
        instance, parameters = instances[0], body.get("parameters") or {}
        prompt = instance.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _invalid("A text prompt is required.")
        seconds = parameters.get("durationSeconds", 8)
        if seconds not in (4, 6, 8):
            raise _invalid(f"Unsupported duration {seconds} seconds; supported: 4, 6, 8.")
        aspect = parameters.get("aspectRatio", "16:9")
        if aspect not in ("16:9", "9:16"):
            raise _invalid(f"Unsupported aspect ratio {aspect}; supported: 16:9, 9:16.")
        resolution = parameters.get("resolution", "720p")
        if resolution not in ("720p", "1080p"):
            raise _invalid(f"Unsupported resolution {resolution}; supported: 720p, 1080p.")
        if resolution == "1080p" and seconds != 8:
            raise _invalid("1080p videos must be 8 seconds long.")
        if parameters.get("sampleCount", 1) != 1:
            raise _invalid("This fake generates one video per request (sampleCount 1).")
        images = await asyncio.to_thread(_images_of, instance)
        image = images.get("image")
        name = (
            f"projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{model}"
            f"/operations/{uuid.uuid4()}"
        )
        record = VeoCreate(
            name,
            model,
            prompt,
            int(seconds),
            aspect,
            resolution,
            image is not None,
            dict(body.get("labels") or {}),
            images,
        )
        filtered = self.config.safety_marker.casefold() in prompt.casefold()
        self._operations[name] = _Operation(name, record, image, self.config.clock(), filtered)
        self.created.append(record)
        return name

    async def _fetch(self, name: str) -> dict[str, Any]:
        self.fetches += 1
        operation = self._operations.get(name)
        now = self.config.clock()
        if operation is not None and now - operation.created_at > self.config.retention_seconds:
            del self._operations[name]
            operation = None
        if operation is None:
            raise GoogleApiError(404, "NOT_FOUND", f"Operation {name} not found.")
        done_at = operation.created_at + self.config.queue_seconds + self.config.generation_seconds
        if now < done_at:
            return {"name": name}
        if operation.filtered:
            response: dict[str, Any] = {
                "@type": RESPONSE_TYPE,
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": [FILTER_REASON],
            }
            return {"name": name, "done": True, "response": response}
        video = await self._render(operation)
        encoded = base64.b64encode(video).decode()
        response = {
            "@type": RESPONSE_TYPE,
            "raiMediaFilteredCount": 0,
            "videos": [{"bytesBase64Encoded": encoded, "mimeType": "video/mp4"}],
        }
        return {"name": name, "done": True, "response": response}

    async def _render(self, operation: _Operation) -> bytes:
        async with operation.lock:
            if operation.video is None:
                record = operation.request
                width, height = _dimensions(record.aspect_ratio, record.resolution)
                operation.video = await asyncio.to_thread(
                    render_mp4,
                    width,
                    height,
                    record.seconds,
                    prompt=record.prompt,
                    reference=operation.image,
                    seed=operation.name,
                )
            return operation.video

    def forget(self, name: str) -> None:
        """Drop an operation, as Google does once its retention ends."""
        self._operations.pop(name, None)


def stand_in(
    _settings: VeoFakeSettings, _data_dir: Path, config: VeoConfig | None
) -> Callable[[], VeoServer]:
    """The fake as SORA_PROVIDER=google_veo's stand-in."""
    return made_with(VeoServer, config or VeoConfig())


def _dimensions(aspect: str, resolution: str) -> tuple[int, int]:
    long_side, short_side = (1920, 1080) if resolution == "1080p" else (1280, 720)
    return (long_side, short_side) if aspect == "16:9" else (short_side, long_side)


def _image_of(image: Any) -> bytes | None:
    """The decoded first-frame image, checked as Vertex checks it (JPEG or PNG)."""
    if image is None:
        return None
    if not isinstance(image, dict) or "bytesBase64Encoded" not in image:
        raise _invalid("image must carry bytesBase64Encoded (gcsUri is not supported here).")
    mime = image.get("mimeType")
    if mime not in ("image/jpeg", "image/png"):
        raise _invalid(f"Unsupported image mimeType {mime}; use image/jpeg or image/png.")
    try:
        data = base64.b64decode(image["bytesBase64Encoded"], validate=True)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
    except (binascii.Error, ValueError, OSError):
        raise _invalid("The input image could not be decoded.") from None
    return data


def _images_of(instance: dict[str, Any]) -> dict[str, bytes]:
    """The decoded images of an instance by field, checked as Vertex checks them."""
    image = _image_of(instance.get("image"))
    images = {"image": image} if image is not None else {}
    last = _image_of(instance.get("lastFrame"))
    if last is not None:
        if image is None:
            raise _invalid("lastFrame needs image (the first frame) as well.")
        images["lastFrame"] = last
    for index, ref in enumerate(instance.get("referenceImages") or []):
        if not isinstance(ref, dict) or ref.get("referenceType") not in ("asset", "style"):
            raise _invalid("referenceImages[] need an image and a referenceType.")
        found = _image_of(ref.get("image"))
        if found is not None:
            images[f"referenceImages[{index}]"] = found
    unknown = set(instance) - {"prompt", "image", "lastFrame", "referenceImages"}
    if unknown:
        raise _invalid(f"Unknown instance fields: {', '.join(sorted(unknown))}.")
    return images
