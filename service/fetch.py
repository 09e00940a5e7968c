"""Fetching photos from URLs anyone can write into a row, defensively.

http(s) only; every hop of a redirect chain is checked; the byte limit is enforced
while streaming (a lying or missing Content-Length changes nothing); one total
timeout covers the whole download. Addresses that are never a photo host (link-local
such as cloud metadata at 169.254.169.254, multicast, unspecified) are refused always;
loopback and private networks are refused unless allowed (the embedded default serves
its demo photos on 127.0.0.1, so it allows them; production should not).

Each failure says whether retrying could help: a 404 cannot, a 503 might.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

MAX_REDIRECTS = 5
RETRYABLE_STATUS = frozenset({408, 425, 429})


class FetchError(Exception):
    """A photo could not be fetched. ``permanent`` means retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    timeout: float
    allow_private: bool = True


async def fetch_photo(client: httpx.AsyncClient, label: str, url: str, limits: Limits) -> bytes:
    """Download one photo within ``limits``; raise FetchError saying what went wrong."""
    try:
        async with asyncio.timeout(limits.timeout):
            return await _follow(client, label, url, limits)
    except TimeoutError as err:
        raise FetchError(
            f"{label} did not download within {limits.timeout:g} s", permanent=False
        ) from err
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as err:
        raise FetchError(f"{label} is not a usable URL: {err}", permanent=True) from err
    except httpx.HTTPError as err:
        raise FetchError(f"{label} could not be fetched: {err!r}", permanent=False) from err


async def _follow(client: httpx.AsyncClient, label: str, url: str, limits: Limits) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        await _check_destination(label, url, limits.allow_private)
        # identity: a compressed body would be inflated before the byte limit sees it.
        async with client.stream(
            "GET", url, follow_redirects=False, headers={"Accept-Encoding": "identity"}
        ) as response:
            encoding = response.headers.get("content-encoding", "identity").lower()
            if encoding not in ("identity", ""):
                raise FetchError(
                    f"{label} was sent {encoding}-compressed although we asked for none",
                    permanent=True,
                )
            if response.is_redirect:
                url = urljoin(url, response.headers.get("location", ""))
                continue
            if response.status_code >= 400:
                retry = response.status_code in RETRYABLE_STATUS or response.status_code >= 500
                raise FetchError(
                    f"{label} answered HTTP {response.status_code}", permanent=not retry
                )
            return await _read_limited(response, label, limits.max_bytes)
    raise FetchError(f"{label} redirects more than {MAX_REDIRECTS} times", permanent=True)


async def _read_limited(response: httpx.Response, label: str, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(
            f"{label} is {int(declared):,} bytes; the limit is {max_bytes:,}", permanent=True
        )
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        buffer.extend(chunk)
        if len(buffer) > max_bytes:
            raise FetchError(f"{label} is larger than {max_bytes:,} bytes", permanent=True)
    return bytes(buffer)


async def _check_destination(label: str, url: str, allow_private: bool) -> None:
    """Refuse schemes and addresses a photo can never legitimately come from."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError(f"{label} must be an http(s) URL, got {url[:100]!r}", permanent=True)
    host = parts.hostname
    if not host:
        raise FetchError(f"{label} has no host: {url[:100]!r}", permanent=True)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise FetchError(
            f"{label} names a host that does not resolve: {host}", permanent=False
        ) from err
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        refusal = _refusal(address, allow_private)
        if refusal:
            raise FetchError(
                f"{label} points at {refusal} address {address}; refused", permanent=True
            )


def _refusal(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool
) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local:
        return "a link-local (cloud metadata)"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a non-routable"
    if not allow_private and (address.is_loopback or address.is_private):
        return "a private or loopback"
    return None
