"""An aiohttp application that speaks the OpenAI Videos API (``/v1/videos``) for tests and demos.

Nothing runs in the background: a job's status is derived from its ``created_at``, the
configured timings and an injectable clock, so tests move time instead of sleeping and a
restarted simulator (``state_dir``) needs only the job records.
The official ``openai`` SDK is the arbiter of the wire format (see
``/work/shared/contracts/openai-videos.md``).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from aiohttp import BodyPartReader, web
from PIL import Image

from .media import render_mp4, render_spritesheet, render_thumbnail

__all__ = ["CreatedVideo", "FailureRule", "Job", "SimulatorConfig", "VideoStore", "create_app"]

_CHUNK = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024  # aiohttp's 1 MiB default is too small for a reference image
_REFERENCE_FORMATS = ("JPEG", "PNG", "WEBP")


class _Renderer(Protocol):
    def __call__(
        self,
        width: int,
        height: int,
        seconds: int,
        *,
        prompt: str,
        reference: bytes | None,
        seed: str,
    ) -> bytes: ...


# variant -> (content type, file suffix in state_dir, renderer)
_VARIANTS: dict[str, tuple[str, str, _Renderer]] = {
    "video": ("video/mp4", "mp4", render_mp4),
    "thumbnail": ("image/webp", "webp", render_thumbnail),
    "spritesheet": ("image/jpeg", "jpg", render_spritesheet),
}


@dataclass
class FailureRule:
    """Fail requests whose prompt contains ``prompt_contains`` (case-insensitive).

    ``stage="create"``: ``POST /v1/videos`` answers HTTP ``status`` with ``code``/``message``.
    ``stage="generate"``: the job is accepted, then ends ``failed`` with error {code, message}.
    Rules are matched when a job is created, so appending one affects later jobs only.
    """

    prompt_contains: str
    stage: Literal["create", "generate"]
    status: int = 400
    code: str = "moderation_blocked"
    message: str = "Your request was blocked by our moderation system."


def _sora_sizes() -> dict[str, tuple[str, ...]]:
    portrait_and_landscape = ("720x1280", "1280x720")
    return {
        "sora-2": portrait_and_landscape,
        "sora-2-pro": (*portrait_and_landscape, "1024x1792", "1792x1024"),
    }


@dataclass
class SimulatorConfig:
    """Behaviour of a simulator; mutable at runtime (e.g. ``failure_rules.append``).

    The timings are read on every request, so changing them moves existing jobs too
    (lengthening ``generation_seconds`` can even send a completed job back to in_progress).
    """

    queue_seconds: float = 1.0
    generation_seconds: float = 8.0
    expires_after_seconds: float = 86400.0
    poll_after_ms: int = 1000
    models: dict[str, tuple[str, ...]] = field(default_factory=_sora_sizes)  # model -> sizes
    seconds: tuple[str, ...] = ("4", "8", "12")
    api_key: str | None = None  # None: any non-empty bearer token is accepted
    state_dir: Path | None = None  # jobs, references and rendered assets persist here
    failure_rules: list[FailureRule] = field(default_factory=list)
    clock: Callable[[], float] = time.time

    def rule_for(self, prompt: str, stage: Literal["create", "generate"]) -> FailureRule | None:
        """The first rule of ``stage`` whose text occurs in ``prompt``."""
        folded = prompt.casefold()
        matches = (r for r in self.failure_rules if r.prompt_contains.casefold() in folded)
        return next((rule for rule in matches if rule.stage == stage), None)


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def response(self) -> web.Response:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return web.json_response({"error": body}, status=self.status, headers=self.headers)


def _invalid_value(param: str, value: str, allowed: tuple[str, ...]) -> ApiError:
    supported = ", ".join(f"'{item}'" for item in allowed)
    message = f"Invalid value: '{value}'. Supported values are: {supported}."
    return ApiError(400, message, param=param, code="invalid_value")


@dataclass
class Job:
    """The persisted record of one video; its status is derived from it, the config and clock."""

    id: str
    seq: int  # creation order; the clock may not move between two creates
    model: str
    prompt: str
    size: str
    seconds: str
    created_at: float
    has_reference: bool
    error: dict[str, str] | None = None  # set at create time by a "generate" FailureRule
    deleted: bool = False  # kept as a tombstone so list cursors pointing at it still work

    @property
    def dimensions(self) -> tuple[int, int]:
        width, height = self.size.split("x")
        return int(width), int(height)

    def video(self, config: SimulatorConfig) -> dict[str, Any]:
        """The ``Video`` object as of ``config.clock()``."""
        now = config.clock()
        started = self.created_at + config.queue_seconds
        finished = started + config.generation_seconds
        status, progress, completed_at, expires_at = "queued", 0, None, None
        if now >= finished and self.error is not None:
            status = "failed"
        elif now >= finished:
            status, progress, completed_at = "completed", 100, int(finished)
            expires_at = int(finished + config.expires_after_seconds)
        elif now >= started:
            status = "in_progress"
            progress = min(99, int(100 * (now - started) / config.generation_seconds))
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": status,
            "progress": progress,
            "created_at": int(self.created_at),
            "completed_at": completed_at,
            "expires_at": expires_at,
            "prompt": self.prompt,
            "seconds": self.seconds,
            "size": self.size,
            "remixed_from_video_id": None,
            "error": self.error if status == "failed" else None,
        }


class CreatedVideo(NamedTuple):
    """What a test may assert about one accepted ``POST /v1/videos``."""

    video_id: str
    model: str
    size: str
    seconds: str
    has_reference: bool  # an image file was uploaded (a URL/file_id reference is ignored)
    idempotency_key: str | None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via rename so a crash never leaves a half-written record behind."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class VideoStore:
    """Jobs, uploaded references and rendered assets, optionally persisted in ``state_dir``.

    Layout: ``<id>.json`` (the Job), ``<id>.reference`` and ``<id>.<variant>.<suffix>``.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.jobs: dict[str, Job] = {}  # in creation order
        self.created: list[CreatedVideo] = []
        self._references: dict[str, bytes] = {}
        self._assets: dict[tuple[str, str], bytes] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            records = [json.loads(p.read_text()) for p in config.state_dir.glob("*.json")]
            for record in sorted(records, key=lambda r: int(r["seq"])):
                self.jobs[record["id"]] = Job(**record)

    def get(self, video_id: str) -> Job:
        """The live job ``video_id``, else a 404."""
        job = self.jobs.get(video_id)
        if job is None or job.deleted:
            raise ApiError(404, f"Video with id '{video_id}' not found.", param="video_id")
        return job

    async def add(
        self,
        *,
        model: str,
        prompt: str,
        size: str,
        seconds: str,
        error: dict[str, str] | None,
        reference: bytes | None,
        idempotency_key: str | None,
    ) -> Job:
        """Create a job as of now."""
        job = Job(
            id=f"video_{uuid.uuid4().hex}",
            seq=len(self.jobs) + 1,  # tombstones are never removed, so this only grows
            model=model,
            prompt=prompt,
            size=size,
            seconds=seconds,
            created_at=self.config.clock(),
            has_reference=reference is not None,
            error=error,
        )
        self.jobs[job.id] = job
        if reference is not None:
            self._references[job.id] = reference
        await asyncio.to_thread(self._persist, job, reference)
        self.created.append(
            CreatedVideo(job.id, model, size, seconds, job.has_reference, idempotency_key)
        )
        return job

    async def delete(self, job: Job) -> None:
        """Tombstone the job and drop its reference and assets, in memory and on disk."""
        job.deleted = True
        self._references.pop(job.id, None)
        for variant in _VARIANTS:
            self._assets.pop((job.id, variant), None)
        await asyncio.to_thread(self._persist, job, None)

    def reference_for(self, video_id: str) -> bytes | None:
        """The image uploaded with a job, if any (also after a restart with ``state_dir``)."""
        if video_id in self._references:
            return self._references[video_id]
        path = self._path(f"{video_id}.reference")
        return path.read_bytes() if path is not None and path.exists() else None

    async def asset(self, job: Job, variant: str) -> bytes:
        """Render ``variant`` once per job, off the event loop, then serve it from the cache."""
        key = (job.id, variant)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key not in self._assets:
                self._assets[key] = await asyncio.to_thread(self._load_or_render, job, variant)
        return self._assets[key]

    def _load_or_render(self, job: Job, variant: str) -> bytes:
        _, suffix, render = _VARIANTS[variant]
        path = self._path(f"{job.id}.{variant}.{suffix}")
        if path is not None and path.exists():
            return path.read_bytes()
        width, height = job.dimensions
        reference = self.reference_for(job.id)
        data = render(
            width, height, int(job.seconds), prompt=job.prompt, reference=reference, seed=job.id
        )
        if path is not None:
            _write_atomic(path, data)
        return data

    def _persist(self, job: Job, reference: bytes | None) -> None:
        """Write the job record (and a new reference); a deleted job loses its other files."""
        record = self._path(f"{job.id}.json")
        if record is None:
            return
        if reference is not None:
            _write_atomic(record.with_suffix(".reference"), reference)
        if job.deleted:
            for path in record.parent.glob(f"{job.id}.*"):
                if path != record:
                    path.unlink(missing_ok=True)
        _write_atomic(record, json.dumps(asdict(job)).encode())

    def _path(self, name: str) -> Path | None:
        return None if self.config.state_dir is None else self.config.state_dir / name


