"""``sora-worker``: run | migrate | demo | simulate | request | show | list | stats, the
operator's verbs (adopt | retry | cancel | rearchive | prune, in ``verbs.py``), and
health | doctor | env-example.

Every setting comes from the environment (listed by ``--help`` with its default), so
the same command line works in a shell, a container and a systemd unit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import UUID

import asyncpg
import httpx
import structlog

from service import logs, verbs
from service.config import (
    ENV_PREFIX,
    Settings,
    SettingsError,
    env_example,
    env_name,
    load_settings,
    shown_default,
)
from service.extras import LocalExtraMissing, local_extra
from service.migrations import MigrationError, migrate
from service.operator import Operator
from service.progress import follow
from service.repository import PostgresRepository, RepositoryError
from service.repository import as_json as as_json_row
from service.runtime import create_pool, database_url, open_runtime, open_store
from service.signals import STOP_SIGNALS, until_signalled
from service.storage.base import StorageError
from service.uploads import PhotoFileError, check_photo_file, is_url, upload_photo

log = structlog.get_logger("service.cli")


def settings_help() -> str:
    lines = ["settings (environment variables):"]
    for name, field in Settings.model_fields.items():
        shown = "host:pid" if name == "worker_id" else shown_default(name) or "unset"
        lines.append(f"  {env_name(name):<28} {field.description or ''} [default: {shown}]")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sora-worker",
        description="Insert a row into public.videos, get a video that never expires.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the worker until SIGTERM/SIGINT")
    run.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")
    run.add_argument(
        "--no-listen", action="store_true", help="no LISTEN (poolers in transaction mode)"
    )

    commands.add_parser("migrate", help="apply the SQL migrations (safe to repeat)")

    demo = commands.add_parser("demo", help="run the whole pipeline once on embedded defaults")
    demo.add_argument("--fresh", action="store_true", help="start from an empty data directory")
    demo.add_argument(
        "--keep-serving", action="store_true", help="keep serving the video until Ctrl-C"
    )
    demo.add_argument(
        "--provider",
        choices=["openai", "veo", "replicate"],
        help="the generator to run through (default: SORA_PROVIDER); without its key, "
        "its local fake",
    )

    simulate = commands.add_parser("simulate", help="serve the local Sora API simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8089)
    simulate.add_argument("--generation-seconds", type=float, default=8.0)
    simulate.add_argument("--state-dir", type=Path, default=None)
    simulate.add_argument(
        "--profile",
        choices=["openai", "litellm", "new-api"],
        default=None,
        help="behave as OpenAI itself or as a gateway, quirks included "
        "[default: SORA_SIMULATOR_PROFILE]",
    )

    request = commands.add_parser(
        "request", help="ask for a video (as an app would); prints its id, or the row with --wait"
    )
    request.add_argument("prompt")
    request.add_argument(
        "--image1", help="the first photo: a URL, or a local JPEG/PNG/WebP file to upload"
    )
    request.add_argument("--image2", help="the second photo: a URL or a local file")
    request.add_argument(
        "--wait",
        action="store_true",
        help="show progress until the row finishes, print it as JSON; exit 0 only if completed",
    )
    request.add_argument("--model")
    request.add_argument("--size", help="WIDTHxHEIGHT, e.g. 1280x720")
    request.add_argument("--seconds")

    show = commands.add_parser("show", help="print a row as JSON (--json: the same, one line)")
    show.add_argument("id", type=UUID)

    listing = commands.add_parser("list", help="the newest rows, one line each")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--status", choices=["queued", "processing", "completed", "failed"])

    commands.add_parser("stats", help="rows per stage, the oldest unfinished, storage per bucket")

    for verb in (show, listing, commands.choices["stats"], *verbs.add_parsers(commands)):
        verb.add_argument("--json", action="store_true", help="print the result as JSON")

    doctor = commands.add_parser(
        "doctor", help="check the setup: one line per check; exit 0 OK, 1 WARN, 2 FAIL"
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    commands.add_parser(
        "health", help="exit 0 if the local worker is ready (GET /readyz on SORA_HTTP_PORT)"
    )
    commands.add_parser(
        "env-example", help="print every setting at its default (the source of .env.example)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, object] = {}
    if args.command == "demo" and f"{ENV_PREFIX}POLL_INTERVAL" not in os.environ:
        overrides["poll_interval"] = 1.0  # the demo's simulated job takes seconds, not minutes
    if args.command == "demo" and args.provider:
        overrides["provider"] = args.provider  # "veo" is read as google_veo
    try:
        settings = load_settings(**overrides)
    except SettingsError as err:
        print(f"sora-worker: bad settings: {err}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    try:
        return asyncio.run(dispatch(args, settings))
    except KeyboardInterrupt:
        return 130
    except LocalExtraMissing as err:
        print(f"sora-worker: {err}", file=sys.stderr)
        return 2
    except asyncpg.UndefinedTableError as err:
        log.error("command.failed", command=args.command, error=f"{err}: run `sora-worker migrate`")
        return 1
    except (MigrationError, StorageError, RepositoryError, OSError, asyncpg.PostgresError) as err:
        log.error("command.failed", command=args.command, error=str(err))
        return 1


async def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "run":
            return await run_worker(
                settings, migrate_first=not args.no_migrate, listen=not args.no_listen
            )
        case "migrate":
            return await run_migrate(settings)
        case "demo":
            with local_extra("`sora-worker demo` runs on the local stand-ins"):
                from service.local.demo import run_demo

            return await run_demo(settings, fresh=args.fresh, keep_serving=args.keep_serving)
        case "simulate":
            return await run_simulator(args, settings)
        case "request":
            return await run_request(settings, args)
        case "show":
            return await run_show(settings, args.id)
        case "list":
            return await run_list(settings, args.limit, args.status, args.json)
        case "stats":
            return await run_stats(settings, args.json)
        case "adopt" | "retry" | "cancel" | "rearchive" | "prune":
            return await verbs.dispatch(args, settings)
        case "health" | "doctor" | "env-example":
            return await checks(args, settings)
    raise AssertionError(args.command)


async def checks(args: argparse.Namespace, settings: Settings) -> int:
    """The commands that look at the setup rather than at rows."""
    match args.command:
        case "health":
            return await run_health(settings)
        case "doctor":
            return await run_doctor(settings, args.json)
        case "env-example":
            print(env_example(), end="")
            return 0
    raise AssertionError(args.command)


async def run_simulator(args: argparse.Namespace, settings: Settings) -> int:
    with local_extra("`sora-worker simulate` serves the local Sora simulator"):
        from service.local.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(
        generation_seconds=args.generation_seconds,
        state_dir=args.state_dir,
        profile=args.profile or settings.simulator_profile,
    )
    simulator = Simulator(config)
    await simulator.start(args.host, args.port)
    log.info(
        "simulator.listening",
        base_url=simulator.base_url,
        host=args.host,
        port=args.port,
        profile=config.profile,
    )
    try:
        await until_signalled()
    finally:
        await simulator.stop()
    return 0


async def run_worker(settings: Settings, *, migrate_first: bool, listen: bool) -> int:
    if not settings.uses_supabase and settings.storage_port == 0 and not settings.public_url:
        log.warning(
            "storage.ephemeral_port",
            message="SORA_STORAGE_PORT=0: video_url will name a port that dies with this "
            "process; set a fixed port or SORA_PUBLIC_URL for URLs that last",
        )
    async with open_runtime(
        settings, apply_migrations=migrate_first, wait_for_database=True
    ) as runtime:
        sources = await runtime.choose_wakeups(listen_allowed=listen)
        realtime = runtime.realtime_source() if sources.realtime else None
        worker = runtime.worker(listen=sources.listen, realtime=realtime)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            # The first signal asks for a graceful stop; removing the handlers gives the
            # next Ctrl-C Python's default (KeyboardInterrupt: exit 130 at once), so an
            # operator who will not wait out SORA_SHUTDOWN_GRACE need not reach for kill.
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            worker.stop()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop)
        # Provider webhooks (service/webhooks.py) arrive on the same server as /metrics.
        receiver = await runtime.webhook_receiver(worker.wakeup)
        async with runtime.http_server(worker, routes=receiver.routes()):
            await worker.run()
    return 0


async def run_migrate(settings: Settings) -> int:
    async with (
        create_pool(settings, await database_url(settings), 1) as pool,
        pool.acquire() as conn,
    ):
        applied = await migrate(conn)
    log.info("database.migrated", applied=applied or "nothing to do")
    return 0


@asynccontextmanager
async def repository(settings: Settings) -> AsyncIterator[PostgresRepository]:
    """A repository on a one-connection pool, for the short commands."""
    async with create_pool(settings, await database_url(settings), 1) as pool:
        yield PostgresRepository(pool, settings.worker_id, settings.lease)


async def run_request(settings: Settings, args: argparse.Namespace) -> int:
    """The seed app's upload + create-video + check-video, in one command."""
    photos: dict[str, str | None] = {"image1": args.image1, "image2": args.image2}
    files = {name: Path(value) for name, value in photos.items() if value and not is_url(value)}
    try:
        for name, path in files.items():
            check_photo_file(f"--{name}", path, settings.image_max_bytes)
    except PhotoFileError as err:
        print(f"sora-worker: {err}", file=sys.stderr)
        return 2
    if files:
        async with open_store(settings) as store:
            for name, path in files.items():
                photos[name] = await upload_photo(
                    store, settings.image_bucket, f"--{name}", path, settings.image_max_bytes
                )
                log.info("request.photo_uploaded", photo=name, url=photos[name])
    async with repository(settings) as repo:
        row_id = await repo.insert_request(
            args.prompt,
            photos["image1"],
            photos["image2"],
            model=args.model,
            size=args.size,
            seconds=args.seconds,
        )
        if not args.wait:
            print(row_id)
            return 0
        print(f"sora-worker: row {row_id} inserted; waiting for a worker", file=sys.stderr)
        row = await follow(repo.fetch_row, row_id, "request")
    print(json.dumps(as_json_row(row), sort_keys=True))
    return 0 if row["status"] == "completed" else 1


