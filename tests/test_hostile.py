"""Hostile rows against a running worker: defaults plus an allowlist naming one host.

The worker runs with the embedded defaults and SORA_IMAGE_ALLOW_HOSTS naming one
hostile photo host (every bad media case lives there). A canary on another loopback
port records every TCP connection: rows aim at it in every spelling, directly and
through redirects, and it must never be contacted. Every row must end with an error a
person can act on; the worker must keep serving good rows throughout. Last, a provider
host that never finishes an answer must not hold a row for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from aiohttp import web
from PIL import Image

from service.local.simulator import SimulatorConfig
from service.runtime import Runtime, open_runtime
from service.web.serving import serve
from tests.conftest import FAST_SIMULATOR, eventually, make_settings, simulator_of
from tests.test_pipeline import finished, running

MAX_BYTES = 2_000_000


class Canary:
    """Counts every TCP connection to its port, on 127.0.0.1 and (if possible) ::1."""

    def __init__(self) -> None:
        self.connections = 0
        self.servers: list[asyncio.Server] = []
        self.port = 0

    async def _seen(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()
        writer.close()

    async def start(self) -> None:
        first = await asyncio.start_server(self._seen, "127.0.0.1", 0)
        self.servers.append(first)
        self.port = first.sockets[0].getsockname()[1]
        with contextlib.suppress(OSError):  # no IPv6 loopback here: nothing to guard
            self.servers.append(await asyncio.start_server(self._seen, "::1", self.port))

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


def png(size: tuple[int, int], mode: str = "RGB", color: Any = (30, 160, 90)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


@contextlib.asynccontextmanager
async def hostile_host(canary_port: int) -> AsyncIterator[tuple[int, list[str]]]:
    """Every bad media case on one host; yields its port and the paths requested."""
    requested: list[str] = []
    release = asyncio.Event()
    good = png((400, 500))
    gif = io.BytesIO()
    Image.new("RGB", (20, 20)).save(gif, format="GIF")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        while not release.is_set():
            await response.write(b"\x89PNG" * 16_384)
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(good[:100])
        await release.wait()
        return response

    async def liar(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(10**10)})
        await response.prepare(request)
        await response.write(good)
        return response

    def body(data: bytes, **headers: str) -> web.Response:
        return web.Response(body=data, headers=headers or None, content_type="image/png")

    def to(location: str) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    canary = f"127.0.0.1:{canary_port}"

    async def handler(request: web.Request) -> web.StreamResponse:
        requested.append(request.path)
        match request.path:
            case "/endless":
                return await endless(request)
            case "/slow":
                return await slow(request)
            case "/liar":
                return await liar(request)
        responses = {
            "/good.png": lambda: body(good),
            "/first.png": lambda: body(good),
            "/bomb.png": lambda: body(png((12_000, 12_000), "1", 0)),
            "/big.png": lambda: body(png((7_000, 7_000), "L", 0)),
            "/text.png": lambda: body(b"<html>401 Unauthorized</html>"),
            "/truncated.png": lambda: body(png((300, 300), "RGB", (1, 2, 3))[:200]),
            "/anim.gif": lambda: body(gif.getvalue()),
            "/gzip": lambda: body(gzip.compress(good), **{"Content-Encoding": "gzip"}),
            "/unauthorized": lambda: web.Response(status=401, text="internal admin"),
            "/loop": lambda: to("/loop"),
            "/to-canary": lambda: to(f"http://{canary}/x"),
            "/to-canary-mapped": lambda: to(f"http://[::ffff:127.0.0.1]:{canary_port}/x"),
            "/to-canary-decimal": lambda: to(f"http://2130706433:{canary_port}/x"),
            "/to-metadata": lambda: to("http://169.254.169.254/latest/meta-data/"),
            "/to-file": lambda: to("file:///etc/passwd"),
        }
        make = responses.get(request.path)
        return make() if make else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        yield port, requested
    finally:
        release.set()
        await runner.cleanup()


async def test_hostile_rows_fail_alone_and_the_canary_is_never_contacted(
    db_url: str, tmp_path: Path
) -> None:
    canary = Canary()
    await canary.start()
    try:
        async with hostile_host(canary.port) as (port, requested):
            host, c = f"http://127.0.0.1:{port}", canary.port
            settings = make_settings(
                db_url,
                tmp_path,
                image_allow_hosts=f"127.0.0.1:{port}",
                image_max_bytes=MAX_BYTES,
                image_timeout=1.5,
            )
            # url -> what the row's error must say
            cases: dict[str, str] = {
                f"http://127.0.0.1:{c}/a.png": "not allowed",
                f"http://localhost:{c}/a.png": "not allowed",
                f"http://2130706433:{c}/a.png": "not allowed",
                f"http://0x7f000001:{c}/a.png": "not allowed",
                f"http://127.1:{c}/a.png": "not allowed",
                f"http://0.0.0.0:{c}/a.png": "not allowed",
                f"http://[::1]:{c}/a.png": "not allowed",
                f"http://[::ffff:127.0.0.1]:{c}/a.png": "not allowed",
                f"https://127.0.0.1:{c}/a.png": "not allowed",
                f"http://localhost:{port}/good.png": "not allowed",  # allowlist is exact
                "http://169.254.169.254/latest/meta-data/": "not allowed",
                "http://[fd00::1]/a.png": "not allowed",
                "file:///etc/passwd": "must be an http(s) URL",
                "gopher://127.0.0.1:70/": "must be an http(s) URL",
                f"{host}/to-canary": "not allowed",
                f"{host}/to-canary-mapped": "not allowed",
                f"{host}/to-canary-decimal": "not allowed",
                f"{host}/to-metadata": "not allowed",
                f"{host}/to-file": "must be an http(s) URL",
                f"{host}/loop": "redirects more than 5 times",
                f"{host}/bomb.png": "is 12000x12000 (144.0 MP); the limit is 40 MP",
                f"{host}/big.png": "is 7000x7000 (49.0 MP); the limit is 40 MP",
                f"{host}/text.png": "is not a readable image; use JPEG, PNG or WebP",
                f"{host}/truncated.png": "is not a readable image (its data is damaged",
                f"{host}/anim.gif": "is GIF; use JPEG, PNG or WebP",
                f"{host}/endless": f"is larger than {MAX_BYTES:,} bytes",
                f"{host}/liar": f"the limit is {MAX_BYTES:,}",
                f"{host}/slow": "did not download within 1.5 s",
                f"{host}/gzip": "could not be fetched from the internal host",
                f"{host}/unauthorized": "could not be fetched from the internal host",
            }
            async with open_runtime(
                settings,
                apply_migrations=False,
                stand_in_configs={"openai": SimulatorConfig(**FAST_SIMULATOR)},
            ) as runtime:
                rows: dict[str, UUID] = {
                    url: await runtime.repo.insert_request("two friends hug", url) for url in cases
                }
                # Finding 2: the second URL is refused, so the first is never fetched.
                shadow = await runtime.repo.insert_request(
                    "x", f"{host}/first.png", "file:///etc/shadow"
                )
                odd_prompt = "\u202egub\u202c 👋 <script>alert(1)</script> " + "x" * 3000
                good = await runtime.repo.insert_request(odd_prompt, f"{host}/good.png")
                async with running(runtime.worker()):
                    results = {url: await finished(runtime, rid) for url, rid in rows.items()}
                    shadow_row = await finished(runtime, shadow)
                    good_row = await finished(runtime, good)
                created = len(simulator_of(runtime).created)
    finally:
        await canary.stop()

    assert canary.connections == 0
    assert good_row["status"] == "completed", good_row["error"]
    assert created == 1  # only the good row reached the provider
    assert shadow_row["status"] == "failed" and "image2_url" in shadow_row["error"]
    assert "/first.png" not in requested
    wrong = {
        url: row["error"]
        for url, row in results.items()
        if row["status"] != "failed" or cases[url] not in (row["error"] or "")
    }
    assert wrong == {}
    for row in [*results.values(), shadow_row]:
        error = row["error"]
        assert "object at 0x" not in error and "Traceback" not in error and "<" not in error, error
        assert "HTTP 401" not in error and "internal admin" not in error, error


async def test_the_demo_photos_need_no_setting(db_url: str, tmp_path: Path) -> None:
    """The one exception the worker makes by itself: its own storage server's origin."""
    settings = make_settings(db_url, tmp_path)
    async with open_runtime(
        settings,
        apply_migrations=False,
        stand_in_configs={"openai": SimulatorConfig(**FAST_SIMULATOR)},
    ) as runtime:
        from service.commands.demo import upload_photos

        first, second = await upload_photos(runtime)
        row_id = await runtime.repo.insert_request("demo", first, second)
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]