STORE = web.AppKey("store", VideoStore)


# ---- POST /v1/videos ---------------------------------------------------------------------


async def _read_fields(request: web.Request) -> dict[str, Any]:
    """Form fields of a multipart (what the SDK sends) or JSON create request.

    File parts come back as bytes; a multipart reference object arrives flattened as
    ``input_reference[image_url]`` / ``input_reference[file_id]`` and is kept as a dict.
    """
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError as error:
            raise ApiError(
                400, f"We could not parse the JSON body of your request: {error}"
            ) from None
        if not isinstance(body, dict):
            raise ApiError(400, "The JSON body of your request must be an object.")
        return body
    if request.content_type != "multipart/form-data":
        raise ApiError(400, "Send the request as multipart/form-data or application/json.")
    fields: dict[str, Any] = {}
    async for part in await request.multipart():
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name.startswith("input_reference["):
            key = part.name.removeprefix("input_reference[").rstrip("]")
            fields.setdefault("input_reference", {})[key] = await part.text()
        elif part.filename is not None:
            fields[part.name] = bytes(await part.read(decode=True))
        else:
            fields[part.name] = await part.text()
    return fields


def _text(fields: dict[str, Any], name: str, default: str) -> str:
    value = fields.get(name, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # JSON clients may send "seconds": 8
    if not isinstance(value, str):
        message = f"Invalid type for '{name}': expected a string, but got {type(value).__name__}."
        raise ApiError(400, message, param=name, code="invalid_type")
    return value


def _check_reference(data: bytes, size: str) -> None:
    """OpenAI requires the reference image to be exactly the requested width x height."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image_format, (width, height) = image.format, image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        image_format, width, height = None, 0, 0
    if image_format not in _REFERENCE_FORMATS:
        message = "Invalid 'input_reference': expected a JPEG, PNG or WebP image."
        raise ApiError(400, message, param="input_reference", code="invalid_image_format")
    if f"{width}x{height}" != size:
        message = (
            "Inpaint image must match the requested width and height: "
            f"expected {size}, got {width}x{height}."
        )
        raise ApiError(400, message, param="input_reference", code="invalid_value")


async def create_video(request: web.Request) -> web.Response:
    store = request.app[STORE]
    config = store.config
    fields = await _read_fields(request)
    if "prompt" not in fields:
        message = "Missing required parameter: 'prompt'."
        raise ApiError(400, message, param="prompt", code="missing_required_parameter")
    prompt = _text(fields, "prompt", "")
    if not prompt.strip():
        message = "Invalid 'prompt': expected a non-empty string."
        raise ApiError(400, message, param="prompt", code="empty_string")
    model = _text(fields, "model", "sora-2")
    if model not in config.models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        raise ApiError(404, message, code="model_not_found")
    size = _text(fields, "size", "720x1280")
    if size not in config.models[model]:
        raise _invalid_value("size", size, config.models[model])
    seconds = _text(fields, "seconds", "4")
    if seconds not in config.seconds:
        raise _invalid_value("seconds", seconds, config.seconds)
    reference = fields.get("input_reference")
    if isinstance(reference, bytes):
        await asyncio.to_thread(_check_reference, reference, size)
    elif reference is not None and not isinstance(reference, dict):
        message = "Invalid 'input_reference': expected an image file or an object."
        raise ApiError(400, message, param="input_reference", code="invalid_type")
    rule = config.rule_for(prompt, "create")
    if rule is not None:
        raise ApiError(rule.status, rule.message, code=rule.code)
    generate_rule = config.rule_for(prompt, "generate")
    job = await store.add(
        model=model,
        prompt=prompt,
        size=size,
        seconds=seconds,
        error=None
        if generate_rule is None
        else {"code": generate_rule.code, "message": generate_rule.message},
        reference=reference if isinstance(reference, bytes) else None,
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    return web.json_response(job.video(config))


# ---- the other endpoints -----------------------------------------------------------------


async def retrieve_video(request: web.Request) -> web.Response:
    store = request.app[STORE]
    job = store.get(request.match_info["video_id"])
    headers = {"openai-poll-after-ms": str(store.config.poll_after_ms)}
    return web.json_response(job.video(store.config), headers=headers)


async def list_videos(request: web.Request) -> web.Response:
    """A cursor page as ``AsyncConversationCursorPage`` parses it (``after`` = ``last_id``)."""
    store = request.app[STORE]
    query = request.query
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _invalid_value("order", order, ("asc", "desc"))
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        message = "Invalid 'limit': expected an integer between 1 and 100."
        raise ApiError(400, message, param="limit", code="invalid_value")
    jobs = list(store.jobs.values())
    if order == "desc":
        jobs.reverse()
    after = query.get("after")
    if after is not None:
        ids = [job.id for job in jobs]
        if after not in ids:
            raise ApiError(400, f"Invalid 'after': no video with id '{after}'.", param="after")
        jobs = jobs[ids.index(after) + 1 :]
    visible = [job for job in jobs if not job.deleted]
    page = [job.video(store.config) for job in visible[:limit]]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(visible) > limit,
        }
    )


async def delete_video(request: web.Request) -> web.Response:
    store = request.app[STORE]
    job = store.get(request.match_info["video_id"])
    await store.delete(job)
    return web.json_response({"id": job.id, "object": "video.deleted", "deleted": True})


async def download_content(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    variant = request.query.get("variant", "video")
    if variant not in _VARIANTS:
        raise _invalid_value("variant", variant, tuple(_VARIANTS))
    job = store.get(request.match_info["video_id"])
    video = job.video(store.config)
    if video["status"] == "failed":
        raise ApiError(400, f"Video {job.id} failed; it has no content.", code="video_failed")
    if video["status"] != "completed":
        # 400, not 409: the SDK retries 409 at once (it means "lock timeout"), which cannot
        # help here; the client has to poll GET /v1/videos/{id} until it is completed.
        message = f"Video {job.id} is {video['status']}; its content is not ready yet."
        raise ApiError(400, message, code="video_not_ready")
    if store.config.clock() >= video["expires_at"]:
        # 404 (a typed SDK error, and what gateways document) with a code that tells
        # "expired" apart from "unknown id": the only remedy is to generate it again.
        message = (
            f"The content of video {job.id} expired at {video['expires_at']} (unix time) and "
            "can no longer be downloaded; create a new video."
        )
        raise ApiError(404, message, code="video_expired")
    data = await store.asset(job, variant)
    return await _send(request, data, _VARIANTS[variant][0])


async def _send(request: web.Request, data: bytes, content_type: str) -> web.StreamResponse:
    """Stream ``data`` in chunks, honouring a single ``Range: bytes=a-b`` request."""
    try:
        window = request.http_range
    except ValueError:  # malformed or multiple ranges: RFC 9110 lets us send everything
        window = slice(None, None)
    partial = window.start is not None or window.stop is not None
    start, stop, _ = window.indices(len(data))
    if start >= stop:
        unsatisfiable = {"Content-Range": f"bytes */{len(data)}"}
        raise ApiError(416, "Requested range not satisfiable.", headers=unsatisfiable)
    response = web.StreamResponse(status=206 if partial else 200)
    response.content_type = content_type
    response.content_length = stop - start
    response.headers["Accept-Ranges"] = "bytes"
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
    await response.prepare(request)
    if request.method != "HEAD":  # unlike Response, StreamResponse would send a HEAD body
        view = memoryview(data)
        for offset in range(start, stop, _CHUNK):
            await response.write(view[offset : min(offset + _CHUNK, stop)])
    await response.write_eof()
    return response


# ---- application -------------------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _authorize(request: web.Request, api_key: str | None) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        raise ApiError(401, message)
    if api_key is not None and token != api_key:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


@web.middleware
async def _openai_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Authenticate, then turn every error (ours or the router's) into OpenAI's JSON shape."""
    try:
        _authorize(request, request.app[STORE].config.api_key)
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status in (404, 405):
            return ApiError(404, f"Invalid URL ({request.method} {request.path})").response()
        return ApiError(error.status, error.reason).response()


async def _add_request_id(_request: web.Request, response: web.StreamResponse) -> None:
    """OpenAI tags every response; the SDK exposes it as ``_request_id`` for logs."""
    response.headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")


def create_app(store: VideoStore) -> web.Application:
    """The ``/v1`` Videos API over ``store``."""
    app = web.Application(middlewares=[_openai_errors], client_max_size=_MAX_BODY)
    app[STORE] = store
    app.on_response_prepare.append(_add_request_id)
    app.router.add_post("/v1/videos", create_video)
    app.router.add_get("/v1/videos", list_videos)
    app.router.add_get("/v1/videos/{video_id}", retrieve_video)
    app.router.add_delete("/v1/videos/{video_id}", delete_video)
    app.router.add_get("/v1/videos/{video_id}/content", download_content)
    return app
