"""The operator's commands: ``adopt``, ``retry``, ``cancel``, ``rearchive``, ``prune``
(and the storage part of ``stats``). The SQL and its guards live in
``service.database.operator``, what each verb does on a row in ``service.operations``
(the dashboard's buttons call the same functions); this module opens what each command
needs and says what happened, in a line or in JSON.

Exit codes: 0 when the command did (or, for a dry run, would do) what was asked; 1 when
nothing matched or the row was refused (the line says why).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from service import operations
from service.config import Settings
from service.core.text import printable
from service.database.operator import Operator, Prunable, as_dict
from service.runtime import open_pool, open_store
from service.storage.base import ObjectStore, StorageError, locate

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> datetime:
    """``--since``: an age (``90m``, ``6h``, ``2d``) or an ISO date/time (UTC if naive)."""
    match = _SINCE.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give an age like 6h or 2d, or a date") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    """The verbs' command lines (``commands``: the CLI's subparsers); the caller adds
    ``--json`` to each one returned."""
    adopt: argparse.ArgumentParser = commands.add_parser(
        "adopt",
        help="attach a provider job a person found to a row that holds none (an in-doubt "
        "or failed row); the worker polls and archives it. Safe while workers run",
    )
    adopt.add_argument("id", type=UUID, help="the row")
    adopt.add_argument("video_id", help="the provider's job id, as the provider gave it")
    adopt.add_argument(
        "--litellm-model",
        metavar="MODEL",
        help="VIDEO_ID is the upstream id of a job made through a LiteLLM proxy for its "
        "model MODEL: wrap it the way the proxy mints ids, so the proxy can route it",
    )

    retry = commands.add_parser("retry", help="re-queue a failed row, or every failed row")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=UUID, nargs="?")
    which.add_argument("--failed", action="store_true", help="every failed row")
    retry.add_argument("--since", help="with --failed: failed within this age (6h, 2d) or date")
    retry.add_argument(
        "--abandon",
        action="store_true",
        help="with an id: re-queue a row whose job the provider may still hold "
        "(generating, archiving, being submitted); that job is abandoned, paid for, and a "
        "worker cancels it where the provider can",
    )

    cancel = commands.add_parser(
        "cancel", help="fail a pending or generating row and delete its job at the provider"
    )
    cancel.add_argument("id", type=UUID)

    rearchive = commands.add_parser(
        "rearchive", help="copy a finished row's video again while the provider still has it"
    )
    rearchive.add_argument("id", type=UUID)

    prune = commands.add_parser(
        "prune", help="delete stored files of rows completed long ago (dry run unless --apply)"
    )
    prune.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    prune.add_argument("--apply", "--yes", action="store_true", help="really delete")

    return [adopt, retry, cancel, rearchive, prune]


async def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "adopt":
            return await run_adopt(settings, args.id, args.video_id, args.json, args.litellm_model)
        case "retry":
            if args.since and not args.failed:
                print("sora-worker: --since goes with --failed", file=sys.stderr)
                return 2
            if args.abandon and args.failed:
                print("sora-worker: --abandon goes with one row's id", file=sys.stderr)
                return 2
            try:
                since = parse_since(args.since) if args.since else None
            except ValueError as err:
                print(f"sora-worker: {err}", file=sys.stderr)
                return 2
            return await run_retry(settings, args.id, since, args.json, abandon=args.abandon)
        case "cancel":
            return await run_cancel(settings, args.id, args.json)
        case "rearchive":
            return await run_rearchive(settings, args.id, args.json)
        case "prune":
            return await run_prune(settings, args.older_than, args.apply, args.json)
    raise AssertionError(args.command)


@asynccontextmanager
async def operator(settings: Settings) -> AsyncIterator[Operator]:
    """The operator's statements on a one-connection pool."""
    async with open_pool(settings) as pool:
        yield Operator(pool)


