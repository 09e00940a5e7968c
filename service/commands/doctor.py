"""``sora-worker doctor``: the README's troubleshooting checklist, run instead of read.

One line per check, OK / WARN / FAIL with the fix; the exit code is the worst level
(0 OK, 1 WARN, 2 FAIL). Nothing is changed or created: no migration runs, no bucket,
no directory, and no stand-in starts (an unset DATABASE_URL or provider key says what
``run`` would do instead). Every check catches its own failures, so a broken setting
is a FAIL line, never a traceback; checks that need the database are skipped (and say
so) when it is down. Migrations still to apply are a WARN: ``run`` applies them itself.

Provider checks live behind the adapter (``Diagnosable.diagnose``), so each adapter
says what "reachable" and "model served" mean for its host.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx

from service.config import Settings, allowed, refusal
from service.core.diagnosis import SEVERITY, Finding
from service.database.checks import (
    bucket_publicity,
    older_ledger,
    public_access,
    recorded_migrations,
    server_version,
)
from service.database.migrations import load
from service.database.storage_policies import PolicyState, policy_state
from service.providers import models
from service.providers.base import Diagnosable
from service.providers.registry import provider_named
from service.runtime import DatabaseRefused, DatabaseUnreachable, connecting, open_providers
from service.wakeups.choice import listen_works

CONNECT_TIMEOUT = 10.0
DISK_WARN = 5 * 1024**3
DISK_FAIL = 1024**3

POOLER_FIX = (
    "LISTEN cannot work through a transaction pooler (Supabase's port 6543, PgBouncer): "
    "use the direct connection or the session pooler (port 5432) in DATABASE_URL, or set "
    "SORA_WAKEUPS=realtime (with SUPABASE_URL) and SORA_PREPARED_STATEMENTS=false"
)


def worst(findings: Sequence[Finding]) -> int:
    return max((SEVERITY[f.level] for f in findings), default=0)


async def examine(settings: Settings) -> list[Finding]:
    """Run every check that applies to these settings, in the order a person would."""
    findings: list[Finding] = []
    conn = await _database(settings, findings)
    if conn is not None:
        try:
            await _guarded(findings, "migrations", lambda: _migrations(conn))
            await _guarded(findings, "buckets", lambda: _buckets_in_sql(conn, settings))
            await _guarded(findings, "storage policies", lambda: _policies(conn, settings))
            await _guarded(findings, "public access", lambda: _public_access(conn))
        finally:
            with suppress(Exception):
                await conn.close(timeout=2)
        await _guarded(findings, "listen", lambda: _listen(settings))
    if settings.storage.uses_supabase:
        await _guarded(findings, "realtime", lambda: _realtime(settings))
        await _guarded(findings, "service key", lambda: _service_key(settings))
    else:
        await _guarded(findings, "local storage", lambda: _local_storage(settings))
    await _guarded(findings, "default model", lambda: _default_model(settings))
    await _guarded(findings, "provider", lambda: _provider(settings))
    await _guarded(findings, "disk", lambda: _disk(settings))
    return findings


async def _guarded(
    findings: list[Finding], check: str, run: Callable[[], Awaitable[list[Finding]]]
) -> None:
    try:
        findings.extend(await run())
    except Exception as err:
        findings.append(Finding(check, "FAIL", f"the check itself failed: {err!r}"))


async def _database(settings: Settings, findings: list[Finding]) -> asyncpg.Connection | None:
    if settings.database.url is None:
        refused = refusal(settings, "database")
        findings.append(
            Finding("database", "FAIL", refused, "set DATABASE_URL")
            if refused
            else Finding(
                "database",
                "OK",
                "DATABASE_URL is unset: `run` starts an embedded PostgreSQL under "
                f"{settings.stand_ins.data_dir / 'pg'} (a trial on this machine); doctor "
                "starts nothing, so the database checks were skipped",
            )
        )
        return None
    dsn = settings.database.url.get_secret_value()
    try:
        with connecting(dsn):
            conn: asyncpg.Connection = await asyncpg.connect(
                dsn,
                timeout=CONNECT_TIMEOUT,
                statement_cache_size=100 if settings.database.prepared_statements else 0,
            )
    except (DatabaseUnreachable, DatabaseRefused) as err:
        fix = "correct DATABASE_URL or let this machine reach it; the later checks were skipped"
        findings.append(Finding("database", "FAIL", str(err), fix))
        return None
    version = await server_version(conn)
    findings.append(Finding("database", "OK", f"PostgreSQL {version} answers (DATABASE_URL)"))
    return conn


RUN_APPLIES = (
    "nothing to do: `sora-worker run` applies them when it starts (`sora-worker migrate` "
    "applies them now; `run --no-migrate` does not)"
)


async def _migrations(conn: asyncpg.Connection) -> list[Finding]:
    wanted = load()
    applied = await recorded_migrations(conn)
    if applied is None:
        older = await older_ledger(conn)
        said = "migrated by an older sora-worker" if older else "the database is not migrated yet"
        return [Finding("migrations", "WARN", f"{said}: {len(wanted)} to apply", RUN_APPLIES)]
    changed = [m.name for m in wanted if applied.get(m.name, m.checksum) != m.checksum]
    if changed:
        return [
            Finding(
                "migrations",
                "FAIL",
                f"changed after they were applied: {', '.join(changed)} (`run` refuses to start)",
                "restore those files as they were; a change goes into a new migration",
            )
        ]
    missing = [m.name for m in wanted if m.name not in applied]
    if missing:
        return [
            Finding(
                "migrations", "WARN", f"{len(missing)} to apply: {', '.join(missing)}", RUN_APPLIES
            )
        ]
    return [Finding("migrations", "OK", f"all {len(wanted)} applied")]


async def _buckets_in_sql(conn: asyncpg.Connection, settings: Settings) -> list[Finding]:
    """On a Supabase database the buckets are rows: exist, and public (permanent URLs)."""
    buckets = [settings.storage.video_bucket, settings.storage.image_bucket]
    public = await bucket_publicity(conn, buckets)
    if public is None:
        return []  # plain PostgreSQL: storage is checked where it lives
    found = []
    for bucket in buckets:
        if bucket not in public:
            found.append(
                Finding(
                    "buckets",
                    "WARN",
                    f"bucket {bucket!r} does not exist yet",
                    "nothing to do: a worker creates it (public) when it starts",
                )
            )
        elif not public[bucket]:
            found.append(
                Finding(
                    "buckets",
                    "FAIL",
                    f"bucket {bucket!r} is private: video_url would not open for anyone",
                    f"update storage.buckets set public = true where id = '{bucket}'; "
                    f"(or Dashboard > Storage > {bucket} > Edit bucket > Public bucket)",
                )
            )
        else:
            found.append(Finding("buckets", "OK", f"bucket {bucket!r} exists and is public"))
    return found


async def _policies(conn: asyncpg.Connection, settings: Settings) -> list[Finding]:
    """The public cannot write in our buckets (sql/0005), and whether ``migrate`` could
    see to it or the dashboard must (hosted Supabase: storage.objects is not ours)."""
    buckets = (settings.storage.video_bucket, settings.storage.image_bucket)
    state = await policy_state(conn, buckets)
    if state is None:
        return []
    listed = ", ".join(f"{name!r} ({cmd})" for name, cmd in state.offending)
    if state.offending and not state.guarded:
        said = f"the public may write or delete in our buckets through {listed}"
        return [Finding("storage policies", "FAIL", f"{said}; {state.who}", _owner_fix(state))]
    if not state.guarded:
        said = (
            "no policy lets the public write in our buckets, but sora-worker's guards that "
            f"refuse any later one are missing ({state.guards} of 3); {state.who}"
        )
        return [Finding("storage policies", "WARN", said, _owner_fix(state))]
    if state.offending:
        said = f"public write policies ({listed}) are overruled by sora-worker's guards"
        return [Finding("storage policies", "OK", said)]
    return [Finding("storage policies", "OK", "the public cannot write in our buckets")]


def _owner_fix(state: PolicyState) -> str:
    """What to do about the buckets' policies: migrate, or the dashboard."""
    if state.may_manage:
        return "run `sora-worker migrate` (sql/0005 drops them and guards the buckets)"
    names = ", ".join(repr(name) for name, _ in state.offending)
    deletes = (
        f"; where that too answers 'must be owner', delete {names} in Dashboard > Storage > "
        "Policies"
        if state.offending
        else ""
    )
    return (
        "in the Supabase dashboard's SQL Editor, run what `sora-worker migrate --storage-sql` "
        f"prints (sql/0005){deletes}; then `sora-worker migrate` records it (docs/supabase.md)"
    )


