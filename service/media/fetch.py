"""Fetching photos from URLs anyone can write into a row, defensively.

Anyone who can insert a row can make the worker send a GET wherever they like, so
every destination is checked before a byte moves, and the connection goes to exactly
the address that was checked:

- http(s) only; the host is resolved once and every address it resolves to must be
  public (see ``is_public``: one rule for IPv4 and IPv6, every spelling, since the
  check is made on the resolved address, never on the text of the URL);
- the TCP connection is pinned to the checked address (``service.media.pinned``: a
  network backend that refuses any other destination), while the URL, the Host header
  and TLS (SNI and certificate verification) keep the hostname: DNS that answers
  differently a second time (rebinding) cannot move the connection anywhere else;
- every redirect hop is checked the same way, and both photos of a row are checked
  before either is fetched;
- the byte limit is enforced while streaming (a lying or missing Content-Length
  changes nothing) and one total timeout covers the whole download.

Non-public destinations are opened only by ``Access``: host:port pairs the operator
lists (``SORA_IMAGE_ALLOW_HOSTS``) and the exact origin of the worker's own local
storage server (so the embedded demo works with nothing set). Whatever goes wrong on
such an internal host is reported without its status code or protocol details, so
row errors cannot be used to map internal services.

Each failure says whether retrying could help: a 404 cannot, a 503 might.
"""

from __future__ import annotations

import asyncio
import io
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urlsplit

import httpcore
import httpx
import structlog

from service.media.addresses import (
    Origin,
    default_port,
    odd_ipv4_spelling,
    parses_public,
    redirect_target,
    system_resolver,
)
from service.media.pinned import PinnedTransport, bracketed

log = structlog.get_logger("service.media.fetch")

MAX_REDIRECTS = 5
RETRYABLE_STATUS = frozenset({408, 425, 429})
CONNECT_TIMEOUT = 5.0
ALLOW_SETTING = "SORA_IMAGE_ALLOW_HOSTS"

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``: how a photo host's name becomes IP addresses."""


