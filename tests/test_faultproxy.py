"""The fault proxy does what it is told: forward, cut, hold back, refuse, delay."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


async def _roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.readexactly(len(payload))
    finally:
        writer.close()


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True when the connection ends (EOF or reset) within a second."""
    try:
        async with asyncio.timeout(1):
            return await reader.read(1) == b""
    except ConnectionError:
        return True


async def test_forwards_both_ways_and_counts(echo_port: int) -> None:
    proxy = FaultProxy(("127.0.0.1", echo_port), chunk_size=1000)
    async with proxy as port:
        assert await _roundtrip(port, b"x" * 5000) == b"x" * 5000
        assert proxy.accepted == 1
        assert proxy.bytes_up == proxy.bytes_down == 5000
        assert proxy.cut == 0


async def test_forwards_to_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    server = await asyncio.start_unix_server(_echo, path)
    async with server, FaultProxy(path) as port:
        assert await _roundtrip(port, b"hello") == b"hello"


async def test_cut_all_resets_live_connections(echo_port: int) -> None:
    proxy = FaultProxy(("127.0.0.1", echo_port))
    async with proxy as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert proxy.cut_all() == 1
        assert await _closed_by_peer(reader)
        writer.close()
        assert proxy.cut == 1 and proxy.live == 0
        assert await _roundtrip(port, b"again") == b"again"  # new connections work


async def test_blackhole_holds_bytes_until_restored(echo_port: int) -> None:
    proxy = FaultProxy(("127.0.0.1", echo_port))
    async with proxy as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        proxy.blackhole()
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.readexactly(4)
        proxy.restore()
        assert await reader.readexactly(4) == b"held"  # nothing lost, nothing reordered
        writer.close()


async def test_refuse_closes_new_connections_at_once(echo_port: int) -> None:
    proxy = FaultProxy(("127.0.0.1", echo_port))
    async with proxy as port:
        proxy.refuse()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed_by_peer(reader)
        writer.close()
        assert proxy.refused == 1
        proxy.restore()
        assert await _roundtrip(port, b"ok") == b"ok"


async def test_delay_holds_every_chunk(echo_port: int) -> None:
    proxy = FaultProxy(("127.0.0.1", echo_port))
    async with proxy as port:
        proxy.delay(0.2)
        started = time.monotonic()
        assert await _roundtrip(port, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.4  # there and back


async def test_random_cuts_land_mid_stream(echo_port: int) -> None:
    proxy = FaultProxy(("127.0.0.1", echo_port), chunk_size=100)
    async with proxy as port:
        proxy.cut_randomly(1.0, random.Random(1))  # the first chunk is the last
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await _roundtrip(port, b"x" * 1000)
        proxy.cut_randomly(1.0, random.Random(1), per="connection")  # cut within 16 KiB
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await _roundtrip(port, b"x" * 40000)
        assert proxy.cut == 2
        proxy.cut_randomly(0)
        assert await _roundtrip(port, b"fine") == b"fine"