async def _public_access(conn: asyncpg.Connection) -> list[Finding]:
    """anon and authenticated (an app's users) must not write anything of the worker's
    nor read another person's row (docs/security.md)."""
    found = await public_access(conn)
    if not found:
        return [
            Finding(
                "public access",
                "OK",
                "anon and authenticated write nothing of the worker's and read only their "
                "own rows (and the gallery)",
            )
        ]
    return [
        Finding(
            "public access",
            "FAIL",
            problem,
            "run `sora-worker migrate` (it says every privilege again); drop a policy or a "
            "grant made by hand (docs/security.md says who may do what)",
        )
        for problem in found
    ]


async def _listen(settings: Settings) -> list[Finding]:
    if settings.worker.wakeups in ("none", "realtime"):
        return [Finding("listen", "OK", f"not used (SORA_WAKEUPS={settings.worker.wakeups})")]
    assert settings.database.url is not None, "checked once the database answers"
    if await listen_works(settings.database.url.get_secret_value()):
        return [Finding("listen", "OK", "LISTEN hears its own NOTIFY")]
    needed = settings.worker.wakeups in ("listen", "both")
    return [
        Finding(
            "listen",
            "FAIL" if needed else "WARN",
            "LISTEN heard nothing: new rows wait for the sweep "
            f"(up to SORA_SWEEP_INTERVAL={settings.worker.sweep_interval.total_seconds():g} s)",
            POOLER_FIX,
        )
    ]


