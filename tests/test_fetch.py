"""Fetching photos from untrusted URLs: addresses refused, connections pinned, limits.

Hosts that play "the internet" run on 127.0.0.1, which the fetcher (rightly) refuses.
So most tests go through ``Internet``: a resolver that gives test names public
addresses and a network backend that carries a connection to a public address to the
local server standing in for it, recording every connection made.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from aiohttp import web

from service.media.addresses import is_public, parse_host_ports, system_resolver
from service.media.fetch import Access, FetchError, Limits, PhotoFetcher
from service.media.pinned import HTTPX_ERRORS, as_httpx_errors

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[..., Awaitable[int]]
LIMITS = Limits(max_bytes=1000, timeout=2.0)
PUBLIC_IP = "93.184.215.14"  # stands in for a photo host on the internet


class Internet(httpcore.AsyncNetworkBackend):
    """DNS and routing for the tests: names -> public addresses -> local servers."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.routes: dict[tuple[str, int], int] = {}
        self.connections: list[tuple[str, int]] = []
        self.lookups: list[str] = []
        self._real = httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return list(self.names[host])

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connections.append((host, port))
        local = self.routes.get((host, port))
        if local is None:
            raise httpcore.ConnectError("no route in the test internet")
        return await self._real.connect_tcp("127.0.0.1", local, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def fetcher(self, limits: Limits = LIMITS, **kwargs: Any) -> PhotoFetcher:
        return PhotoFetcher(limits, resolver=self.resolve, network=self, **kwargs)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a local HTTP(S) server with these routes; returns its port."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler], context: ssl.SSLContext | None = None) -> int:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def internet() -> Internet:
    return Internet()


@pytest.fixture
async def public(serve: Serve, internet: Internet) -> Callable[..., Awaitable[str]]:
    """A photo host on the (test) internet: http://photos.test serving these routes."""

    async def start(routes: dict[str, Handler]) -> str:
        port = await serve(routes)
        internet.names["photos.test"] = [PUBLIC_IP]
        internet.routes[(PUBLIC_IP, 80)] = port
        return "http://photos.test"

    return start


def fixed(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handler


# ------------------------------------------------------------------ the address rule


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",  # finding 5: refused exactly like 127.0.0.1
        "0.0.0.0",
        "::",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # CGNAT
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "fd00::1",
        "fec0::1",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.0.8",
        "198.18.0.1",
        "203.0.113.9",
        "2001:db8::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 around 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 around 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
        "64:ff9b:1::1",
        "2001::1",  # Teredo
        # Issue 24, finding 8: IPv4-translated (RFC 2765), and the rest of the space
        # outside 2000::/3 that no public host is given (Python calls some of it global).
        "::ffff:0:7f00:1",  # ::ffff:0:127.0.0.1
        "::ffff:0:808:808",  # translated, even around a public IPv4 address
        "::1:0:0:1",
        "::ffff:1:7f00:1",
        "100:0:0:1::1",  # dummy prefix (RFC 9780)
        "200::1",
        "1000::1",
        "4000::1",
        "5f00::1",  # segment routing
        "e000::1",
        "fe00::1",
    ],
)
def test_non_public_addresses_fail_the_one_rule(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        PUBLIC_IP,
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses_pass_in_every_family(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


# ---------------------------------------------- refused before any connection is made


LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/a.jpg",
    "http://localhost:{port}/a.jpg",
    "http://2130706433:{port}/a.jpg",
    "http://0x7f000001:{port}/a.jpg",
    "http://127.1:{port}/a.jpg",
    "http://0177.0.0.1:{port}/a.jpg",
    "http://0.0.0.0:{port}/a.jpg",
    "http://[::1]:{port}/a.jpg",
    "http://[::ffff:127.0.0.1]:{port}/a.jpg",
    "http://[::ffff:7f00:1]:{port}/a.jpg",
    "https://127.0.0.1:{port}/a.jpg",
    "http://LocalHost:{port}/a.jpg",
]


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
async def test_every_spelling_of_loopback_is_refused_without_connecting(
    serve: Serve, spelling: str
) -> None:
    """Finding 1: by default (no allowlist), no loopback spelling reaches a server.

    The real system resolver reads the odd spellings (2130706433, 0x7f000001, 127.1);
    a canary server on the port records any request that gets through.
    """
    hits: list[str] = []

    async def canary(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        return web.Response(body=b"secret")

    port = await serve({"/a.jpg": canary})
    url = spelling.format(port=port)
    with pytest.raises(FetchError, match=r"not allowed") as caught:
        await PhotoFetcher(LIMITS).fetch_url("image1_url", url)
    assert caught.value.permanent
    assert hits == []


@pytest.mark.parametrize(
    ("host", "reading"),
    [
        ("0177.0.0.1", "127.0.0.1"),  # octal to some resolvers, 177.0.0.1 to others
        ("0127.0.0.1", "87.0.0.1"),
        ("127.000.000.001", "127.0.0.1"),
        ("010.0.0.1", "8.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x08.8.8.8", "8.8.8.8"),  # public, but spelt for a resolver to guess
        ("127.0.0.1.", "127.0.0.1"),
    ],
)
async def test_an_address_spelt_so_resolvers_may_disagree_is_not_allowed(
    internet: Internet, host: str, reading: str
) -> None:
    """Issue 24, finding 8: ``0177.0.0.1`` was "not a usable URL" (httpx refuses it)
    although a C resolver reads it as 127.0.0.1: it is refused as not allowed, saying
    why, before any resolver is asked."""
    with pytest.raises(FetchError) as caught:
        await internet.fetcher().fetch_url("image1_url", f"http://{host}:8080/a.jpg")
    message = str(caught.value)
    assert message.startswith("image1_url points at an address that is not allowed"), message
    assert reading in message and "a.b.c.d" in message
    assert caught.value.permanent
    assert internet.lookups == [] and internet.connections == []


async def test_an_ipv4_translated_answer_is_not_allowed(internet: Internet) -> None:
    """Issue 24, finding 8: ::ffff:0:0:0/96 counted as public."""
    internet.names["photos.test"] = ["::ffff:0:7f00:1"]
    with pytest.raises(FetchError, match="not allowed"):
        await internet.fetcher().fetch_url("image1_url", "http://photos.test/a.jpg")
    assert internet.connections == []


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("file:///etc/passwd", "must be an http"),
        ("http://169.254.169.254/latest/meta-data/", "not allowed"),
        ("http://[ff02::1]/x.jpg", "not allowed"),
        ("http://127.0.0.1:{port}/secret", "not allowed"),
        ("http://[::ffff:127.0.0.1]:{port}/secret", "not allowed"),
        ("http://2130706433:{port}/secret", "not allowed"),
    ],
)
async def test_redirects_to_forbidden_places_are_refused_for_good(
    internet: Internet, public: Callable[..., Awaitable[str]], location: str, message: str
) -> None:
    base = await public({"/a": fixed(302, headers={"Location": location.format(port=8080)})})
    fetcher = PhotoFetcher(LIMITS, resolver=_public_then_system(internet), network=internet)
    with pytest.raises(FetchError, match=message) as caught:
        await fetcher.fetch_url("image1_url", f"{base}/a")
    assert caught.value.permanent
    assert internet.connections == [(PUBLIC_IP, 80)]  # the redirecting host, nothing else


