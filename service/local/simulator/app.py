"""An aiohttp application that speaks the OpenAI Videos API (``/v1/videos``).

The official ``openai`` SDK is the arbiter of the wire format: the contract tests drive
every route through it (``tests/test_simulator_contract.py``).
"""

from __future__ import annotations

import asyncio
import io
import random
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image

from .config import FailureRule, SimulatorConfig
from .errors import ApiError, invalid_value
from .profiles import FILES, Profile
from .store import VARIANTS, Job, VideoStore
from .webhooks import WebhookSender

__all__ = ["create_app"]

_CHUNK = 64 * 1024
_PADDING = random.Random(0).randbytes(256 * 1024)
"""What a padded video is filled with: incompressible, like the rest of a real MP4."""
_MAX_BODY = 64 * 1024 * 1024  # aiohttp's 1 MiB default is too small for a reference image
_REFERENCE_FORMATS = ("JPEG", "PNG", "WEBP")


STORE = web.AppKey("store", VideoStore)
WEBHOOKS = web.AppKey("webhooks", WebhookSender)


def _host(request: web.Request) -> Profile:
    """The host this simulator plays (read per request: tests may switch it)."""
    return Profile(request.app[STORE].config.profile)


def _job(request: web.Request, store: VideoStore) -> Job:
    host = _host(request)
    job_id, routed_model = host.job_id(request.match_info["video_id"])
    job = store.get(job_id)
    host.check_route(routed_model, job.model)
    return job


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
        raise _host(request).unknown_model(model)
    size = _text(fields, "size", "720x1280")
    if size not in config.models[model]:
        raise invalid_value("size", size, config.models[model])
    seconds = _text(fields, "seconds", "4")
    if seconds not in config.seconds:
        raise invalid_value("seconds", seconds, config.seconds)
    reference = fields.get("input_reference")
    if isinstance(reference, bytes):
        await asyncio.to_thread(_check_reference, reference, size)
    elif reference is not None and not isinstance(reference, dict):
        message = "Invalid 'input_reference': expected an image file or an object."
        raise ApiError(400, message, param="input_reference", code="invalid_type")
    refusal = config.rule_for(prompt, "create")
    if refusal is not None and not refusal.after_create:
        raise _refusal(refusal)
    generate = config.rule_for(prompt, "generate")
    job = await store.add(
        model=model,
        prompt=prompt,
        size=size,
        seconds=seconds,
        error=None if generate is None else {"code": generate.code, "message": generate.message},
        reference=reference if isinstance(reference, bytes) else None,
        idempotency_key=request.headers.get("Idempotency-Key")
        if _host(request).forwards_idempotency_key
        else None,
    )
    request.app[WEBHOOKS].watch(job)
    if refusal is not None:  # after_create: the job exists, the answer says otherwise
        raise _refusal(refusal)
    slow = config.rule_for(prompt, "slow_create")
    if slow is not None:
        await asyncio.sleep(slow.delay)
    return web.json_response(_host(request).video(job.video(config), created=True))


def _refusal(rule: FailureRule) -> ApiError:
    headers = None if rule.retry_after is None else {"Retry-After": f"{rule.retry_after:g}"}
    return ApiError(rule.status, rule.message, code=rule.code, headers=headers)


def _scripted_failure(config: SimulatorConfig, prompt: str) -> dict[str, str] | None:
    """Apply the FailureRules: refuse now ("create"), or the error the job will end with."""
    rule = config.rule_for(prompt, "create")
    if rule is not None:
        raise _refusal(rule)
    rule = config.rule_for(prompt, "generate")
    return None if rule is None else {"code": rule.code, "message": rule.message}


async def remix_video(request: web.Request) -> web.Response:
    """``POST /v1/videos/{id}/remix``: a new job from a completed one and a new prompt."""
    store = request.app[STORE]
    config = store.config
    source = _job(request, store)
    if source.video(config)["status"] != "completed":
        message = f"Video {source.id} is not completed; only completed videos can be remixed."
        raise ApiError(400, message, code="video_not_ready")
    fields = await _read_fields(request)
    prompt = _text(fields, "prompt", "")
    if not prompt.strip():
        message = "Invalid 'prompt': expected a non-empty string."
        raise ApiError(400, message, param="prompt", code="empty_string")
    error = _scripted_failure(config, prompt)
    job = await store.add(
        model=source.model,
        prompt=prompt,
        size=source.size,
        seconds=source.seconds,
        error=error,
        reference=None,
        idempotency_key=request.headers.get("Idempotency-Key"),
        remixed_from=source.id,
    )
    request.app[WEBHOOKS].watch(job)
    return web.json_response(_host(request).video(job.video(config), created=True))


# ---- the other endpoints -----------------------------------------------------------------