async def run_show(settings: Settings, row_id: UUID) -> int:
    async with repository(settings) as repo:
        row = await repo.fetch_row(row_id)
    if row is None:
        print(f"no row {row_id}", file=sys.stderr)
        return 1
    print(json.dumps(as_json_row(row), sort_keys=True))
    return 0


async def run_list(settings: Settings, limit: int, status: str | None, as_json: bool) -> int:
    async with repository(settings) as repo:
        rows = await repo.recent(limit, status)
    if as_json:
        print(json.dumps([as_json_row(row) for row in rows], sort_keys=True))
        return 0
    for row in rows:
        detail = row["video_url"] or row["error"] or ""
        if row["error_kind"]:
            detail = f"[{row['error_kind']}] {detail}"
        print(
            f"{row['id']}  {row['created_at']:%Y-%m-%d %H:%M:%S}  {row['stage']:<10} "
            f"{row['progress']:3d}%  {detail}"
        )
    return 0


async def run_stats(settings: Settings, as_json: bool) -> int:
    async with repository(settings) as repo:
        stats = await repo.stats()
        stats["storage"] = await verbs.storage_used(settings, Operator(repo.pool))
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


async def run_doctor(settings: Settings, as_json: bool) -> int:
    """Exit code: the worst level found (0 OK, 1 WARN, 2 FAIL)."""
    from service.doctor import examine, worst

    findings = await examine(settings)
    code = worst(findings)
    if as_json:
        checks = [f.as_json() for f in findings]
        print(json.dumps({"worst": ["OK", "WARN", "FAIL"][code], "checks": checks}))
    else:
        for finding in findings:
            print(finding.line())
    return code


async def run_health(settings: Settings) -> int:
    """The container's HEALTHCHECK: this machine's worker answers /readyz with 200."""
    if settings.http_port == 0:
        print(
            "sora-worker: SORA_HTTP_PORT=0 gives the worker a random port; "
            "set a fixed SORA_HTTP_PORT to probe it",
            file=sys.stderr,
        )
        return 2
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.http_port}/readyz"
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            answer = await client.get(url)
    except httpx.HTTPError as err:
        print(f"sora-worker: not ready: {url}: {err or type(err).__name__}", file=sys.stderr)
        return 1
    print(answer.text)
    return 0 if answer.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