class FetchError(Exception):
    """A photo could not be fetched. ``permanent`` means retrying cannot help;
    ``unavailable`` that the photo's host failed to deliver it (its name does not
    resolve, it did not answer in time, it answered with an error), as opposed to a URL
    or a photo that can never be used (refused, malformed, too large)."""

    def __init__(self, message: str, *, permanent: bool, unavailable: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.unavailable = unavailable


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    timeout: float


@dataclass(frozen=True)
class Access:
    """The only non-public destinations photos may come from.

    ``allow_hosts``: (host, port) pairs as the operator wrote them, matched against the
    URL's host exactly as spelt (``localhost`` does not open ``127.0.0.1``), any scheme.
    ``own_origins``: the worker's own local storage server, matched on scheme, host
    and port.
    """

    allow_hosts: frozenset[tuple[str, int]] = frozenset()
    own_origins: frozenset[Origin] = frozenset()

    def opens(self, scheme: str, host: str, port: int) -> bool:
        return (host, port) in self.allow_hosts or (scheme, host, port) in self.own_origins


@dataclass(frozen=True)
class Target:
    """A destination that passed the check: connect to ``address`` and nowhere else."""

    label: str
    url: httpx.URL
    host: str
    port: int
    address: str
    internal: bool = field(default=False)
    """Reached through ``Access``: its answers are not repeated in row errors."""


# ---------------------------------------------------------------------------- fetcher


class PhotoFetcher:
    """Checks and fetches the photos of rows: one policy, one resolver, one network.

    ``resolver``, ``network`` and ``ssl_context`` exist so tests can stand in for DNS
    and the internet; production uses the system's.
    """

    def __init__(
        self,
        limits: Limits,
        access: Access | None = None,
        *,
        resolver: Resolver = system_resolver,
        network: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limits = limits
        self.access = access or Access()
        self._resolve = resolver
        self._network = network or httpcore.AnyIOBackend()
        self._ssl = ssl_context or httpx.create_ssl_context()

    async def check(self, label: str, url: str) -> Target:
        """Refuse what a photo can never come from; say where the connection will go."""
        try:
            async with asyncio.timeout(self.limits.timeout):
                return await self._check(label, url)
        except TimeoutError as err:
            raise FetchError(
                f"{label}: its host name did not resolve in time",
                permanent=False,
                unavailable=True,
            ) from err

    async def fetch(self, target: Target) -> bytes:
        """Download one checked photo within the limits; raise FetchError saying why not."""
        body = io.BytesIO()
        await self.fetch_into(target, body)
        return body.getvalue()

    async def fetch_into(self, target: Target, sink: BinaryIO) -> int:
        """Download one checked photo into ``sink`` (a file: photos wait for their turn
        to be decoded on disk, not in memory) within the limits; the bytes written.
        Raises FetchError saying why not (``sink`` then holds part of it, or nothing)."""
        limits = self.limits
        try:
            async with asyncio.timeout(limits.timeout):
                return await self._follow(target, sink)
        except TimeoutError as err:
            raise FetchError(
                f"{target.label} did not download within {limits.timeout:g} s",
                permanent=False,
                unavailable=True,
            ) from err
        except httpx.HTTPError as err:
            raise self._failure(
                target, f"could not be fetched: {describe_http_error(err)}", permanent=False
            ) from err

    async def fetch_url(self, label: str, url: str) -> bytes:
        """Check, then fetch: for one photo on its own."""
        return await self.fetch(await self.check(label, url))

    async def _check(self, label: str, url: str) -> Target:
        self._refuse_numeric_spellings(label, url, _split_host(url))
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, UnicodeError) as err:
            raise FetchError(f"{label} is not a usable URL", permanent=True) from err
        scheme = parsed.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(f"{label} must be an http(s) URL, got '{shown(url)}'", permanent=True)
        if not parsed.host:
            raise FetchError(f"{label} has no host: '{shown(url)}'", permanent=True)
        host = parsed.raw_host.decode("ascii").lower()
        self._refuse_numeric_spellings(label, url, host)  # as httpx normalised it
        port = parsed.port or default_port(scheme)
        try:
            answers = await self._resolve(host, port)
        except (socket.gaierror, UnicodeError) as err:
            raise FetchError(
                f"{label} names a host that does not resolve: {host}",
                permanent=False,
                unavailable=True,
            ) from err
        if not answers:
            raise FetchError(
                f"{label} names a host that does not resolve: {host}",
                permanent=False,
                unavailable=True,
            )
        internal = self.access.opens(scheme, host, port)
        if not internal and not all(parses_public(answer) for answer in answers):
            raise FetchError(
                f"{label} points at an address that is not allowed: {bracketed(host)}:{port} "
                f"is not a public address (an operator can allow it with {ALLOW_SETTING})",
                permanent=True,
            )
        return Target(label, parsed, host, port, answers[0], internal)

    @staticmethod
    def _refuse_numeric_spellings(label: str, url: str, host: str | None) -> None:
        """An IPv4 address spelt other than as a.b.c.d is refused for what it is, before
        any resolver reads it (each reads such spellings its own way)."""
        if host is None or not url.lower().startswith(("http:", "https:")):
            return
        why = odd_ipv4_spelling(host)
        if why is not None:
            raise FetchError(
                f"{label} points at an address that is not allowed: {why}", permanent=True
            )

    async def _follow(self, target: Target, sink: BinaryIO) -> int:
        for _ in range(MAX_REDIRECTS + 1):
            async with (
                httpx.AsyncClient(
                    transport=PinnedTransport(
                        target.host, target.port, target.address, self._network, self._ssl
                    ),
                    timeout=httpx.Timeout(self.limits.timeout, connect=CONNECT_TIMEOUT),
                    trust_env=False,
                ) as client,
                # identity: a compressed body would inflate before the byte limit sees it.
                client.stream(
                    "GET",
                    target.url,
                    follow_redirects=False,
                    headers={"Accept-Encoding": "identity"},
                ) as response,
            ):
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding not in ("identity", ""):
                    raise self._failure(
                        target,
                        f"was sent {encoding}-compressed although we asked for none",
                        permanent=True,
                    )
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    target = await self._check(target.label, redirect_target(target.url, location))
                    continue
                if response.status_code >= 400:
                    status = response.status_code
                    retry = status in RETRYABLE_STATUS or status >= 500
                    raise self._failure(target, f"answered HTTP {status}", permanent=not retry)
                return await self._read_limited(response, target, sink)
        raise FetchError(
            f"{target.label} redirects more than {MAX_REDIRECTS} times",
            permanent=True,
            unavailable=True,
        )

    async def _read_limited(self, response: httpx.Response, target: Target, sink: BinaryIO) -> int:
        max_bytes = self.limits.max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(
                f"{target.label} is {int(declared):,} bytes; the limit is {max_bytes:,}",
                permanent=True,
            )
        written = 0
        async for chunk in response.aiter_bytes():
            written += len(chunk)
            if written > max_bytes:
                raise FetchError(
                    f"{target.label} is larger than {max_bytes:,} bytes (the limit)",
                    permanent=True,
                )
            sink.write(chunk)
        return written

    def _failure(self, target: Target, what: str, *, permanent: bool) -> FetchError:
        """What the host answered (a status, a protocol or connection failure): told
        for public hosts, logged only for internal ones, so that rows cannot be used to
        probe internal services. (Our own limits are stated either way.)"""
        if not target.internal:
            return FetchError(f"{target.label} {what}", permanent=permanent, unavailable=True)
        log.warning(
            "photo.internal_host_failed",
            label=target.label,
            host=target.host,
            port=target.port,
            detail=what,
        )
        return FetchError(
            f"{target.label} could not be fetched from the internal host "
            f"{bracketed(target.host)}:{target.port} (details are in the worker's log)",
            permanent=permanent,
            unavailable=True,
        )


def shown(text: str, limit: int = 100) -> str:
    """Untrusted text fit for an error message: printable, and not too long."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + ("..." if len(text) > limit else "")


def _split_host(url: str) -> str | None:
    """The host of ``url`` as the standard library reads it (httpx refuses some
    numeric spellings outright, so this is read first)."""
    try:
        return urlsplit(url.strip()).hostname
    except ValueError:
        return None


def describe_http_error(err: httpx.HTTPError) -> str:
    """What went wrong on the wire, in words, without reprs or addresses."""
    if isinstance(err, httpx.TimeoutException):
        return "the host did not answer in time"
    if isinstance(err, httpx.ConnectError):
        return "could not connect to the host"
    if isinstance(err, httpx.RemoteProtocolError):
        return "the host broke the HTTP protocol"
    if isinstance(err, httpx.ProtocolError):
        return "the HTTP exchange failed"
    if isinstance(err, httpx.NetworkError):
        return "the connection broke off"
    if isinstance(err, httpx.DecodingError):
        return "the body could not be decoded"
    return "a network error"