async def retrieve_video(request: web.Request) -> web.Response:
    store = request.app[STORE]
    job = _job(request, store)
    after = store.config.poll_after_ms
    headers = {} if after is None else {"openai-poll-after-ms": str(after)}
    shown = _host(request).video(job.video(store.config), origin=_origin(request))
    return web.json_response(shown, headers=headers)


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def inline_file(request: web.Request) -> web.StreamResponse:
    """``/files/{id}.mp4``: the inline link of a finished job (new-api's xAI relay),
    served without a key as a signed URL would be."""
    store = request.app[STORE]
    job_id = request.match_info["name"].removesuffix(".mp4")
    try:
        job = store.get(job_id)
    except ApiError:
        raise web.HTTPNotFound() from None
    if job.video(store.config)["status"] != "completed":
        raise web.HTTPNotFound()
    return await _send(request, await _video(store, job, "video"), "video/mp4")


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models`` as OpenAI answers it: the models this simulator serves."""
    config = request.app[STORE].config
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "sora-worker-simulator"}
        for name in config.models
    ]
    return web.json_response({"object": "list", "data": data})


async def list_videos(request: web.Request) -> web.Response:
    """A cursor page as ``AsyncConversationCursorPage`` parses it (``after`` = ``last_id``)."""
    store = request.app[STORE]
    host = _host(request)
    if not host.lists:
        raise host.refuse_list()
    query = request.query
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_value("order", order, ("asc", "desc"))
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        message = "Invalid 'limit': expected an integer between 1 and 100."
        raise ApiError(400, message, param="limit", code="invalid_value")
    store.refresh()
    jobs = store.ordered()
    if order == "desc":
        jobs.reverse()
    after = query.get("after")
    if after is not None:
        ids = [job.id for job in jobs]
        if after not in ids:
            raise ApiError(400, f"Invalid 'after': no video with id '{after}'.", param="after")
        jobs = jobs[ids.index(after) + 1 :]
    visible = [job for job in jobs if not job.deleted]
    page = [host.video(job.video(store.config)) for job in visible[:limit]]
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
    job = _job(request, store)
    await store.delete(job)
    video_id = _host(request).public_id(job.id, job.model)
    return web.json_response({"id": video_id, "object": "video.deleted", "deleted": True})


async def download_content(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    variant = request.query.get("variant", "video")
    if variant not in VARIANTS:
        raise invalid_value("variant", variant, tuple(VARIANTS))
    if not _host(request).serves_content:
        raise ApiError(404, f"Invalid URL (GET {request.path})")
    if not _host(request).honours_variants:
        variant = "video"  # LiteLLM drops the parameter: a thumbnail request gets the MP4
    job = _job(request, store)
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
    cut = store.config.rule_for(job.prompt, "download") if variant == "video" else None
    return await _send(
        request,
        await _video(store, job, variant),
        VARIANTS[variant][0],
        None if cut is None else cut.truncate_at,
    )


async def _video(store: VideoStore, job: Job, variant: str) -> _Body:
    """A job's file as served: a video as large as its shape says (``JobShapes``)."""
    data = await store.asset(job, variant)
    shapes = store.config.shapes
    size = shapes.size(job.id) if shapes is not None and variant == "video" else None
    return _Body(data, size or len(data))


class _Body:
    """What a download sends: the rendered file, padded to ``size`` bytes with a
    trailing MP4 ``free`` box (players skip it) when ``size`` asks for more, so that a
    video can be as large as a real one without being rendered or held that large."""

    def __init__(self, data: bytes, size: int) -> None:
        free = size - len(data)
        self.head = data + struct.pack(">I4s", free, b"free") if free >= 8 else data
        self.length = max(size, len(data)) if free >= 8 else len(data)

    def chunks(self, start: int, stop: int, size: int) -> Iterator[memoryview]:
        """Bytes ``start`` to ``stop`` in pieces of at most ``size``."""
        head, padding = memoryview(self.head), memoryview(_PADDING)
        offset = start
        while offset < stop:
            if offset < len(head):
                end = min(stop, len(head), offset + size)
                yield head[offset:end]
            else:
                at = (offset - len(head)) % len(padding)
                end = min(stop, offset + size, offset + len(padding) - at)
                yield padding[at : at + end - offset]
            offset = end


async def _send(
    request: web.Request,
    body: bytes | _Body,
    content_type: str,
    truncate_at: float | None = None,
) -> web.StreamResponse:
    """Stream ``body`` in chunks, honouring a single ``Range: bytes=a-b`` request.

    ``truncate_at``: send only that fraction of the body promised, then drop the
    connection (a download cut short).
    """
    if isinstance(body, bytes):
        body = _Body(body, len(body))
    try:
        window = request.http_range
    except ValueError:  # malformed or multiple ranges: RFC 9110 lets us send everything
        window = slice(None, None)
    partial = window.start is not None or window.stop is not None
    start, stop, _ = window.indices(body.length)
    if start >= stop:
        unsatisfiable = {"Content-Range": f"bytes */{body.length}"}
        raise ApiError(416, "Requested range not satisfiable.", headers=unsatisfiable)
    response = web.StreamResponse(status=206 if partial else 200)
    response.content_type = content_type
    response.content_length = stop - start
    response.headers["Accept-Ranges"] = "bytes"
    if partial:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{body.length}"
    await response.prepare(request)
    try:
        if request.method != "HEAD":  # unlike Response, StreamResponse would send a HEAD body
            if truncate_at is not None:
                cut = start + int((stop - start) * truncate_at)
                for piece in body.chunks(start, cut, _CHUNK):
                    await response.write(piece)
                assert request.transport is not None
                request.transport.close()  # after the bytes written so far
                return response
            for piece in body.chunks(start, stop, _CHUNK):
                await response.write(piece)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-download (a worker killed or cancelled): its loss
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
        if not request.path.startswith(FILES + "/"):
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
    app[WEBHOOKS] = WebhookSender(store)
    app.on_cleanup.append(lambda app: app[WEBHOOKS].aclose())
    app.on_response_prepare.append(_add_request_id)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/videos", create_video)
    app.router.add_get("/v1/videos", list_videos)
    app.router.add_get("/v1/videos/{video_id}", retrieve_video)
    app.router.add_delete("/v1/videos/{video_id}", delete_video)
    app.router.add_get("/v1/videos/{video_id}/content", download_content)
    app.router.add_post("/v1/videos/{video_id}/remix", remix_video)
    app.router.add_get(FILES + "/{name}", inline_file)
    return app
