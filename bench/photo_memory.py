"""Does a worker's memory stay bounded whatever the photos? (issue 14, finding 3)

Runs rows with two 6000x6000 PNG photos each (36 MP, which PNG cannot decode at a
reduced size) through a real worker with the embedded defaults: embedded PostgreSQL
and the photos served by the local storage server, just as the demo serves its own.
The simulator runs in a process of its own (``sora-worker simulate``), as a real
provider would: its synthetic video encoding would otherwise dominate the figures.
Rows go in 10 at a time; after each 10 the worker process's peak RSS over those rows
is printed (VmHWM, reset between batches through /proc/self/clear_refs). Bounded
means: under the target, and no growth from the first batch to the last.
``--text-only`` is the yardstick: the same rows without photos.

Each allocator setting runs in a fresh process so peaks do not mix:

    .venv/bin/python bench/photo_memory.py                # 30 rows, both settings
    .venv/bin/python bench/photo_memory.py --rows 60
    .venv/bin/python bench/photo_memory.py --text-only
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from PIL import Image

SIDE = 6000
BATCH = 10
VARIANTS = {"glibc default": {}, "MALLOC_ARENA_MAX=2 (deploy/)": {"MALLOC_ARENA_MAX": "2"}}


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def big_png(seed: int) -> bytes:
    """A 6000x6000 photo-like PNG that still fits SORA_IMAGE_MAX_BYTES (smooth colour)."""
    red = Image.linear_gradient("L").resize((SIDE, SIDE))
    green = Image.radial_gradient("L").resize((SIDE, SIDE))
    blue = red.rotate(90 * seed)
    out = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(out, format="PNG", compress_level=6)
    return out.getvalue()


async def start_simulator() -> tuple[asyncio.subprocess.Process, str]:
    """``sora-worker simulate`` in its own process, and its base URL once it answers."""
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "service.cli", "simulate", "--port", str(port)),
        *("--generation-seconds", "0.2"),
    )
    base = f"http://127.0.0.1:{port}/v1"
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            try:
                await http.get(f"{base}/videos")
                return process, base
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError("the simulator did not start")


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def child(rows: int, text_only: bool) -> None:
    from service import logs
    from service.config import Settings
    from service.runtime import open_runtime

    logs.configure("json", "warning")
    photos = [big_png(0), big_png(1)]
    simulator, simulator_url = await start_simulator()
    with tempfile.TemporaryDirectory(prefix="photo-memory-") as scratch:
        settings = Settings(
            providers={"openai": {"api_key": "sk-bench", "base_url": simulator_url}},
            stand_ins={
                "mode": "allow",  # an embedded database and local storage beside the simulator
                "data_dir": Path(scratch),
                "storage_port": 0,
                "openai": {"port": 0},
            },
            polls={"interval": 0.05},
            logs={"level": "warning", "format": "json"},
        )
        async with open_runtime(settings) as runtime:
            urls = [
                (await runtime.store.put("hug-images", f"big/{i}.png", _one(p), "image/png")).url
                for i, p in enumerate(photos)
            ]
            del photos
            print(
                f"  photos: 2 x {SIDE}x{SIDE} PNG; baseline RSS {rss_mib('VmRSS'):.0f} MiB",
                flush=True,
            )
            worker = runtime.worker()
            task = asyncio.create_task(worker.run())
            done = 0
            while done < rows:
                reset_peak()
                started = time.perf_counter()
                ids = [
                    await runtime.repo.insert_request(
                        f"two people hug {done + n}", *([] if text_only else urls)
                    )
                    for n in range(BATCH)
                ]
                statuses = {}
                while len(statuses) < len(ids):
                    for row_id in ids:
                        row = await runtime.operator.fetch_row(row_id)
                        if row and row["status"] in ("completed", "failed"):
                            statuses[row_id] = (row["status"], row["error"])
                    await asyncio.sleep(0.2)
                done += BATCH
                failed = [e for s, e in statuses.values() if s == "failed"]
                print(
                    f"  rows {done - BATCH + 1:>3}-{done:<3} peak RSS {rss_mib('VmHWM'):6.0f} MiB"
                    f"  now {rss_mib('VmRSS'):6.0f} MiB  {time.perf_counter() - started:5.1f} s"
                    + (f"  FAILED {len(failed)}: {failed[0]}" if failed else ""),
                    flush=True,
                )
            worker.stop()
            await task
    simulator.terminate()
    await simulator.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--text-only", action="store_true", help="the yardstick: the same rows without photos"
    )
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.rows, args.text_only))
        return
    for name, extra in VARIANTS.items():
        print(f"{name}: {args.rows} rows, {os.cpu_count()} cores", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | extra
        env = {k: v for k, v in env.items() if not k.startswith(("SORA_", "DATABASE_URL"))}
        subprocess.run(
            [sys.executable, __file__, "--child", "--rows", str(args.rows)]
            + (["--text-only"] if args.text_only else []),
            env=env,
            check=True,
        )


if __name__ == "__main__":
    main()
