"""Does a resumable (TUS) upload stay flat in memory? (target: peak RSS growth < 64 MiB)

Uploads a generated object of N MiB (default 200) through ``SupabaseStore`` to the
Supabase Storage fake (which spools TUS uploads to disk), cutting the connection
once mid-upload so the resume path is measured too, and prints the growth of peak
RSS over the baseline and the bytes the server received. The fake runs in this
process, so the number is an upper bound for the uploader alone.

    .venv/bin/python -m bench.tus_memory        # 200 MiB (from the repository root)
    .venv/bin/python -m bench.tus_memory 512
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from service.storage.supabase import TUS_CHUNK, SupabaseStore, default_bucket_specs
from tests.fakes.supabase_storage import started

PIECE = 256 * 1024


def rss_mib(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(mib: int) -> None:
    size = mib * 1024 * 1024
    async with started(global_file_size_limit=2 * size) as fake:
        store = SupabaseStore(fake.url, fake.service_key)
        await store.ensure_buckets(default_bucket_specs("hug-videos", "hug-images"))
        pieces = size // PIECE

        async def generated() -> AsyncIterator[bytes]:
            for index in range(pieces):
                if index == pieces // 2:
                    fake.cut_next_patch(TUS_CHUNK // 3)
                yield hashlib.sha256(str(index).encode()).digest() * (PIECE // 32)

        baseline = rss_mib("VmRSS")
        started_at = time.perf_counter()
        try:
            stored = await store.put("hug-videos", "bench/big.mp4", generated(), "video/mp4")
        finally:
            await store.aclose()
        elapsed = time.perf_counter() - started_at
        growth = rss_mib("VmHWM") - baseline
        [upload] = fake.tus.values()
        print(
            f"{mib} MiB via TUS: peak RSS growth {growth:.1f} MiB (target < 64), "
            f"server received {fake.tus_received:,} bytes for {stored.size:,} "
            f"({upload.patches} PATCHes, one cut), {elapsed:.1f} s"
        )


def main() -> None:
    asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 200))


if __name__ == "__main__":
    main()