def say(as_json: bool, payload: dict[str, Any], line: str, *, ok: bool) -> int:
    """One result, as JSON on stdout or as a line (stdout if ok, stderr if not)."""
    if as_json:
        print(json.dumps(payload, sort_keys=True, default=str))
    else:
        print(printable(line), file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


async def run_adopt(
    settings: Settings, row_id: UUID, video_id: str, as_json: bool, litellm_model: str | None
) -> int:
    """Attach the job a person found (after an in-doubt failure) to its row."""
    async with operator(settings) as op:
        done = await operations.adopt(
            op, row_id, video_id, settings.generation.provider, litellm_model=litellm_model
        )
    return say(as_json, done.payload, done.line, ok=done.ok)


async def run_retry(
    settings: Settings,
    row_id: UUID | None,
    since: datetime | None,
    as_json: bool,
    *,
    abandon: bool = False,
) -> int:
    async with operator(settings) as op:
        done = await operations.retry(op, row_id, failed_since=since, abandon=abandon)
    return say(as_json, done.payload, done.line, ok=done.ok)


async def run_cancel(settings: Settings, row_id: UUID, as_json: bool) -> int:
    """Fail the row (waiting out a worker's current step on it), then delete the job."""
    async with operator(settings) as op:
        done = await operations.cancel(op, settings, row_id)
    return say(as_json, done.payload, done.line, ok=done.ok)


async def run_rearchive(settings: Settings, row_id: UUID, as_json: bool) -> int:
    async with operator(settings) as op:
        done = await operations.rearchive(op, row_id)
    return say(as_json, done.payload, done.line, ok=done.ok)


async def run_prune(settings: Settings, days: float, apply: bool, as_json: bool) -> int:
    """Dry run unless ``apply``: list what would go; else mark the rows, delete files."""
    age = timedelta(days=days)
    async with operator(settings) as op:
        rows = await op.mark_pruned(age) if apply else await op.prunable(age)
    failures: list[str] = []
    left: list[str] = []
    if apply and rows:
        failures, left = await _delete_files(settings, rows)
    total = sum(r.video_bytes for r in rows)
    payload = {
        "dry_run": not apply,
        "rows": [as_dict(r) for r in rows],
        "video_bytes": total,
        "failed_deletes": failures,
        "left_alone": left,
    }
    verb = "pruned" if apply else "would prune (dry run; --apply to act)"
    line = f"{verb} {len(rows)} row(s) completed over {days:g} days ago, {total:,} video bytes"
    for failure in [*failures, *left]:
        print(printable(f"sora-worker: {failure}"), file=sys.stderr)
    return say(as_json, payload, line, ok=not failures)


def own_file(
    item: Prunable, url: str, store: ObjectStore, video_bucket: str
) -> tuple[str, str] | None:
    """Where ``url`` is stored, if it is a file the row's own archive wrote: in the
    video bucket under the row's own prefix (``{row id}/...``: its video, thumbnail,
    poster, rendition). A row may hold any URL; prune deletes only these."""
    where = locate(store, url)
    if where is None or where[0] != video_bucket or not where[1].startswith(f"{item.id}/"):
        return None
    return where


async def _delete_files(settings: Settings, rows: list[Prunable]) -> tuple[list[str], list[str]]:
    """Delete the rows' own files; return what failed and what was left alone (URLs a
    row holds that its archive did not write: another row's file, a photo, elsewhere)."""
    failures: list[str] = []
    left: list[str] = []
    async with open_store(settings) as store:
        for row in rows:
            for url in row.urls:
                where = own_file(row, url, store, settings.storage.video_bucket)
                if where is None:
                    left.append(f"row {row.id}: {url} was not written by its archive; left alone")
                    continue
                try:
                    await store.delete(*where)
                except (StorageError, OSError) as err:
                    failures.append(f"row {row.id}: could not delete {url}: {err}")
    return failures, left


async def storage_used(settings: Settings, op: Operator) -> dict[str, dict[str, int]] | None:
    """Per bucket: Supabase's storage.objects, or the files of local storage."""
    buckets = [settings.storage.video_bucket, settings.storage.image_bucket]
    if settings.storage.uses_supabase:
        return await op.storage_used(buckets)
    root = settings.stand_ins.data_dir / "storage"
    return await asyncio.to_thread(_local_usage, root, buckets)


def _local_usage(root: Path, buckets: list[str]) -> dict[str, dict[str, int]]:
    used = {}
    for bucket in buckets:
        files = [p for p in (root / bucket).rglob("*") if p.is_file()]
        used[bucket] = {"objects": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return used
