"""The loop every command runs on: uvloop when importable, asyncio's otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from service import eventloop


async def loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_commands_run_on_uvloop_when_it_is_installed() -> None:
    assert eventloop.run(loop_type()) is uvloop.Loop


def test_without_uvloop_commands_run_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert not issubclass(eventloop.run(loop_type()), uvloop.Loop)
