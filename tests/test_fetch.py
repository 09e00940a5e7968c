"""Fetching photos from untrusted URLs: limits, redirects, and addresses refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web

from service.fetch import FetchError, Limits, fetch_photo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LIMITS = Limits(max_bytes=1000, timeout=2.0)


@pytest.fixture
async def host() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def serve(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield serve
    for runner in runners:
        await runner.cleanup()


def fixed(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handler


async def fetch(url: str, limits: Limits = LIMITS) -> bytes:
    async with httpx.AsyncClient() as client:
        return await fetch_photo(client, "image1_url", url, limits)


async def test_a_redirect_is_followed_and_checked(host: Callable[..., Awaitable[str]]) -> None:
    base = await host({"/a": fixed(302, headers={"Location": "/b"}), "/b": fixed(200, b"photo")})
    assert await fetch(f"{base}/a") == b"photo"


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("file:///etc/passwd", "must be an http"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[ff02::1]/x.jpg", "non-routable"),
    ],
)
async def test_redirects_to_forbidden_places_are_refused_for_good(
    host: Callable[..., Awaitable[str]], location: str, message: str
) -> None:
    base = await host({"/a": fixed(302, headers={"Location": location})})
    with pytest.raises(FetchError, match=message) as caught:
        await fetch(f"{base}/a")
    assert caught.value.permanent


async def test_a_redirect_loop_ends(host: Callable[..., Awaitable[str]]) -> None:
    base = await host({"/a": fixed(302, headers={"Location": "/a"})})
    with pytest.raises(FetchError, match="redirects more than") as caught:
        await fetch(f"{base}/a")
    assert caught.value.permanent


async def test_private_addresses_are_refused_when_not_allowed(
    host: Callable[..., Awaitable[str]],
) -> None:
    base = await host({"/a": fixed(200, b"photo")})
    with pytest.raises(FetchError, match="private or loopback") as caught:
        await fetch(f"{base}/a", Limits(1000, 2.0, allow_private=False))
    assert caught.value.permanent


@pytest.mark.parametrize("url", ["http://[::1/x.jpg", "http:///nohost.jpg", "ftp://x/y.jpg"])
async def test_malformed_urls_are_permanent_errors(url: str) -> None:
    with pytest.raises(FetchError) as caught:
        await fetch(url)
    assert caught.value.permanent


async def test_an_unresolvable_host_may_come_back(host: Callable[..., Awaitable[str]]) -> None:
    with pytest.raises(FetchError, match="does not resolve") as caught:
        await fetch("http://photos.invalid/a.jpg")
    assert not caught.value.permanent


@pytest.mark.parametrize(
    ("status", "permanent"), [(404, True), (403, True), (503, False), (429, False)]
)
async def test_http_errors_say_whether_to_retry(
    host: Callable[..., Awaitable[str]], status: int, permanent: bool
) -> None:
    base = await host({"/a": fixed(status)})
    with pytest.raises(FetchError, match=f"HTTP {status}") as caught:
        await fetch(f"{base}/a")
    assert caught.value.permanent is permanent


async def test_the_byte_limit_holds_without_a_content_length(
    host: Callable[..., Awaitable[str]],
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b"x" * 100)
        return response

    base = await host({"/a": endless})
    with pytest.raises(FetchError, match="larger than 1,000 bytes") as caught:
        await fetch(f"{base}/a")
    assert caught.value.permanent


async def test_a_host_that_trickles_times_out(host: Callable[..., Awaitable[str]]) -> None:
    release = asyncio.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x")
        await release.wait()
        return response

    base = await host({"/a": trickle})
    try:
        with pytest.raises(FetchError, match="did not download within") as caught:
            await fetch(f"{base}/a", Limits(1000, 0.3))
        assert not caught.value.permanent
    finally:
        release.set()


async def test_a_compressed_body_is_refused_before_it_can_inflate(
    host: Callable[..., Awaitable[str]],
) -> None:
    import gzip

    bomb = gzip.compress(b"\0" * 10_000_000)
    base = await host({"/a": fixed(200, bomb, {"Content-Encoding": "gzip"})})
    with pytest.raises(FetchError, match="gzip-compressed") as caught:
        await fetch(f"{base}/a", Limits(max_bytes=1_000_000, timeout=2.0))
    assert caught.value.permanent
