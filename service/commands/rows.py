"""The commands an app developer uses on rows: ``request``, ``show``, ``list``, ``stats``.

Each opens a one-connection pool, does its one thing and says it in a line or in JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import UUID

import structlog

from service.commands import verbs
from service.commands.output import as_json as as_json_row
from service.commands.progress import follow
from service.commands.verbs import operator
from service.config import Settings
from service.core.request import request_problem
from service.core.text import printable
from service.database.errors import Refused
from service.database.operator import Operator
from service.database.postgres import PostgresRepository
from service.runtime import open_pool, open_store
from service.storage.uploads import PhotoFileError, check_photo_file, is_url, upload_photo

log = structlog.get_logger("service.commands.rows")


@asynccontextmanager
async def repository(settings: Settings) -> AsyncIterator[PostgresRepository]:
    """A repository on a one-connection pool, for the short commands."""
    async with open_pool(settings) as pool:
        yield PostgresRepository(pool, settings.worker.id, settings.worker.lease)


async def run_request(settings: Settings, args: argparse.Namespace) -> int:
    """The seed app's upload + create-video + check-video, in one command.

    What the database would refuse is refused first, in one line (exit 2), before a
    photo is uploaded; what it refuses all the same (a model not allowed, a size the
    model does not make, a quota) is said the same way.
    """
    problem = request_problem(args.prompt, args.size, args.seconds)
    if problem is not None:
        print(f"sora-worker: not requested: {problem}", file=sys.stderr)
        return 2
    photos: dict[str, str | None] = {"image1": args.image1, "image2": args.image2}
    files = {name: Path(value) for name, value in photos.items() if value and not is_url(value)}
    try:
        for name, path in files.items():
            check_photo_file(f"--{name}", path, settings.photos.max_bytes)
    except PhotoFileError as err:
        print(f"sora-worker: {err}", file=sys.stderr)
        return 2
    if files:
        async with open_store(settings) as store:
            for name, path in files.items():
                bucket, most = settings.storage.image_bucket, settings.photos.max_bytes
                photos[name] = await upload_photo(store, bucket, f"--{name}", path, most)
                log.info("request.photo_uploaded", photo=name, url=photos[name])
    async with repository(settings) as repo:
        try:
            row_id = await repo.insert_request(
                args.prompt,
                photos["image1"],
                photos["image2"],
                model=args.model,
                size=args.size,
                seconds=args.seconds,
            )
        except Refused as err:
            print(f"sora-worker: not requested: {printable(err.reason)}", file=sys.stderr)
            return 2
        if not args.wait:
            print(row_id)
            return 0
        print(f"sora-worker: row {row_id} inserted; waiting for a worker", file=sys.stderr)
        row = await follow(Operator(repo.pool).fetch_row, row_id, "request")
    print(json.dumps(as_json_row(row), sort_keys=True))
    return 0 if row["status"] == "completed" else 1


async def run_show(settings: Settings, row_id: UUID) -> int:
    async with operator(settings) as op:
        row = await op.fetch_row(row_id)
    if row is None:
        print(f"no row {row_id}", file=sys.stderr)
        return 1
    print(json.dumps(as_json_row(row), sort_keys=True))
    return 0


async def run_list(settings: Settings, limit: int, status: str | None, as_json: bool) -> int:
    async with operator(settings) as op:
        rows = await op.recent(limit, status)
    if as_json:
        print(json.dumps([as_json_row(row) for row in rows], sort_keys=True))
        return 0
    for row in rows:
        # A row's text comes from apps and providers: one line, no terminal escapes.
        detail = printable(row["video_url"] or row["error"] or "")
        if row["error_kind"]:
            detail = f"[{row['error_kind']}] {detail}"
        print(
            f"{row['id']}  {row['created_at']:%Y-%m-%d %H:%M:%S}  {row['stage']:<10} "
            f"{row['progress']:3d}%  {detail}"
        )
    return 0


async def run_stats(settings: Settings, as_json: bool) -> int:
    async with operator(settings) as op:
        stats = await op.stats()
        stats["storage"] = await verbs.storage_used(settings, op)
    if as_json:
        print(json.dumps(stats, sort_keys=True))
        return 0
    for stage, count in sorted(stats["stages"].items()):
        print(f"{stage:<12} {count:>8}")
    oldest = stats["oldest_unfinished_seconds"]
    print(f"oldest unfinished: {'none' if oldest is None else f'{oldest:.0f} s'}")
    for bucket, used in (stats["storage"] or {}).items():
        print(f"bucket {bucket}: {used['objects']} objects, {used['bytes']:,} bytes")
    return 0