def _public_then_system(internet: Internet) -> Callable[[str, int], Awaitable[list[str]]]:
    """Test names resolve in the test internet; everything else as the system says."""

    async def resolve(host: str, port: int) -> list[str]:
        if host in internet.names:
            return await internet.resolve(host, port)
        return await system_resolver(host, port)

    return resolve


async def test_both_photos_are_checked_before_either_is_fetched(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    """Finding 2, at the fetcher: a check makes no connection at all."""
    base = await public({"/a.jpg": fixed(200, b"photo")})
    fetcher = internet.fetcher()
    await fetcher.check("image1_url", f"{base}/a.jpg")
    with pytest.raises(FetchError, match="must be an http"):
        await fetcher.check("image2_url", "file:///etc/shadow")
    assert internet.connections == []


# ------------------------------------------------------------------------- pinning


async def test_a_rebinding_name_cannot_move_the_connection(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    """The name is resolved once, checked, and the connection goes to that address,
    even if DNS would now answer 127.0.0.1 (a rebinding attack)."""
    base = await public({"/a.jpg": fixed(200, b"photo")})
    answers = [[PUBLIC_IP], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        internet.lookups.append(host)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    internet.routes[("127.0.0.1", 80)] = internet.routes[(PUBLIC_IP, 80)]  # would be reached
    fetcher = PhotoFetcher(LIMITS, resolver=rebinding, network=internet)
    target = await fetcher.check("image1_url", f"{base}/a.jpg")
    assert await fetcher.fetch(target) == b"photo"
    assert internet.connections == [(PUBLIC_IP, 80)]
    assert internet.lookups == ["photos.test"]


async def test_a_redirect_hop_is_resolved_and_checked_again(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    base = await public({"/a": fixed(302, headers={"Location": "/b"}), "/b": fixed(200, b"ok")})
    answers = [[PUBLIC_IP], ["10.0.0.7"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    fetcher = PhotoFetcher(LIMITS, resolver=rebinding, network=internet)
    with pytest.raises(FetchError, match="not allowed"):
        await fetcher.fetch_url("image1_url", f"{base}/a")
    assert internet.connections == [(PUBLIC_IP, 80)]  # the first hop only


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"),
            *("-addext", f"subjectAltName=DNS:{name}"),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


@pytest.mark.parametrize(("served_as", "works"), [("photos.test", True), ("other.test", False)])
async def test_https_is_pinned_and_verified_against_the_hostname(
    serve: Serve, internet: Internet, tmp_path: Path, served_as: str, works: bool
) -> None:
    """TLS keeps the name while TCP goes to the pinned address: SNI and certificate
    verification are for photos.test, so a server with another name's certificate is
    refused even at the right address."""
    key, cert = _certificate(tmp_path, served_as)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)  # type: ignore[assignment,func-returns-value]
    port = await serve({"/a.jpg": fixed(200, b"tls photo")}, server_context)
    internet.names["photos.test"] = [PUBLIC_IP]
    internet.routes[(PUBLIC_IP, 443)] = port
    fetcher = internet.fetcher(ssl_context=ssl.create_default_context(cafile=str(cert)))
    if works:
        assert await fetcher.fetch_url("image1_url", "https://photos.test/a.jpg") == b"tls photo"
    else:
        with pytest.raises(FetchError, match="could not be fetched") as caught:
            await fetcher.fetch_url("image1_url", "https://photos.test/a.jpg")
        assert not caught.value.permanent
    assert internet.connections == [(PUBLIC_IP, 443)]
    assert seen_sni == ["photos.test"]


# ------------------------------------------------------------------------ allowing


async def test_the_allowlist_opens_exactly_the_host_and_port_listed(serve: Serve) -> None:
    port = await serve({"/a.jpg": fixed(200, b"inside")})
    other = await serve({"/a.jpg": fixed(200, b"other")})
    access = Access(allow_hosts=parse_host_ports(f"127.0.0.1:{port}"))
    fetcher = PhotoFetcher(LIMITS, access)
    assert await fetcher.fetch_url("image1_url", f"http://127.0.0.1:{port}/a.jpg") == b"inside"
    for refused in (f"http://127.0.0.1:{other}/a.jpg", f"http://localhost:{port}/a.jpg"):
        with pytest.raises(FetchError, match="not allowed"):
            await fetcher.fetch_url("image1_url", refused)


async def test_the_own_storage_origin_is_opened_for_its_scheme_only(serve: Serve) -> None:
    port = await serve({"/a.jpg": fixed(200, b"demo photo")})
    fetcher = PhotoFetcher(LIMITS, Access(own_origins=frozenset({("http", "127.0.0.1", port)})))
    assert await fetcher.fetch_url("image1_url", f"http://127.0.0.1:{port}/a.jpg") == b"demo photo"
    with pytest.raises(FetchError, match="not allowed"):
        await fetcher.fetch_url("image1_url", f"https://127.0.0.1:{port}/a.jpg")


@pytest.mark.parametrize("status", [401, 403, 404, 500])
async def test_an_internal_hosts_answers_are_not_repeated(serve: Serve, status: int) -> None:
    """Finding 1: row errors must not map internal services (no status, no protocol)."""
    port = await serve({"/a.jpg": fixed(status, b"internal detail")})
    fetcher = PhotoFetcher(LIMITS, Access(allow_hosts=frozenset({("127.0.0.1", port)})))
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch_url("image1_url", f"http://127.0.0.1:{port}/a.jpg")
    message = str(caught.value).replace(f"127.0.0.1:{port}", "HOST")
    assert message == (
        "image1_url could not be fetched from the internal host HOST "
        "(details are in the worker's log)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", frozenset()),
        ("photos.internal:8443, 10.0.0.5:80", {("photos.internal", 8443), ("10.0.0.5", 80)}),
        ("[FD00::5]:443", {("fd00::5", 443)}),
        ("Photos.Internal:80", {("photos.internal", 80)}),
    ],
)
def test_allowlist_entries_are_host_and_port(text: str, expected: frozenset[Any]) -> None:
    assert parse_host_ports(text) == expected


@pytest.mark.parametrize("text", ["photos.internal", "10.0.0.5:", ":80", "a:99999", "u@h:80"])
def test_allowlist_entries_without_a_port_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|valid host"):
        parse_host_ports(text)


# --------------------------------------------------------------- public-host behaviour


async def test_a_redirect_is_followed_and_checked(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    base = await public({"/a": fixed(302, headers={"Location": "/b"}), "/b": fixed(200, b"photo")})
    assert await internet.fetcher().fetch_url("image1_url", f"{base}/a") == b"photo"


async def test_a_redirect_loop_ends(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    base = await public({"/a": fixed(302, headers={"Location": "/a"})})
    with pytest.raises(FetchError, match="redirects more than") as caught:
        await internet.fetcher().fetch_url("image1_url", f"{base}/a")
    assert caught.value.permanent


@pytest.mark.parametrize("url", ["http://[::1/x.jpg", "http:///nohost.jpg", "ftp://x/y.jpg"])
async def test_malformed_urls_are_permanent_errors(internet: Internet, url: str) -> None:
    with pytest.raises(FetchError) as caught:
        await internet.fetcher().fetch_url("image1_url", url)
    assert caught.value.permanent


async def test_an_unresolvable_host_may_come_back() -> None:
    with pytest.raises(FetchError, match="does not resolve") as caught:
        await PhotoFetcher(LIMITS).fetch_url("image1_url", "http://photos.invalid/a.jpg")
    assert not caught.value.permanent


@pytest.mark.parametrize(
    ("status", "permanent"), [(404, True), (403, True), (503, False), (429, False)]
)
async def test_http_errors_say_whether_to_retry(
    internet: Internet, public: Callable[..., Awaitable[str]], status: int, permanent: bool
) -> None:
    base = await public({"/a": fixed(status)})
    with pytest.raises(FetchError, match=f"HTTP {status}") as caught:
        await internet.fetcher().fetch_url("image1_url", f"{base}/a")
    assert caught.value.permanent is permanent


async def test_a_broken_connection_is_described_without_internals(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    """Finding 4: no reprs, class names or object addresses in the text a row gets."""

    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    base = await public({"/a": hang_up})
    with pytest.raises(FetchError, match="could not be fetched") as caught:
        await internet.fetcher().fetch_url("image1_url", f"{base}/a")
    message = str(caught.value)
    assert "0x" not in message and "<" not in message and "Error(" not in message


async def test_a_body_cut_short_is_told_as_a_broken_exchange(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    """An error while the body streams reaches the fetcher as httpx's own (our transport
    translates httpcore's there too), so the row reads what happened and may retry."""

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 500
        await response.prepare(request)
        await response.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()
        return response

    base = await public({"/a": cut})
    with pytest.raises(FetchError, match="the host broke the HTTP protocol") as caught:
        await internet.fetcher().fetch_url("image1_url", f"{base}/a")
    assert not caught.value.permanent


def test_every_httpcore_error_becomes_the_httpx_error_of_its_name() -> None:
    """Our transport stands where ``httpx.AsyncHTTPTransport`` would and must raise what
    it raises: each of httpcore's public errors as the httpx error of the same name.
    An httpcore upgrade that adds an error fails here until HTTPX_ERRORS knows it."""
    internal = {"ConnectionNotAvailable"}  # the pool retries it; httpx maps it to nothing
    errors = [
        getattr(httpcore, name)
        for name in httpcore.__all__
        if isinstance(getattr(httpcore, name), type)
        and issubclass(getattr(httpcore, name), Exception)
        and name not in internal
    ]
    assert len(errors) >= 14, f"httpcore {httpcore.__version__} exports fewer errors than 1.0.9"
    for error in errors:
        assert error in HTTPX_ERRORS, (
            f"httpcore {httpcore.__version__} has a new error {error.__name__}: add it to "
            "service.media.pinned.HTTPX_ERRORS (as httpx's own transport maps it)"
        )
        with pytest.raises(httpx.TransportError) as caught, as_httpx_errors():
            raise error("what the wire said")
        assert type(caught.value) is getattr(httpx, error.__name__), error
        assert str(caught.value) == "what the wire said"
        assert caught.value.__cause__ is not None


async def test_the_byte_limit_holds_without_a_content_length(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b"x" * 100)
        return response

    base = await public({"/a": endless})
    with pytest.raises(FetchError, match="larger than 1,000 bytes") as caught:
        await internet.fetcher().fetch_url("image1_url", f"{base}/a")
    assert caught.value.permanent


async def test_a_host_that_trickles_times_out(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    release = asyncio.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x")
        await release.wait()
        return response

    base = await public({"/a": trickle})
    try:
        with pytest.raises(FetchError, match="did not download within") as caught:
            await internet.fetcher(Limits(1000, 0.3)).fetch_url("image1_url", f"{base}/a")
        assert not caught.value.permanent
    finally:
        release.set()


async def test_a_compressed_body_is_refused_before_it_can_inflate(
    internet: Internet, public: Callable[..., Awaitable[str]]
) -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    base = await public({"/a": fixed(200, bomb, {"Content-Encoding": "gzip"})})
    with pytest.raises(FetchError, match="gzip-compressed") as caught:
        await internet.fetcher(Limits(1_000_000, 2.0)).fetch_url("image1_url", f"{base}/a")
    assert caught.value.permanent
