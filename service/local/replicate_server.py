"""A local stand-in for Replicate's HTTP API that the ``replicate`` SDK talks to unchanged.

Routes (as ``replicate`` 1.0.7 calls them):
``POST /v1/models/{owner}/{name}/predictions`` and ``POST /v1/predictions``
(``{"version", "input", "webhook", "webhook_events_filter"}``), ``GET
/v1/predictions/{id}``, ``GET /v1/predictions`` (newest first, ``next`` is a full URL
that the SDK follows as given), ``POST /v1/predictions/{id}/cancel``, ``GET
/v1/webhooks/default/secret``, and the output files on ``/delivery/...``. Errors are
RFC 7807 problem details (``title``, ``detail``, ``status``), as the SDK parses them.

Each model takes its own inputs (``replicate_inputs.SCHEMAS``: Kling's ``start_image``/
``end_image``, MiniMax's ``first_frame_image``/``last_frame_image``...), checked as the
model checks them, unknown fields refused; ``received`` keeps the images each
prediction was given, by field, so a test sees whether two photos arrived as two frames.

No kinder than the real host: creates beyond ``create_limit`` per ``create_window``
seconds (a sliding window; Replicate's is 600 a minute) answer 429 with ``Retry-After``
and Replicate's "Request was throttled" text; outputs are deleted ``output_ttl`` after
the prediction ends (an hour on Replicate: the file answers 404 and the prediction says
``data_removed``), predictions time out after ``prediction_timeout``, a
``Cancel-After`` header cancels (or, before start, aborts) at its deadline, a prompt
holding ``safety_marker`` fails with E005, and webhooks are signed per Standard
Webhooks and delivered at most ``webhook_attempts`` times, as Replicate does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from aiohttp import web

from service.local.fake_host import FakeHost, made_with
from service.local.replicate_inputs import SCHEMAS, Problem, check_input, geometry
from service.local.simulator.media import render_mp4
from service.providers.registry import ReplicateFakeSettings
from service.web.webhooks import signed_headers

_MAX_BODY = 64 * 1024 * 1024
_PAGE = 100
E005 = (
    "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
)
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class ReplicateConfig:
    """How the fake behaves; read on every request, so tests may change it live."""

    queue_seconds: float = 0.5
    generation_seconds: float = 4.0
    output_ttl: float = 3600.0
    prediction_timeout: float = 1800.0
    models: dict[str, str] = field(
        default_factory=lambda: {
            "google/veo-3.1": "veo",
            "google/veo-3.1-fast": "veo-fast",
            "openai/sora-2": "sora",
            "kwaivgi/kling-v3-video": "kling-v3",
            "bytedance/seedance-2.0": "seedance-2",
            "minimax/hailuo-02": "hailuo-02",
            "wan-video/wan-2.2-i2v-fast": "wan-2.2-i2v",
        }
    )
    """Model -> its input schema (``replicate_inputs.SCHEMAS``)."""
    create_limit: int | None = None
    """Creates accepted per ``create_window`` seconds (None: no limit)."""
    create_window: float = 60.0
    output_redirect: str | None = None
    """Answer every output file with a redirect here (a hostile model's output)."""
    api_token: str | None = None  # None: any non-empty token
    safety_marker: str = "[flagged]"
    webhook_secret: str = field(default_factory=_new_secret)
    webhook_attempts: int = 3
    webhook_retry_delay: float = 0.2
    clock: Callable[[], float] = time.time


class Delivery(NamedTuple):
    """One webhook POST the fake made, and what the receiver answered (0: unreachable)."""

    webhook_id: str
    prediction_id: str
    event: str
    status: int


@dataclass
class _Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    image: bytes | None
    created_at: float
    deadline: float | None
    webhook: str | None
    events: tuple[str, ...]
    canceled_at: float | None = None
    video: bytes | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def _cancel_after(header: str | None) -> float | None:
    """Go-style duration (``90s``, ``5m``, ``1h30m``) in seconds; at least 5 s."""
    if not header:
        return None
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", header.strip())
    if parts is None or not any(parts.groups()):
        raise Problem(400, "Invalid Cancel-After", f"cannot parse duration {header!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 5:
        raise Problem(400, "Invalid Cancel-After", "the deadline must be at least 5 seconds")
    return total


class ReplicateServer(FakeHost):
    """The fake; ``created`` counts accepted creates, ``deliveries`` the webhooks sent."""

    def __init__(self, config: ReplicateConfig | None = None) -> None:
        super().__init__()
        self.config = config or ReplicateConfig()
        self.created: list[str] = []
        self.create_times: list[float] = []
        """When each accepted create arrived (``clock``)."""
        self.throttled = 0
        """Creates answered 429."""
        self.received: dict[str, dict[str, bytes]] = {}
        """The images each prediction was given, by input field."""
        self.deliveries: list[Delivery] = []
        self._predictions: dict[str, _Prediction] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = web.Application(middlewares=[self._errors], client_max_size=_MAX_BODY)
        self.app.router.add_post("/v1/predictions", self._create_version)
        self.app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create_model)
        self.app.router.add_get("/v1/predictions", self._list)
        self.app.router.add_get("/v1/predictions/{id}", self._get)
        self.app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        self.app.router.add_get("/v1/webhooks/default/secret", self._secret)
        self.app.router.add_get("/delivery/{id}/output.mp4", self._file)
        self.app.on_cleanup.append(self._stop_deliveries)

    # ------------------------------------------------------------ plumbing

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if not request.path.startswith("/delivery/"):
                self._authorize(request)
            return await handler(request)
        except Problem as err:
            return err.response()
        except web.HTTPException as err:
            return Problem(
                err.status, err.reason, "The requested resource could not be found."
            ).response()

    def _authorize(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = self.config.api_token
        if scheme.lower() != "bearer" or not token or (expected is not None and token != expected):
            raise Problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    async def _stop_deliveries(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _origin(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    # ------------------------------------------------------------ create

    async def _create_model(self, request: web.Request) -> web.Response:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model not in self.config.models:
            raise Problem(404, "Not found", "The requested resource could not be found.")
        return await self._create(request, model, await _json(request))

    async def _create_version(self, request: web.Request) -> web.Response:
        body = await _json(request)
        version = body.get("version")
        model = next((m for m in self.config.models if _version_of(m) == version), None)
        if model is None:
            raise Problem(
                422, "Invalid version or not permitted", f"version {version!r} does not exist"
            )
        return await self._create(request, model, body)

    async def _create(self, request: web.Request, model: str, body: dict[str, Any]) -> web.Response:
        self._admit_create()
        inputs = body.get("input")
        if not isinstance(inputs, dict):
            raise Problem(422, "Input validation failed", "- input: input is required")
        shape = self.config.models[model]
        images = await asyncio.to_thread(check_input, shape, inputs)
        first = SCHEMAS[shape].first
        events = body.get("webhook_events_filter") or list(WEBHOOK_EVENTS)
        if not set(events) <= set(WEBHOOK_EVENTS):
            raise Problem(
                422, "Invalid webhook_events_filter", f"events must be among {WEBHOOK_EVENTS}"
            )
        deadline = _cancel_after(request.headers.get("Cancel-After"))
        now = self.config.clock()
        prediction = _Prediction(
            id=_prediction_id(),
            model=model,
            version=_version_of(model),
            input=inputs,
            image=images.get(first) if first else None,
            created_at=now,
            deadline=None if deadline is None else now + deadline,
            webhook=body.get("webhook"),
            events=tuple(events),
        )
        self._predictions[prediction.id] = prediction
        self.created.append(prediction.id)
        self.received[prediction.id] = images
        if prediction.webhook:
            self._spawn(self._deliver_all(prediction, self._origin(request)))
        return web.json_response(self._view(prediction, self._origin(request)), status=201)

    def _admit_create(self) -> None:
        """Replicate's create limit, as a sliding window: beyond it, 429."""
        limit, window = self.config.create_limit, self.config.create_window
        now = self.config.clock()
        if limit is not None:
            recent = [t for t in self.create_times if t > now - window]
            if len(recent) >= limit:
                self.throttled += 1
                wait = max(1, math.ceil(recent[0] + window - now))
                raise Problem(
                    429,
                    "Request was throttled",
                    f"Request was throttled. Your rate limit resets in ~{wait}s.",
                    headers={"Retry-After": str(wait)},
                )
        self.create_times.append(now)

    def creates_in_any_window(self) -> int:
        """The most creates accepted within any ``create_window`` seconds."""
        times, window = sorted(self.create_times), self.config.create_window
        return max(
            (sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times)),
            default=0,
        )

    # ------------------------------------------------------------ reads

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self._view(self._find(request), self._origin(request)))

    async def _list(self, request: web.Request) -> web.Response:
        ordered = sorted(self._predictions.values(), key=lambda p: p.created_at, reverse=True)
        try:
            start = int(request.query.get("cursor", "0"))
        except ValueError:
            raise Problem(400, "Invalid cursor", "the cursor is not one this API gave") from None
        page = ordered[start : start + _PAGE]
        origin = self._origin(request)
        more = start + _PAGE < len(ordered)
        return web.json_response(
            {
                "previous": None
                if start == 0
                else f"{origin}/v1/predictions?cursor={max(0, start - _PAGE)}",
                "next": f"{origin}/v1/predictions?cursor={start + _PAGE}" if more else None,
                "results": [self._view(p, origin) for p in page],
            }
        )

    async def _cancel(self, request: web.Request) -> web.Response:
        prediction = self._find(request)
        if self._status(prediction)[0] in ("starting", "processing"):
            prediction.canceled_at = self.config.clock()
        return web.json_response(self._view(prediction, self._origin(request)))

    async def _secret(self, _request: web.Request) -> web.Response:
        return web.json_response({"key": self.config.webhook_secret})

    async def _file(self, request: web.Request) -> web.StreamResponse:
        prediction = self._predictions.get(request.match_info["id"])
        if (
            prediction is None
            or self._status(prediction)[0] != "succeeded"
            or self._removed(prediction)
        ):
            raise web.HTTPNotFound()
        if self.config.output_redirect is not None:
            return web.Response(status=302, headers={"Location": self.config.output_redirect})
        data = await self._render(prediction)
        response = web.StreamResponse()
        response.content_type = "video/mp4"
        response.content_length = len(data)
        await response.prepare(request)
        view = memoryview(data)
        for offset in range(0, len(view), 64 * 1024):
            await response.write(view[offset : offset + 64 * 1024])
        await response.write_eof()
        return response

    def _find(self, request: web.Request) -> _Prediction:
        prediction = self._predictions.get(request.match_info["id"])
        if prediction is None:
            raise Problem(404, "Not found", "The requested resource could not be found.")
        return prediction

    # ------------------------------------------------------------ state

    def _status(self, p: _Prediction) -> tuple[str, float | None, float | None]:
        """(status, started_at, completed_at) as of the clock."""
        cfg, now = self.config, self.config.clock()
        started = p.created_at + cfg.queue_seconds
        done = started + cfg.generation_seconds
        stops = [t for t in (p.canceled_at, p.deadline) if t is not None]
        stop = min(stops) if stops else None
        timeout_at = started + cfg.prediction_timeout
        if stop is not None and stop < min(done, timeout_at) and now >= stop:
            return (
                ("aborted" if stop < started and p.canceled_at is None else "canceled"),
                (started if stop >= started else None),
                stop,
            )
        if now < started:
            return "starting", None, None
        if timeout_at < done and now >= timeout_at:
            return "failed", started, timeout_at
        if now < done:
            return "processing", started, None
        if cfg.safety_marker.casefold() in str(p.input.get("prompt", "")).casefold():
            return "failed", started, done
        return "succeeded", started, done

    def _removed(self, p: _Prediction) -> bool:
        _, _, completed = self._status(p)
        return completed is not None and self.config.clock() >= completed + self.config.output_ttl

    def _view(self, p: _Prediction, origin: str) -> dict[str, Any]:
        status, started, completed = self._status(p)
        removed = self._removed(p)
        output, error, logs = None, None, ""
        if started is not None:
            end = completed if completed is not None else self.config.clock()
            percent = min(
                100, int(100 * (end - started) / max(self.config.generation_seconds, 1e-6))
            )
            logs = f"{percent:3d}%|{'#' * (percent // 10):<10}| {percent}/100\n"
        if status == "succeeded" and not removed:
            output = f"{origin}/delivery/{p.id}/output.mp4"
        elif status == "failed":
            timed_out = (
                completed is not None
                and started is not None
                and (completed - started >= self.config.prediction_timeout)
            )
            error = "Prediction timed out" if timed_out else E005
        return {
            "id": p.id,
            "model": p.model,
            "version": p.version,
            "input": None if removed else p.input,
            "logs": logs,
            "output": output,
            "data_removed": removed,
            "error": error,
            "status": status,
            "source": "api",
            "created_at": _iso(p.created_at),
            "started_at": _iso(started),
            "completed_at": _iso(completed),
            "metrics": {}
            if completed is None or started is None
            else {"predict_time": completed - started},
            "urls": {
                "get": f"{origin}/v1/predictions/{p.id}",
                "cancel": f"{origin}/v1/predictions/{p.id}/cancel",
                "web": f"https://replicate.com/p/{p.id}",
            },
            "webhook": p.webhook,
            "webhook_events_filter": list(p.events),
        }

    async def _render(self, p: _Prediction) -> bytes:
        async with p.lock:
            if p.video is None:
                width, height, seconds = geometry(self.config.models[p.model], p.input, p.image)
                p.video = await asyncio.to_thread(
                    render_mp4,
                    width,
                    height,
                    seconds,
                    prompt=str(p.input.get("prompt", "")),
                    reference=p.image,
                    seed=p.id,
                )
            return p.video

    # ------------------------------------------------------------ webhooks

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_all(self, p: _Prediction, origin: str) -> None:
        """Send "start" and "completed" when they happen, as the filter asks."""
        sent_start = False
        while True:
            status, started, completed = self._status(p)
            if started is not None and not sent_start:
                sent_start = True
                if "start" in p.events:
                    await self._deliver(p, origin, "start")
            if completed is not None:
                if "completed" in p.events:
                    if status == "succeeded":
                        await self._render(p)  # the file exists before it is announced
                    await self._deliver(p, origin, "completed")
                return
            await asyncio.sleep(0.02)

    async def _deliver(self, p: _Prediction, origin: str, event: str) -> None:
        assert p.webhook is not None
        body = json.dumps(self._view(p, origin))
        webhook_id = f"msg_{uuid.uuid4().hex}"
        for attempt in range(self.config.webhook_attempts):
            headers = signed_headers(self.config.webhook_secret, webhook_id, body)
            status = 0
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=5.0) as http:
                    status = (await http.post(p.webhook, content=body, headers=headers)).status_code
            self.deliveries.append(Delivery(webhook_id, p.id, event, status))
            if 200 <= status < 300:
                return
            if attempt + 1 < self.config.webhook_attempts:
                await asyncio.sleep(self.config.webhook_retry_delay)

    # ------------------------------------------------------------ for tests

    def expire_outputs(self) -> None:
        """Move every finished prediction past its output's deletion."""
        for p in self._predictions.values():
            p.created_at -= (
                self.config.output_ttl + self.config.queue_seconds + self.config.generation_seconds
            )


def stand_in(
    _settings: ReplicateFakeSettings, _data_dir: Path, config: ReplicateConfig | None
) -> Callable[[], ReplicateServer]:
    """The fake as SORA_PROVIDER=replicate's stand-in."""
    return made_with(ReplicateServer, config or ReplicateConfig())


def _prediction_id() -> str:
    """Replicate's ids: 26 lowercase base32 characters."""
    return base64.b32encode(secrets.token_bytes(20)).decode().lower()[:26]


def _version_of(model: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, model).hex + uuid.uuid5(uuid.NAMESPACE_DNS, model).hex


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise Problem(400, "Invalid JSON", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise Problem(400, "Invalid JSON", "the request body must be an object")
    return body
