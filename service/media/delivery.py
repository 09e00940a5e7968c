"""Downloads of a provider's files (its videos, thumbnails, inline links), guarded as
photos are.

A provider's answer names where its file is: Replicate's ``output``, a gateway's inline
``video.url``, a redirect from ``/content``. Whoever can make that answer (a hostile
model on Replicate, a relay) could point the worker at a metadata endpoint or an
internal service and have the answer stored publicly as "the video". So the same rules
as for photos (``service.media.fetch``) hold for every hop of every download:

- the host is one of the provider's delivery hosts (``allowed``: exact names or
  ``.suffix``), or the provider's own API origin, which the operator configured and
  which may be internal (a gateway on a private network, a local fake), like the local
  storage server's origin for photos;
- every address the host resolves to is public (``addresses.is_public``) unless it is that
  own origin, and the connection is pinned to the address checked (``pinned``);
- redirects are followed by hand, each hop checked again; credentials go only to the
  own origin, never across a redirect;
- the body is capped at ``max_bytes`` while it streams, and never held whole.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpcore
import httpx

from service.media.addresses import (
    Origin,
    default_port,
    is_public,
    origin_of,
    redirect_target,
    system_resolver,
)
from service.media.fetch import (
    CONNECT_TIMEOUT,
    MAX_REDIRECTS,
    Resolver,
    describe_http_error,
    shown,
)
from service.media.pinned import PinnedTransport, bracketed, normal_host

CHUNK_SIZE = 1024 * 1024
"""The chunks a download yields: the connection reads 64 KiB at a time, and every
chunk costs its consumers a step each (a thread hop to the disk, a hash call), so the
pieces are joined, once, into chunks this big."""


class DeliveryError(Exception):
    """A provider's file could not be downloaded."""


class DeliveryRefused(DeliveryError):
    """The file's address may not be fetched (not a delivery host, not public, too
    big, a redirect loop): asking again cannot help."""


class DeliveryGone(DeliveryError):
    """The host answered that the file does not exist (404, 410)."""


