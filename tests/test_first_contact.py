"""A new user's first contact (issue 28): production never falls back to a stand-in, a
bad DATABASE_URL or request is one line from every command, never a traceback.

Each command runs as a subprocess, as a person runs it, with only the settings the case
names (``bare``): none of the test suite's own.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from service.commands.doctor import examine
from service.config import Settings, SettingsError, allowed, load_settings, refusal
from service.config.dsn import problem, where
from service.core.request import request_problem
from tests.conftest import grouped, make_settings
from tests.fakes.supabase_storage import started
from tests.test_doctor import by_check
from tests.test_operator import cli

CLI = [sys.executable, "-m", "service.cli"]
COMMANDS = [
    ("run",),
    ("migrate",),
    ("doctor",),
    ("request", "two friends hugging"),
    ("list",),
    ("stats",),
    ("retry", "--failed"),
]


def bare(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment without any setting, plus ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SORA_", "OPENAI_", "SUPABASE_", "DATABASE_URL", "GOOGLE_"))
        and not k.startswith(("GEMINI_", "REPLICATE_"))
    }
    env.update(SORA_DATA_DIR=str(data_dir), SORA_LOG_FORMAT="json", SORA_HTTP_PORT="0")
    env.update(settings)
    return env


def settings_of(**flat: object) -> Settings:
    """Settings from exactly ``flat`` (nothing from this process's environment)."""
    return Settings(**grouped(**flat))


# ------------------------------------------------------------ production never falls back


def test_nothing_set_is_a_trial_on_stand_ins() -> None:
    settings = settings_of()
    assert allowed(settings)
    assert [refusal(settings, s) for s in ("database", "storage", "provider")] == [None] * 3


def test_a_half_configured_production_refuses_each_stand_in_naming_the_setting() -> None:
    settings = settings_of(database_url="postgresql://u:p@db.example.com/postgres")
    assert not allowed(settings)
    assert refusal(settings, "database") is None
    storage = refusal(settings, "storage")
    assert storage is not None and storage.startswith("SUPABASE_URL is unset (DATABASE_URL is set")
    assert "http://127.0.0.1" in storage
    provider = refusal(settings, "provider")
    assert provider is not None and provider.startswith("OPENAI_API_KEY is unset")
    keyed = settings_of(openai_api_key="sk-x", openai_base_url="https://gateway.example/v1")
    said = refusal(keyed, "database")
    assert said is not None and "DATABASE_URL is unset (OPENAI_API_KEY is set" in said


def test_local_storage_in_production_needs_a_public_address() -> None:
    real = {
        "database_url": "postgresql://u:p@db.example.com/postgres",
        "openai_api_key": "sk-x",
        "openai_base_url": "https://gateway.example/v1",
        "storage": "local",
    }
    for loopback in (None, "http://127.0.0.1:8090", "http://localhost:8090", "http://[::1]/"):
        said = refusal(settings_of(**real, public_url=loopback), "storage")
        assert said is not None and said.startswith("SORA_STORAGE=local but SORA_PUBLIC_URL")
    assert refusal(settings_of(**real, public_url="https://videos.example.com"), "storage") is None
    # Told to, tests and trials may serve on loopback.
    assert refusal(settings_of(**real, stand_ins="allow"), "storage") is None
    # And never means never, even on a trial.
    assert refusal(settings_of(stand_ins="never"), "database") is not None


def test_a_key_for_a_host_that_is_gone_needs_its_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: OPENAI_API_KEY alone pointed rows at api.openai.com, which serves no videos."""
    for name in list(os.environ):
        if name.startswith(("SORA_", "OPENAI_", "DATABASE_URL", "SUPABASE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    with pytest.raises(SettingsError, match="OPENAI_BASE_URL is not: OpenAI's own Videos API"):
        load_settings()


async def test_run_with_a_database_but_nothing_else_refuses_in_one_line(
    db_url: str, tmp_path: Path
) -> None:
    """Before: it started, wrote http://127.0.0.1 URLs into real rows and sent them to
    the simulator, with one info line to say so."""
    status, _, err = await cli(bare(tmp_path, DATABASE_URL=db_url), "run")
    assert status == 2, err
    (line,) = err.splitlines()
    assert line.startswith("sora-worker: SUPABASE_URL is unset (DATABASE_URL is set")
    assert "OPENAI_API_KEY is unset" in line and "Traceback" not in err
    assert not (tmp_path / "storage").exists()


# --------------------------------------------------------------------- a bad DATABASE_URL


BAD_URLS = {
    "postgresql://postgres:p@ss@db.example.com:5432/postgres": "more than one '@'",
    "mysql://u:p@db.example.com/db": "must start with postgresql://",
    "postgresql://u:p@db.example.com:port/db": "port that is not a number",
    "postgresql://u:pa/ss@db.example.com/db": "has its host after a '/'",
    "db.example.com": "is not a URL",
}


def test_each_malformed_url_is_named_without_its_password() -> None:
    for url, said in BAD_URLS.items():
        found = problem(url)
        assert found is not None and said in found, url
        assert "ss@" not in found and "p@" not in found
    assert problem("postgresql://postgres:p%40ss@db.example.com:5432/postgres") is None
    assert where("postgresql://postgres:secret@db.example.com/postgres") == (
        "db.example.com:5432/postgres"
    )


async def test_a_malformed_database_url_is_one_line_from_every_command(tmp_path: Path) -> None:
    """Before: 45-66 lines of traceback from run, migrate, list and the others."""
    url = "postgresql://postgres:p@ss@db.example.com:5432/postgres"
    for command in COMMANDS:
        status, out, err = await cli(bare(tmp_path, DATABASE_URL=url), *command)
        assert status == 2, (command, err)
        (line,) = err.splitlines()
        assert line.startswith("sora-worker: bad settings: DATABASE_URL: holds more than one")
        assert "p@ss" not in line and out == ""


async def test_an_unknown_host_is_named_at_once_and_while_run_waits(tmp_path: Path) -> None:
    """Before: run waited for ever on "Name or service not known", naming no host."""
    url = "postgresql://postgres:pw@no-such-host.invalid:5432/postgres"
    status, _, err = await cli(bare(tmp_path, DATABASE_URL=url), "migrate")
    assert status == 1
    (line,) = err.splitlines()
    assert line.startswith("sora-worker: cannot reach the database at no-such-host.invalid:5432")
    assert "check the host in DATABASE_URL" in line
    env = bare(tmp_path, DATABASE_URL=url, SORA_STAND_INS="allow")
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            first = (await proc.stderr.readline()).decode()
    finally:
        proc.kill()
        await proc.wait()
    assert '"event": "database.waiting"' in first and "no-such-host.invalid:5432" in first


async def test_a_refused_login_is_one_line_naming_the_setting(db_url: str, tmp_path: Path) -> None:
    wrong = db_url.replace("/sora_test_", "/no_such_database_", 1)
    status, _, err = await cli(bare(tmp_path, DATABASE_URL=wrong, SORA_STAND_INS="allow"), "list")
    assert status == 2
    (line,) = err.splitlines()
    assert "does not exist; check the user, password and database name in DATABASE_URL" in line


# ------------------------------------------------------------------------------- request


def test_a_request_the_database_would_refuse_is_said_first() -> None:
    assert request_problem("a hug", "1280x720", "8") is None
    assert request_problem("  ", None, None) == "the prompt is empty: say what the video shows"
    assert "at most 4000" in str(request_problem("x" * 4001, None, None))
    assert "WIDTHxHEIGHT" in str(request_problem("a hug", "123", None))
    assert "4096 pixels" in str(request_problem("a hug", "5000x720", None))
    assert "from 1 to 60" in str(request_problem("a hug", None, "61"))


async def test_request_refuses_bad_size_length_or_prompt_in_one_line(
    db_url: str, tmp_path: Path
) -> None:
    """Before: a raw constraint error (with the whole row in its DETAIL), exit 1."""
    env = bare(tmp_path, DATABASE_URL=db_url, SORA_STAND_INS="allow")
    cases = [
        (("a hug", "--size", "123"), "the size must be WIDTHxHEIGHT"),
        (("",), "the prompt is empty"),
        (("a hug", "--seconds", "999"), "whole number of seconds from 1 to 60"),
        # Refused by the database itself (sql/0011): said the same way.
        (("a hug", "--model", "nope"), "model nope is not offered here"),
    ]
    for args, said in cases:
        status, out, err = await cli(env, "request", *args)
        assert status == 2, (args, err)
        (line,) = err.splitlines()
        assert line.startswith("sora-worker: not requested: ") and said in line, line
        assert out == ""
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("select count(*) from videos") == 0
    finally:
        await conn.close()


# ------------------------------------------------------------------------------- doctor


async def test_a_supabase_url_with_no_storage_behind_it_is_named_as_such(
    db_url: str, tmp_path: Path
) -> None:
    """Before: a 404 was blamed on the key ("not the anon key")."""
    async with started() as fake:
        settings = make_settings(
            db_url,
            tmp_path,
            supabase_url=fake.url + "/not-the-project",
            supabase_service_role_key=fake.service_key,
            wakeups="listen",
        )
        key = by_check(await examine(settings))["service key"][0]
    assert key.level == "FAIL" and "404" in key.detail and "no Supabase Storage" in key.detail
    assert "without a path" in key.fix and "anon" not in key.fix
