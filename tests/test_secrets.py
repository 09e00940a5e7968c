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
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

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
def production_logs(fmt: logs.LogFormat = "json") -> Iterator[None]:
    """Logs at debug level to the (captured) stderr, as a deployment renders them; the
    test harness's logging is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure(fmt, "debug")
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


# ---------------------------------------------------------------- crashes and tracebacks

SB_SECRET = "sb_secret_" + "N7fQ2xVb9LmK3pRt8WyZ1aCd"
GOOGLE_KEY = "AIzaSy" + "D-9tSqP0lMkNjBhVgCfXdZeWaQsRtYuIo1"
REPLICATE_TOKEN = "r8_" + "Zx81LmQp3Ws9Te7Yu5Io2Pa4Sd6Fg0Hj1Kl3Mn"
CRASH_SECRETS = (SB_SECRET, GOOGLE_KEY, REPLICATE_TOKEN, OPENAI_KEY)


@contextmanager
def logs_redacting(fmt: logs.LogFormat, secrets: tuple[str, ...]) -> Iterator[None]:
    """Logs configured as ``run`` configures them: the settings' secrets redacted."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure(fmt, "debug", secrets)
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level


def _crash(apikey: str) -> None:
    headers = {"apikey": apikey, "Authorization": f"Bearer {apikey}"}  # noqa: F841
    raise ValueError("the resumable upload broke")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_traceback_carries_no_frame_locals(
    fmt: logs.LogFormat, capfd: pytest.CaptureFixture[str]
) -> None:
    """structlog renders every frame's locals by default, each cut to 80 characters:
    enough for a whole key. Not one of them, and no secret, may reach the line."""
    with production_logs(fmt):  # no secrets given: the locals alone must not show
        try:
            _crash(SB_SECRET)
        except ValueError:
            structlog.get_logger("test").exception("upload.crashed")
    err = capfd.readouterr().err
    assert "the resumable upload broke" in err  # the traceback itself is kept
    assert SB_SECRET not in err and SB_SECRET[:40] not in err


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_in_messages_and_library_records_are_redacted(
    fmt: logs.LogFormat, capfd: pytest.CaptureFixture[str]
) -> None:
    password = "p@ss/wo rd-SECRET-9"
    with logs_redacting(fmt, (*CRASH_SECRETS, password)):
        log = structlog.get_logger("test")
        log.warning("provider.refused", error=f"key {GOOGLE_KEY} is not valid")
        try:
            raise RuntimeError(f"token {REPLICATE_TOKEN} refused")
        except RuntimeError:
            log.exception("step.crashed")
        logging.getLogger("somelib").warning("dsn postgresql://u:%s@db/x", quote(password))
        log.info("nested", found={"keys": [SB_SECRET, {"deep": OPENAI_KEY}]})
    err = capfd.readouterr().err
    assert "[redacted]" in err
    leaks = [s for s in (*CRASH_SECRETS, password, quote(password)) if s in err]
    assert leaks == []


async def _crash_in(adapter_name: str) -> None:
    """Run one real call of an adapter whose HTTP send fails with a bug-like error (not
    an HTTP error the adapter would translate): it leaves through the adapter's frames."""
    from service.core.request import VideoRequest
    from service.providers.google_veo import GoogleVeo
    from service.providers.openai_videos import OpenAIVideos
    from service.providers.replicate_videos import ReplicateVideos
    from service.storage.supabase import SupabaseStore

    request = VideoRequest("a hug", "veo-3.1-generate-001", "1280x720", "4", "k")
    base = "http://127.0.0.1:9"
    match adapter_name:
        case "openai":
            openai_videos = OpenAIVideos(OPENAI_KEY, base)
            try:
                await openai_videos.submit(request)
            finally:
                await openai_videos.aclose()
        case "google_veo":
            veo = GoogleVeo(GOOGLE_KEY, base)
            try:
                await veo.submit(request)
            finally:
                await veo.aclose()
        case "replicate":
            replicate = ReplicateVideos(REPLICATE_TOKEN, base)
            try:
                await replicate.submit(replace(request, model="google/veo-3.1"))
            finally:
                await replicate.aclose()
        case "supabase":
            store = SupabaseStore(base, SB_SECRET)

            async def video() -> Any:
                yield b"\x00" * (7 * 1024 * 1024)  # beyond one request: the TUS path

            try:
                await store.put("hug-videos", "row/video.mp4", video(), "video/mp4")
            finally:
                await store.aclose()


@pytest.mark.parametrize("adapter_name", ["openai", "google_veo", "replicate", "supabase"])
async def test_a_crash_inside_an_adapter_logs_no_secret(
    adapter_name: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import httpx
    import httpx2

    async def broken_send(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("injected crash")

    monkeypatch.setattr(httpx.AsyncClient, "send", broken_send)
    monkeypatch.setattr(httpx2.AsyncClient, "send", broken_send)
    with logs_redacting("json", CRASH_SECRETS):
        try:
            await _crash_in(adapter_name)
        except Exception:
            # What the daemon does with a bug in a step (video.step_crashed).
            structlog.get_logger("test").exception("video.step_crashed")
        else:
            raise AssertionError("the injected crash did not surface")
    err = capfd.readouterr().err
    assert "injected crash" in err
    assert [s for s in CRASH_SECRETS if s in err] == []
