"""The archive against a real storage server, the way issue 28 asked it to be shown: a
video of tens of MiB (through TUS), re-archived over its own key, and a worker killed
between its upload and its checkpoint. Settings come from the environment, as for
``sora-worker run`` (``SUPABASE_URL``, ``SUPABASE_SERVICE_ROLE_KEY``, ``DATABASE_URL``,
no ``OPENAI_API_KEY``: the local simulator is the provider).

    python -m bench.real_archive pad ROW_ID MIB     # make that row's video MIB MiB
    python -m bench.real_archive crash-worker       # a worker that dies after an upload

``pad`` waits for the row's provider job, then puts a real MP4 of exactly MIB MiB (a
short clip followed by a ``free`` box) where the simulator keeps that job's video
(``$SORA_DATA_DIR/simulator/<job>.video.mp4``), before the job finishes; the simulator
serves a file it finds there instead of rendering one. ``crash-worker`` runs the real
runtime and worker with one change: its store ends the process (exit 137, as a kill
would) the moment a video's upload has returned, before the row records it.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from uuid import UUID

from service import logs
from service.config import Settings, load_settings, secret_values
from service.local.simulator.media import render_mp4
from service.runtime import open_runtime
from service.storage.base import ObjectStore, StoredObject


def padded_mp4(size: int, seed: str) -> bytes:
    clip = render_mp4(128, 96, 2, prompt=seed, reference=None, seed=seed)
    pad = size - len(clip)
    return clip + struct.pack(">I", pad) + b"free" + bytes(pad - 8)


async def pad(settings: Settings, row_id: UUID, mib: int) -> None:
    async with open_runtime(settings, apply_migrations=False) as runtime:
        for _ in range(600):
            video_id = await runtime.pool.fetchval(
                "select video_id from videos where id = $1", row_id
            )
            if video_id:
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit(f"row {row_id} got no provider job within a minute")
    target = settings.stand_ins.data_dir / "simulator" / f"{video_id}.video.mp4"
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(padded_mp4(mib * 1024 * 1024, video_id))
    os.replace(partial, target)
    print(f"{video_id}: {target} is {target.stat().st_size:,} bytes", flush=True)


class DiesAfterVideo:
    """The store, except that the process ends right after a video is stored."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    async def put(
        self, bucket: str, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> StoredObject:
        stored = await self.inner.put(bucket, key, chunks, content_type)
        if content_type == "video/mp4":
            print(
                f"stored {bucket}/{key} ({stored.size:,} bytes, sha256 {stored.sha256}); "
                "dying before the checkpoint",
                file=sys.stderr,
                flush=True,
            )
            os._exit(137)
        return stored

    def read(self, bucket: str, key: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.inner.read(bucket, key)

    def public_url(self, bucket: str, key: str) -> str:
        return self.inner.public_url(bucket, key)

    async def delete(self, bucket: str, key: str) -> None:
        await self.inner.delete(bucket, key)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def crash_worker(settings: Settings) -> None:
    async with open_runtime(settings, wait_for_database=True) as runtime:
        runtime.store = DiesAfterVideo(runtime.store)
        await runtime.worker(listen=True).run()


def main() -> None:
    settings = load_settings()
    logs.configure(settings.logs.format, settings.logs.level, secret_values(settings))
    match sys.argv[1:]:
        case ["pad", row_id, mib]:
            asyncio.run(pad(settings, UUID(row_id), int(mib)))
        case ["crash-worker"]:
            asyncio.run(crash_worker(settings))
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