# ---------------------------------------------------------------- a hostile provider


def trickling_provider(creates: list[str] | None = None) -> web.Application:
    """An OpenAI-shaped host that answers its status one byte at a time, each well
    inside any read timeout, so that no answer ever completes; given ``creates``, it
    answers creates that way too (and notes each one there)."""
    job = {"id": "video_trickle", "object": "video", "status": "queued", "progress": 0,
           "model": "sora-2", "size": "720x1280", "seconds": "4", "created_at": 1}  # fmt: skip

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.1)

    async def create(request: web.Request) -> web.StreamResponse:
        await request.read()
        if creates is None:
            return web.json_response(job)
        creates.append(request.headers.get("Idempotency-Key", ""))
        return await trickle(request)

    async def listing(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [], "has_more": False})

    app = web.Application()
    app.router.add_post("/v1/videos", create)
    app.router.add_get("/v1/videos", listing)
    app.router.add_get("/v1/videos/{id}", trickle)
    return app


@asynccontextmanager
async def slow_host_runtime(
    db_url: str, tmp_path: Path, app: web.Application
) -> AsyncIterator[Runtime]:
    """A worker's runtime whose provider is ``app``, with a 1 s provider timeout."""
    runner, port = await serve(app, "127.0.0.1", 0)
    settings = make_settings(
        db_url,
        tmp_path,
        openai_api_key="sk-test",
        openai_base_url=f"http://127.0.0.1:{port}/v1",
        provider_timeout=1.0,
    )
    try:
        async with open_runtime(settings, apply_migrations=False) as runtime:
            yield runtime
    finally:
        await runner.cleanup()


