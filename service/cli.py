"""``sora-worker``: parses the command line, reads the settings, runs the command.

The commands live in ``service.commands``: run | migrate | simulate | health
(``serve``), request | show | list | stats (``rows``), the operator's verbs adopt |
retry | cancel | rearchive | prune (``verbs``), dashboard, demo, doctor, and env-example.

Every setting comes from the environment (listed by ``--help`` with its default), so
the same command line works in a shell, a container and a systemd unit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args
from uuid import UUID

import asyncpg
import structlog

from service import logs
from service.commands import verbs
from service.commands.dashboard import run_dashboard
from service.commands.doctor import run_doctor
from service.commands.rows import run_list, run_request, run_show, run_stats
from service.commands.serve import run_health, run_migrate, run_simulator, run_worker
from service.config import (
    Settings,
    SettingsError,
    StandInRefused,
    declared_settings,
    env_example,
    load_settings,
    secret_values,
)
from service.database.errors import RepositoryError
from service.database.migrations import MigrationError
from service.extras import LocalExtraMissing, local_extra
from service.providers.registry import SPELLINGS, SimulatorSettings
from service.runtime import DatabaseRefused, DatabaseUnreachable
from service.storage.base import StorageError

log = structlog.get_logger("service.cli")


def settings_help() -> str:
    lines = ["settings (environment variables):"]
    for declared in declared_settings():
        shown = declared.default or "unset"
        lines.append(f"  {declared.env_name:<28} {declared.description} [default: {shown}]")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sora-worker",
        description="Insert a row into public.videos, get a video that never expires.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _serving_commands(commands)
    rows = _row_commands(commands)
    for verb in (*rows, *verbs.add_parsers(commands)):
        verb.add_argument("--json", action="store_true", help="print the result as JSON")
    _setup_commands(commands)
    return parser


def _serving_commands(commands: Any) -> None:
    """The long-running commands: the worker, the demo, the simulator, the dashboard."""
    run = commands.add_parser("run", help="run the worker until SIGTERM/SIGINT")
    run.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")
    run.add_argument(
        "--no-listen", action="store_true", help="no LISTEN (poolers in transaction mode)"
    )

    demo = commands.add_parser("demo", help="run the whole pipeline once on embedded defaults")
    demo.add_argument("--fresh", action="store_true", help="start from an empty data directory")
    demo.add_argument(
        "--keep-serving", action="store_true", help="keep serving the video until Ctrl-C"
    )
    demo.add_argument(
        "--provider",
        choices=sorted(SPELLINGS),
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
        choices=list(get_args(SimulatorSettings.model_fields["profile"].annotation)),
        default=None,
        help="behave as OpenAI itself or as a gateway, quirks included "
        "[default: SORA_SIMULATOR_PROFILE]",
    )

    commands.add_parser(
        "dashboard",
        help="serve a live page of the queue and its videos, with the operator's verbs as "
        "buttons (SORA_DASHBOARD_HOST:SORA_DASHBOARD_PORT, default 127.0.0.1:8092)",
    )


def _row_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """What an app developer does with rows; the ones returned take ``--json``."""
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

    stats = commands.add_parser(
        "stats", help="rows per stage, the oldest unfinished, storage per bucket"
    )
    return [show, listing, stats]


def _setup_commands(commands: Any) -> None:
    """The commands that set up or look at the setup rather than at rows."""
    migrate = commands.add_parser("migrate", help="apply the SQL migrations (safe to repeat)")
    migrate.add_argument(
        "--storage-sql",
        action="store_true",
        help="print the SQL that makes the storage policies (sql/0005), to run in the "
        "Supabase dashboard where the worker's role may not (see doctor); change nothing",
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, dict[str, object]] = {}
    if args.command == "demo" and "SORA_POLL_INTERVAL" not in os.environ:
        # The demo's simulated job takes seconds, not minutes.
        overrides["polls"] = {"interval": timedelta(seconds=1)}
    if args.command == "demo" and args.provider:
        overrides["generation"] = {"provider": args.provider}  # "veo" is read as google_veo
    if args.command == "demo":
        # The demo knows it runs on stand-ins: whatever is unset gets one.
        overrides["stand_ins"] = {"mode": "allow"}
    try:
        settings = load_settings(**overrides)
    except SettingsError as err:
        print(f"sora-worker: bad settings: {err}", file=sys.stderr)
        return 2
    # doctor's findings are its output: the log says only what went wrong beyond them.
    level = "error" if args.command == "doctor" else settings.logs.level
    logs.configure(settings.logs.format, level, secret_values(settings))
    try:
        return asyncio.run(dispatch(args, settings))
    except KeyboardInterrupt:
        return 130
    except (LocalExtraMissing, StandInRefused, DatabaseRefused) as err:
        # A setting to give or to fix: one line, and no restart will help (exit 2).
        print(f"sora-worker: {err}", file=sys.stderr)
        return 2
    except DatabaseUnreachable as err:
        print(f"sora-worker: {err}", file=sys.stderr)
        return 1
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
            return await run_migrate(settings, storage_sql=args.storage_sql)
        case "demo":
            with local_extra("`sora-worker demo` runs on the local stand-ins"):
                from service.commands.demo import run_demo

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
        case "dashboard":
            return await run_dashboard(settings)
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


if __name__ == "__main__":
    sys.exit(main())
