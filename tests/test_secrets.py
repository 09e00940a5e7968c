"""Secrets never leave: not in logs, row errors or exception texts, whatever fails.

Every secret setting gets a recognisable value (the database password inside
DATABASE_URL, OPENAI_API_KEY, SUPABASE_SERVICE_ROLE_KEY), the worker logs JSON at
debug level as in production, and failures are injected everywhere: the provider
answers 401 and 500, storage answers 403, and the worker's database connections are
killed mid-run. Then everything a person or a log pipeline could see is searched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import structlog

from service import logs
from service.local.simulator import FailureRule, Simulator, SimulatorConfig
from service.providers.base import ProviderError
from service.runtime import open_runtime
from service.storage.base import StorageError
from tests.conftest import FAST_SIMULATOR, eventually, make_settings
from tests.fakes.supabase_storage import started
from tests.test_pipeline import row_of, running

DB_PASSWORD = "pw-SECRET-db-7f3a9c"
OPENAI_KEY = "sk-SECRET-openai-91c2e4"
SUPABASE_KEY = "SECRET-service-role-5d0e11"
SECRETS = (DB_PASSWORD, OPENAI_KEY, SUPABASE_KEY)


def with_password(dsn: str, password: str) -> str:
    """The same URL with a password (the embedded server trusts local users, so any
    password connects: the point is only that it is in the settings)."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@contextmanager
def production_logs() -> Iterator[None]:
    """JSON logs at debug level to the (captured) stderr, as a deployment renders them;
    the test harness's logging is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("json", "debug")
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level


async def test_no_secret_reaches_logs_rows_or_errors(
    db_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    simulator = Simulator(SimulatorConfig(**FAST_SIMULATOR, api_key=OPENAI_KEY))
    simulator.config.failure_rules += [
        FailureRule("refused", "create", status=401, code="invalid_api_key", message="bad key"),
        FailureRule("crashes", "create", status=500, code="server_error", message="boom"),
    ]
    await simulator.start()
    seen: list[str] = []
    try:
        with production_logs():
            await _run_with_failures(db_url, tmp_path, simulator, seen)
    finally:
        await simulator.stop()
    captured = capfd.readouterr()
    seen += [captured.out, captured.err]
    assert "provider.openai" in captured.err  # the worker's logs were captured
    leaks = [(secret, text[:200]) for secret in SECRETS for text in seen if secret in text]
    assert leaks == []


async def _run_with_failures(
    db_url: str, tmp_path: Path, simulator: Simulator, seen: list[str]
) -> None:
    async with started() as supabase:
        supabase.service_key = SUPABASE_KEY
        settings = make_settings(
            with_password(db_url, DB_PASSWORD),
            tmp_path,
            openai_api_key=OPENAI_KEY,
            openai_base_url=simulator.base_url,
            supabase_url=supabase.url,
            supabase_service_role_key=SUPABASE_KEY,
            provider_timeout=2.0,
            log_level="debug",
        )
        seen += [str(settings), repr(settings)]
        async with open_runtime(settings, apply_migrations=False) as runtime:
            supabase.fail_uploads(2, 403, message="new row violates row-level security")
            ids = [
                await runtime.repo.insert_request(prompt)
                for prompt in ("refused", "crashes", "archived through a 403")
            ]
            async with running(runtime.worker()):
                # The database goes away under the worker once, mid-run.
                admin = await asyncpg.connect(db_url)
                try:
                    await admin.execute(
                        "select pg_terminate_backend(pid) from pg_stat_activity "
                        "where datname = current_database() and pid <> pg_backend_pid()"
                    )
                finally:
                    await admin.close()
                rows: list[dict[str, Any]] = [
                    await eventually(
                        lambda rid=rid: row_of(runtime, rid),  # type: ignore[misc]
                        # The 403s are retried until the video is archived.
                        lambda r, last=rid == ids[-1]: (
                            r["status"] == "completed" or (not last and r["error"] is not None)
                        ),
                        within=30,
                    )
                    for rid in ids
                ]
            seen += [str(row.get("error")) for row in rows]
            assert rows[2]["status"] == "completed", rows[2]["error"]
            # The adapters' own exceptions, as a caller would print them.
            try:
                await runtime.providers.get(None).retrieve("video_does_not_exist")
            except ProviderError as err:
                seen += [str(err), repr(err)]
            supabase.fail_uploads(1, 403, message="forbidden")
            try:
                await runtime.store.put("hug-videos", "x/y.mp4", _chunks(), "video/mp4")
            except StorageError as err:
                seen += [str(err), repr(err)]


async def _chunks() -> Any:
    yield b"\x00\x00\x00\x18ftypmp42"