class DeliveryFailed(DeliveryError):
    """The download failed in a way worth trying again (5xx, 429, timeout, cut short).
    ``status``: the HTTP status, if the host answered; ``retry_after``: seconds it asked
    to wait (``Retry-After``)."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Hop:
    url: httpx.URL
    host: str
    port: int
    address: str
    own: bool


class Delivery:
    """Streams files from a provider's delivery hosts, one policy for every adapter.

    ``allowed``: delivery host names (``replicate.delivery``) or suffixes
    (``.replicate.delivery``); ``own``: the provider's API origins, allowed whatever
    their address. ``resolver``, ``network`` and ``ssl_context`` let tests stand in for
    DNS and the internet.
    """

    def __init__(
        self,
        allowed: Collection[str],
        own: Collection[Origin] = (),
        *,
        max_bytes: int,
        timeout: float,
        resolver: Resolver = system_resolver,
        network: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allowed = tuple(h.lower() for h in allowed)
        self.own = frozenset(own)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._resolve = resolver
        self._network = network or httpcore.AnyIOBackend()
        self._ssl = ssl_context or httpx.create_ssl_context()

    def with_origin(self, base_url: str) -> Delivery:
        """The same policy, with ``base_url``'s origin as the provider's own."""
        copy = Delivery(
            self.allowed,
            {*self.own, origin_of(base_url)},
            max_bytes=self.max_bytes,
            timeout=self.timeout,
            resolver=self._resolve,
            network=self._network,
            ssl_context=self._ssl,
        )
        return copy

    def allows(self, url: str) -> bool:
        """Whether ``url``'s host may be asked at all (before any lookup)."""
        try:
            scheme, host, port = origin_of(url)
        except (httpx.InvalidURL, ValueError, UnicodeError):
            return False
        return scheme in ("http", "https") and (
            (scheme, host, port) in self.own or self._listed(host)
        )

    @asynccontextmanager
    async def stream(
        self, url: str, what: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """``url``'s body in chunks; ``headers`` (credentials) only to the own origin."""
        hop = await self._check(url, what)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers or {}) if hop.own else {}
            sent["Accept-Encoding"] = "identity"  # a compressed body would dodge the cap
            transport = PinnedTransport(hop.host, hop.port, hop.address, self._network, self._ssl)
            timeout = httpx.Timeout(self.timeout, connect=CONNECT_TIMEOUT)
            try:
                async with (
                    httpx.AsyncClient(
                        transport=transport, timeout=timeout, trust_env=False
                    ) as http,
                    http.stream("GET", hop.url, headers=sent, follow_redirects=False) as response,
                ):
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        hop = await self._check(redirect_target(hop.url, location), what)
                        continue
                    if response.status_code in (404, 410):
                        raise DeliveryGone(f"{what} is gone (HTTP {response.status_code})")
                    if response.status_code >= 400:
                        raise DeliveryFailed(
                            f"{what} could not be downloaded (HTTP {response.status_code})",
                            response.status_code,
                            _seconds(response.headers.get("retry-after")),
                        )
                    yield self._capped(response, what)
                    return
            except httpx.HTTPError as err:
                raise DeliveryFailed(
                    f"{what} could not be downloaded: {describe_http_error(err)}"
                ) from err
        raise DeliveryRefused(f"{what} redirects more than {MAX_REDIRECTS} times")

    async def _capped(self, response: httpx.Response, what: str) -> AsyncIterator[bytes]:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise DeliveryRefused(
                f"{what} is {int(declared):,} bytes; the limit is {self.max_bytes:,}"
            )
        received, batch = 0, Batch(CHUNK_SIZE)
        try:
            async for piece in response.aiter_bytes():
                received += len(piece)
                if received > self.max_bytes:
                    raise DeliveryRefused(f"{what} is larger than {self.max_bytes:,} bytes")
                if (chunk := batch.add(piece)) is not None:
                    yield chunk
        except httpx.HTTPError as err:
            raise DeliveryFailed(f"{what} broke off: {describe_http_error(err)}") from err
        if rest := batch.rest():
            yield rest

    async def _check(self, url: str, what: str) -> _Hop:
        try:
            parsed = httpx.URL(url)
            scheme, host, port = origin_of(url)
        except (httpx.InvalidURL, ValueError, UnicodeError) as err:
            raise DeliveryRefused(f"{what} is not at a usable URL") from err
        if scheme not in ("http", "https") or not host:
            raise DeliveryRefused(f"{what} is not at an http(s) URL: '{shown(url)}'")
        own = (scheme, host, port) in self.own
        if not own and not self._listed(host):
            raise DeliveryRefused(
                f"{what} is on {bracketed(host)}, which is not one of this provider's "
                "delivery hosts (SORA_DELIVERY_HOSTS adds one)"
            )
        try:
            answers = await self._resolve(parsed.raw_host.decode("ascii"), port)
        except (OSError, UnicodeError) as err:
            raise DeliveryFailed(f"{what}: {bracketed(host)} does not resolve") from err
        if not answers:
            raise DeliveryFailed(f"{what}: {bracketed(host)} does not resolve")
        if not own and not all(_public(answer) for answer in answers):
            raise DeliveryRefused(
                f"{what} points at {bracketed(host)}:{port}, which is not a public address"
            )
        return _Hop(parsed, host, port or default_port(scheme), answers[0], own)

    def _listed(self, host: str) -> bool:
        host = normal_host(host)
        return any(
            host == entry or (entry.startswith(".") and host.endswith(entry))
            for entry in self.allowed
        )


class Batch:
    """Pieces joined into chunks of at least ``size`` bytes, with one copy each.

    (httpx's own re-chunking, ``aiter_bytes(size)``, copies every byte three times.)"""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pieces: list[bytes] = []
        self._held = 0

    def add(self, piece: bytes) -> bytes | None:
        """A whole chunk once ``piece`` completes one, else None (``piece`` is held)."""
        self._pieces.append(piece)
        self._held += len(piece)
        return self.rest() if self._held >= self._size else None

    def rest(self) -> bytes:
        """Whatever is held, as one chunk (empty if nothing)."""
        chunk = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces, self._held = [], 0
        return chunk


def _seconds(value: str | None) -> float | None:
    try:
        return None if value is None else max(float(value), 0.0)
    except ValueError:
        return None


def _public(answer: str) -> bool:
    try:
        return is_public(ipaddress.ip_address(answer))
    except ValueError:
        return False
