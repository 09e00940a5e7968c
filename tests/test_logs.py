"""Log lines reach stderr whole, even when the worker is SIGKILLed mid-stream."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

LOGGER = """
import sys
from service import logs
import structlog
logs.configure("json", "info")
log = structlog.get_logger("test")
n = 0
while True:
    n += 1
    log.info("big.event", n=n, payload="x" * 20000)  # longer than any stdio buffer
"""


async def test_a_sigkilled_process_leaves_no_torn_json_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOGGER, stderr=asyncio.subprocess.PIPE, limit=1 << 20
    )
    assert proc.stderr is not None
    received = b""
    try:
        async with asyncio.timeout(30):
            while received.count(b"\n") < 20:
                received += await proc.stderr.read(1 << 16)
    finally:
        proc.send_signal(signal.SIGKILL)
        received += await proc.stderr.read()
        await proc.wait()
    lines = received.split(b"\n")
    assert lines[-1] == b"", f"the stream ends mid-line: ...{lines[-1][-80:]!r}"
    events = [json.loads(line) for line in lines[:-1]]
    assert [e["n"] for e in events] == list(range(1, len(events) + 1))
    assert all(len(line) < 4096 for line in lines)  # what a pipe writes atomically
    assert "chars cut]" in events[0]["payload"]  # the long value was shortened, and says so
