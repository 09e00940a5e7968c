"""HTTP connections that go to one checked address and nowhere else.

``service.media.fetch`` decides where a photo may come from; this module makes the
connection keep to that decision. The URL, the Host header and TLS (SNI and
certificate verification) keep the hostname while TCP goes to the address that was
checked, so DNS that answers differently a second time (rebinding) cannot move the
connection anywhere else.

Built from public parts only: httpx's transport interface (``AsyncBaseTransport``)
over httpcore's connection pool, which takes a network backend
(``AsyncConnectionPool(network_backend=...)``). httpx's own transport does not take
one (httpx 0.28; encode/httpx#3749 proposes it), so ``PinnedTransport`` does for a
plain GET what ``httpx.AsyncHTTPTransport`` does, errors included.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx


def normal_host(host: str) -> str:
    """A host as httpx will connect to it: IDNA-encoded, lower case, IPv6 unbracketed."""
    return httpx.URL(f"http://{bracketed(host)}/").raw_host.decode("ascii").lower()


def bracketed(host: str) -> str:
    """An IPv6 address as a URL or ``host:port`` spells it; other hosts as they are."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to ``address`` for the checked (host, port), and to nothing else."""

    def __init__(
        self, host: str, port: int, address: str, inner: httpcore.AsyncNetworkBackend
    ) -> None:
        self._checked = (host, port)
        self._address = address
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if (normal_host(host), port) != self._checked:
            raise httpcore.ConnectError("refused: not the destination that was checked")
        return await self._inner.connect_tcp(
            self._address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("refused: photos never come from a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose one connection goes to ``address`` for (host, port).

    The request goes to httpcore's pool as httpx's own transport hands it over, and
    httpcore's errors come back as httpx's, both while connecting and while the body
    streams (the fetcher tells retryable from permanent by them). TLS is httpcore's:
    SNI for, and the certificate verified against, the URL's hostname. No proxy: a
    proxy would resolve the name again itself. One connection, never kept alive.
    """

    def __init__(
        self,
        host: str,
        port: int,
        address: str,
        network: httpcore.AsyncNetworkBackend,
        context: ssl.SSLContext,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=PinnedBackend(host, port, address, network),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with as_httpx_errors():
            response = await self._pool.handle_async_request(core)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _Body(httpx.AsyncByteStream):
    """A response body from the pool; its errors raised as httpx's too."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with as_httpx_errors():
                await close()


HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}
"""httpcore's public errors and the httpx error each becomes, as httpx's own transport
maps them (tests/test_fetch.py checks that every one of httpcore's is here)."""


@contextmanager
def as_httpx_errors() -> Iterator[None]:
    """Raise httpcore's errors as the most specific httpx error, the message kept."""
    try:
        yield
    except Exception as err:
        mapped = next((HTTPX_ERRORS[k] for k in type(err).__mro__ if k in HTTPX_ERRORS), None)
        if mapped is None:
            raise
        raise mapped(str(err)) from err
