"""Does a worker's memory stay bounded whatever the photos? (issue 14, finding 3; issue
24, finding 7)

Runs rows with real-sized, photo-like photos through a real worker with the embedded
defaults: embedded PostgreSQL and the photos served by the local storage server, just
as the demo serves its own. The photos are what a kind input would hide:

- 6000x6000 PNGs of about 10 MB (36 MP, which PNG cannot decode at a reduced size): a
  smooth scene whose subject, an ellipse over a fifth of the frame, carries per-pixel
  sensor noise that deflate cannot compress. (Noise over the whole frame cannot fit
  the default SORA_IMAGE_MAX_BYTES of 15 MB: deflate spends at least one bit on each
  byte it cannot match, 13.5 MB for a 6000x6000 RGB frame, before any noise.)
- 12 MP JPEGs (4000x3000) noisy everywhere, about 3.7 MB, as a phone writes them.

By default a batch's rows alternate between two PNGs and two JPEGs (``--photos png``:
every row two PNGs, the worst case; ``--photos jpeg``). The simulator runs in a process
of its own (``sora-worker simulate``), as a real provider would: its synthetic video
encoding would otherwise dominate the figures. Rows go in 10 at a time (10 rows in
flight); after each 10 the worker process's peak RSS over those rows is printed
(VmHWM, reset between batches through /proc/self/clear_refs). Bounded means: under
the target, and no growth from the first batch to the last. ``--text-only`` is the
yardstick: the same rows without photos.

Each allocator setting runs in a fresh process so peaks do not mix:

    .venv/bin/python bench/photo_memory.py                # 30 rows, both settings
    .venv/bin/python bench/photo_memory.py --rows 60 --photos png
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

from PIL import Image, ImageChops, ImageDraw

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


def scene(seed: int, size: tuple[int, int]) -> Image.Image:
    """Smooth colour, as sky, walls and out-of-focus backgrounds are."""
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = red.transpose(
        Image.Transpose.FLIP_LEFT_RIGHT if seed % 2 else Image.Transpose.FLIP_TOP_BOTTOM
    )
    return Image.merge("RGB", (red, green, blue))


def grain(size: tuple[int, int], sigma: float) -> Image.Image:
    """Per-pixel sensor noise, independent in each channel, centred on 0 (offset 128)."""
    return Image.merge("RGB", [Image.effect_noise(size, sigma) for _ in range(3)])


def photo_png(seed: int) -> bytes:
    """A 6000x6000 PNG of about 10 MB: a noisy subject on a smooth scene."""
    size = (SIDE, SIDE)
    smooth = scene(seed, size)
    noisy = ImageChops.add(smooth, grain(size, 2.0), scale=1.0, offset=-128)
    subject = Image.new("L", size, 0)
    rx, ry = SIDE * 0.25, SIDE * 0.26 + 30 * seed  # a fifth of the frame
    ImageDraw.Draw(subject).ellipse(
        (SIDE / 2 - rx, SIDE / 2 - ry, SIDE / 2 + rx, SIDE / 2 + ry), fill=255
    )
    out = io.BytesIO()
    Image.composite(noisy, smooth, subject).save(out, format="PNG")
    return out.getvalue()


def photo_jpeg(seed: int) -> bytes:
    """A 12 MP JPEG (4000x3000), noisy everywhere, as a phone writes it."""
    size = (4000, 3000)
    photo = ImageChops.add(scene(seed, size), grain(size, 10.0), scale=1.0, offset=-128)
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=90)
    return out.getvalue()


def pairs_for(kind: str, png: list[str], jpeg: list[str]) -> list[list[str]]:
    """The photo URLs of the rows of one batch, in turn."""
    return {"png": [png], "jpeg": [jpeg], "mixed": [png, jpeg]}[kind]


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


async def child(rows: int, text_only: bool, kind: str, photos: list[Path]) -> None:
    from service import logs
    from service.config import Settings
    from service.runtime import open_runtime

    logs.configure("json", "warning")
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
            costs={"daily_budget_usd": 1_000_000.0},  # the simulator charges nothing
        )
        async with open_runtime(settings) as runtime:
            urls: dict[str, list[str]] = {"png": [], "jpeg": []}
            for path in photos:
                kind_of = "png" if path.suffix == ".png" else "jpeg"
                stored = await runtime.store.put(
                    "hug-images", f"bench/{path.name}", _one(path.read_bytes()), f"image/{kind_of}"
                )
                urls[kind_of].append(stored.url)
            print(f"  baseline RSS {rss_mib('VmRSS'):.0f} MiB", flush=True)
            cycle = pairs_for(kind, urls["png"], urls["jpeg"])
            worker = runtime.worker()
            task = asyncio.create_task(worker.run())
            done = 0
            while done < rows:
                reset_peak()
                started = time.perf_counter()
                ids = [
                    await runtime.repo.insert_request(
                        f"two people hug {done + n}",
                        *([] if text_only else cycle[(done + n) % len(cycle)]),
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


def write_photos(directory: Path) -> None:
    """Two of each, made here (not in the measured process) and served from disk."""
    for seed in (0, 1):
        (directory / f"photo{seed}.png").write_bytes(photo_png(seed))
        (directory / f"photo{seed}.jpg").write_bytes(photo_jpeg(seed))
    for path in sorted(directory.iterdir()):
        with Image.open(path) as image:
            width, height = image.size
        print(f"  {path.name}: {width}x{height}, {path.stat().st_size / 1e6:.1f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--photos", choices=("mixed", "png", "jpeg"), default="mixed")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--text-only", action="store_true", help="the yardstick: the same rows without photos"
    )
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.rows, args.text_only, args.photos, sorted(args.child.iterdir())))
        return
    with tempfile.TemporaryDirectory(prefix="photo-memory-photos-") as photo_dir:
        if not args.text_only:
            write_photos(Path(photo_dir))
        for name, extra in VARIANTS.items():
            print(
                f"{name}: {args.rows} rows, photos {args.photos}, {os.cpu_count()} cores",
                flush=True,
            )
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | extra
            env = {k: v for k, v in env.items() if not k.startswith(("SORA_", "DATABASE_URL"))}
            subprocess.run(
                [sys.executable, __file__, "--child", photo_dir, "--rows", str(args.rows)]
                + ["--photos", args.photos]
                + (["--text-only"] if args.text_only else []),
                env=env,
                check=True,
            )


if __name__ == "__main__":
    main()