async def test_a_create_answered_too_slowly_is_in_doubt_not_waited_on_for_ever(
    db_url: str, tmp_path: Path
) -> None:
    """Reconciliation believes "no job" once the provider timeout has passed since the
    intent, so no create may outlive it: cut short, it is in doubt and reconciled."""
    creates: list[str] = []
    async with slow_host_runtime(db_url, tmp_path, trickling_provider(creates)) as runtime:
        row_id = await runtime.repo.insert_request("a hug from a slow host")
        async with running(runtime.worker()):
            row = await eventually(
                lambda: runtime.operator.fetch_row(row_id),
                lambda r: (
                    r is not None and "no whole answer to create within 1 s" in (r["error"] or "")
                ),
                within=30,
            )
    assert creates and row["submit_key"] is not None
    assert str(row["submit_key"]) == creates[0]  # the intent was recorded before it was sent


async def test_a_provider_that_trickles_its_status_holds_no_row(
    db_url: str, tmp_path: Path
) -> None:
    """Each poll gives up at the provider timeout and the row is let go, to be polled
    again later (a paid job is never failed for an unwell host before its deadline);
    without the bound the first poll would hold the row, and its slot, for ever."""
    async with slow_host_runtime(db_url, tmp_path, trickling_provider()) as runtime:
        row_id = await runtime.repo.insert_request("a hug from a slow host")
        async with running(runtime.worker()):
            row = await eventually(
                lambda: runtime.operator.fetch_row(row_id),
                lambda r: r is not None and r["attempts"] >= 2,
                within=30,
            )
    assert row["stage"] == "generating"
    assert "did not arrive within 1 s (SORA_PROVIDER_TIMEOUT)" in row["error"], row["error"]