async def _realtime(settings: Settings) -> list[Finding]:
    if settings.worker.wakeups in ("none", "listen"):
        return [Finding("realtime", "OK", f"not used (SORA_WAKEUPS={settings.worker.wakeups})")]
    from websockets.asyncio.client import connect

    storage = settings.storage
    assert storage.supabase_url is not None and storage.service_role_key is not None
    key = storage.service_role_key.get_secret_value()
    base = storage.supabase_url.rstrip("/").replace("https://", "wss://", 1)
    url = base.replace("http://", "ws://", 1) + "/realtime/v1/websocket?vsn=1.0.0"
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT), connect(url + f"&apikey={key}"):
            pass
    except Exception as err:
        detail = str(err).replace(key, "<key>") or type(err).__name__
        return [
            Finding(
                "realtime",
                "WARN",
                f"cannot open the Realtime websocket: {detail}",
                "check SUPABASE_URL; new rows wait for LISTEN or the sweep meanwhile",
            )
        ]
    return [Finding("realtime", "OK", "the Realtime websocket opens")]


async def _service_key(settings: Settings) -> list[Finding]:
    storage = settings.storage
    assert storage.supabase_url is not None and storage.service_role_key is not None
    key = storage.service_role_key.get_secret_value()
    url = storage.supabase_url.rstrip("/") + "/storage/v1/bucket"
    async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT) as client:
        try:
            answer = await client.get(
                url, headers={"apikey": key, "Authorization": f"Bearer {key}"}
            )
        except httpx.HTTPError as err:
            return [
                Finding("service key", "FAIL", f"cannot reach {url}: {err}", "check SUPABASE_URL")
            ]
    role = _jwt_role(key)
    if answer.status_code == 200 and role not in (None, "service_role"):
        return [
            Finding(
                "service key",
                "FAIL",
                f"SUPABASE_SERVICE_ROLE_KEY is a {role!r} key: the worker could not write",
                "set it to the project's service_role key (Dashboard > Project Settings > API)",
            )
        ]
    if answer.status_code == 200:
        return [Finding("service key", "OK", "Supabase Storage accepts the service-role key")]
    status = _storage_status(answer)
    said = f"{url} answered HTTP {status}"
    if status == 404:
        fix = "set SUPABASE_URL to the project URL (https://<ref>.supabase.co), without a path"
        return [Finding("service key", "FAIL", f"{said}: no Supabase Storage there", fix)]
    if status in (401, 403):
        fix = (
            "set SUPABASE_SERVICE_ROLE_KEY to this project's service_role (secret) key "
            "(Dashboard > Project Settings > API)"
        )
        return [Finding("service key", "FAIL", f"{said}: the key was refused", fix)]
    return [
        Finding("service key", "FAIL", said, "check SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
    ]


def _storage_status(answer: httpx.Response) -> int:
    """The status Storage meant: its REST routes answer 400 with the real one in the
    body's ``statusCode`` (a string), e.g. 403 for a key it refuses."""
    try:
        said = answer.json().get("statusCode")
    except (ValueError, AttributeError):
        return answer.status_code
    return int(said) if isinstance(said, str | int) and str(said).isdigit() else answer.status_code


def _jwt_role(key: str) -> str | None:
    """The ``role`` claim of a legacy JWT key (read, not verified); None for other keys."""
    parts = key.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


async def _local_storage(settings: Settings) -> list[Finding]:
    refused = refusal(settings, "storage")
    if refused:
        return [
            Finding("storage", "FAIL", refused, "set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        ]
    local = settings.stand_ins
    root = local.data_dir / "storage"
    existing = _nearest_existing(root)
    if not os.access(existing, os.W_OK | os.X_OK):
        return [
            Finding(
                "local storage",
                "FAIL",
                f"cannot write under {existing} (videos go to {root})",
                "make SORA_DATA_DIR writable by the worker, or set SUPABASE_URL",
            )
        ]
    port = local.storage_port or "<any free port>"
    served = local.public_url or f"http://{local.storage_host}:{port}"
    trial = " on this machine only (a trial; SUPABASE_URL is unset)" if allowed(settings) else ""
    return [Finding("local storage", "OK", f"videos go to {root}, served at {served}{trial}")]


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (doctor creates no directory)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


async def _provider(settings: Settings) -> list[Finding]:
    chosen = provider_named(settings.generation.provider)
    if settings.providers.of(chosen.name).api_key is None:
        refused = refusal(settings, "provider")
        if refused:
            return [Finding("provider", "FAIL", refused, f"set {chosen.to_set}")]
        said = (
            f"{chosen.key_name} is unset: `run` uses the {chosen.stand_in.what}, whose clips "
            "are synthetic (a trial); doctor starts nothing, so its checks were skipped"
        )
        return [Finding("provider", "OK", said)]
    async with open_providers(settings) as providers:
        provider = providers.get(None)
        if not isinstance(provider, Diagnosable):
            return [Finding("provider", "WARN", f"{provider.name} cannot check itself")]
        return await provider.diagnose(settings.generation.default_model)


async def _default_model(settings: Settings) -> list[Finding]:
    """The model rows get when they name none: retired at this host (FAIL: every such row
    would fail), unknown to the registry (WARN: its sizes, lengths, photos and price are
    the host's secret, and it costs the dearest known price in the budget), or known."""
    chosen = provider_named(settings.generation.provider)
    model = settings.generation.default_model
    own = settings.providers.of(chosen.name)
    if own.api_key is None:
        host: str | None = "127.0.0.1"  # its local stand-in, which serves every name
    else:
        host = urlsplit(own.base_url).hostname if own.base_url else chosen.default_host
    gone = models.retirement(model, host, datetime.now(UTC).date())
    if gone is not None:
        return [
            Finding(
                "default model",
                "FAIL",
                f"{model} was retired at {host} on {gone.on} ({gone.source})",
                f"set SORA_MODEL to another, e.g. {gone.instead}",
            )
        ]
    spec = models.spec_for(model)
    if spec is None:
        return [
            Finding(
                "default model",
                "WARN",
                f"{model} is not in the model registry: its sizes, lengths and photo inputs "
                "are left to the host, and its price counts as the dearest known "
                f"({models.UNKNOWN_USD_PER_SECOND:.2f} USD/s) in the daily budget",
                "make sure the host serves it, or set SORA_MODEL to a registry model "
                "(docs/providers.md lists them)",
            )
        ]
    if chosen.name not in (spec.provider, "openai"):  # a gateway may serve any model
        return [
            Finding(
                "default model",
                "WARN",
                f"{model} is a {spec.provider} model, but SORA_PROVIDER is {chosen.name}",
                "set SORA_MODEL to one of its models, or SORA_PROVIDER to " + spec.provider,
            )
        ]
    return [Finding("default model", "OK", f"{model} (registry facts from {spec.source})")]


async def _disk(settings: Settings) -> list[Finding]:
    data_dir = settings.stand_ins.data_dir
    free = shutil.disk_usage(_nearest_existing(data_dir)).free
    what = f"{free / 1024**3:.1f} GiB free under SORA_DATA_DIR ({data_dir})"
    uses = (
        "temp files" if settings.storage.uses_supabase else "the embedded database and local videos"
    )
    if free < DISK_FAIL:
        return [Finding("disk", "FAIL", what, f"free space or move SORA_DATA_DIR: it holds {uses}")]
    if free < DISK_WARN:
        return [Finding("disk", "WARN", what, f"free space soon: SORA_DATA_DIR holds {uses}")]
    return [Finding("disk", "OK", what)]


async def run_doctor(settings: Settings, as_json: bool) -> int:
    """Exit code: the worst level found (0 OK, 1 WARN, 2 FAIL)."""
    findings = await examine(settings)
    code = worst(findings)
    if as_json:
        checks = [f.as_json() for f in findings]
        print(json.dumps({"worst": ["OK", "WARN", "FAIL"][code], "checks": checks}))
    else:
        for finding in findings:
            print(finding.line())
    return code
