"""Replicas SIGKILLed at random while rows flow: every row completes, each paid once.

Real `sora-worker run` processes against one database and one simulator (hosted by
this test, so it can count what was created). Kills come at observed moments (a row
changed stage), not on a timer, and the choice of victim is seeded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from service.local.simulator import Simulator, SimulatorConfig
from tests.conftest import eventually

ROWS = 12
KILLS = 6


async def test_killing_replicas_at_random_loses_nothing_and_pays_once(
    db_url: str, tmp_path: Path
) -> None:
    rng = random.Random(20261125)
    async with Simulator(SimulatorConfig(queue_seconds=0.1, generation_seconds=0.8)) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "OPENAI_"))}
        env.update(
            DATABASE_URL=db_url,
            OPENAI_API_KEY="sk-chaos",
            OPENAI_BASE_URL=sim.base_url,
            SORA_DATA_DIR=str(tmp_path),
            SORA_STORAGE_PORT="0",  # the first replica binds a free port; see start()
            SORA_POLL_INTERVAL="0.1",
            SORA_LEASE_SECONDS="1",
            SORA_RETRY_BASE="0.1",
            SORA_RETRY_CAP="0.5",
            SORA_PROVIDER_TIMEOUT="3",
            SORA_LOG_FORMAT="json",
        )
        workers: list[asyncio.subprocess.Process] = []
        drains: list[asyncio.Task[None]] = []

        async def start() -> None:
            """Start a replica; the first one's storage port becomes everyone's.

            Replicas share the local storage server on one fixed port. Rather than pick
            a port in advance (another program could take it before the replica binds
            it), the first replica binds port 0 and logs where it serves; the others,
            and replacements of killed ones, are told that port.
            """
            first = not workers
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.cli",
                "run",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE if first else asyncio.subprocess.DEVNULL,
            )
            workers.append(proc)
            if first:
                assert proc.stderr is not None
                async with asyncio.timeout(30):
                    while True:
                        line = await proc.stderr.readline()
                        assert line, "the first replica exited before serving storage"
                        if b'"storage.local"' in line:
                            break
                env["SORA_STORAGE_PORT"] = str(urlsplit(json.loads(line)["url"]).port)
                # Keep reading, so a full pipe never blocks the replica's logging.
                drains.append(asyncio.create_task(_drain(proc.stderr)))

        conn = await asyncpg.connect(db_url)
        try:
            for _ in range(3):
                await start()
            ids = [
                await conn.fetchval(
                    "insert into videos (prompt) values ($1) returning id", f"hug {n}"
                )
                for n in range(ROWS)
            ]

            async def stages() -> list[str]:
                return [
                    r["stage"] for r in await conn.fetch("select stage from videos order by id")
                ]

            for _ in range(KILLS):
                before = await stages()
                await eventually(stages, lambda now, before=before: now != before, within=30)
                alive = [w for w in workers if w.returncode is None]
                victim = rng.choice(alive)
                victim.send_signal(signal.SIGKILL)
                await victim.wait()
                await start()

            rows = await eventually(
                lambda: conn.fetch("select * from videos"),
                lambda rs: all(r["status"] in ("completed", "failed") for r in rs),
                within=90,
            )
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                await worker.wait()
            await asyncio.gather(*drains)
            await conn.close()

    assert len(ids) == ROWS
    assert all(r["status"] == "completed" for r in rows), [r["error"] for r in rows]
    assert len({r["video_id"] for r in rows}) == ROWS
    assert len(sim.created) == ROWS  # nothing paid twice, no orphan job


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
