"""The real CLI as a subprocess: what an operator and a container actually run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from PIL import Image

from service.runtime import Runtime
from tests.conftest import eventually
from tests.test_pipeline import running

CLI = [sys.executable, "-m", "service.cli"]


def env_for(db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "OPENAI_", "SUPABASE_"))
    }
    env.update(
        DATABASE_URL=db_url,
        SORA_DATA_DIR=str(data_dir),
        SORA_STORAGE_PORT="0",
        SORA_SIMULATOR_PORT="0",
        SORA_HTTP_PORT="0",
        SORA_LOG_FORMAT="json",
        SORA_STAND_INS="allow",  # a real PostgreSQL, stand-ins for the rest
    )
    env.update(extra)
    return env


async def test_run_serves_rows_and_exits_cleanly_on_sigterm(db_url: str, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        env=env_for(db_url, tmp_path, SORA_POLL_INTERVAL="0.1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b"worker.started" not in await proc.stderr.readline():
                pass
        conn = await asyncpg.connect(db_url)
        try:
            row_id = await conn.fetchval("insert into videos (prompt) values ('cli') returning id")
            # The default simulator takes ~9 s; SIGTERM while the row is in flight.
            await eventually(
                lambda: conn.fetchval("select stage from videos where id = $1", row_id),
                lambda stage: stage == "generating",
            )
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                stderr = (await proc.communicate())[1].decode()
            assert proc.returncode == 0, stderr
            row = await conn.fetchrow("select * from videos where id = $1", row_id)
        finally:
            await conn.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert row["stage"] == "generating" and row["locked_by"] is None
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "worker.stopped" in events


async def test_a_second_ctrl_c_during_the_grace_period_exits_at_once(
    db_url: str, tmp_path: Path
) -> None:
    """The first SIGINT drains (up to SORA_SHUTDOWN_GRACE); the second one does not wait."""
    connected = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()  # the row's photo fetch is in flight, and stays so
        await reader.read()  # until the worker goes away
        writer.close()

    photos = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = photos.sockets[0].getsockname()[1]
    env = env_for(
        db_url,
        tmp_path,
        SORA_SHUTDOWN_GRACE="120",
        SORA_IMAGE_TIMEOUT="120",
        SORA_IMAGE_ALLOW_HOSTS=f"127.0.0.1:{port}",  # loopback is refused unless named
    )
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b"worker.started" not in await proc.stderr.readline():
                pass
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(
                "insert into videos (prompt, image1_url) values ('hang', $1)",
                f"http://127.0.0.1:{port}/photo.jpg",
            )
        finally:
            await conn.close()
        async with asyncio.timeout(30):
            await connected.wait()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            while b"worker.draining" not in await proc.stderr.readline():
                pass
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):  # far below the 120 s grace
            stderr = (await proc.communicate())[1].decode()
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        photos.close()
        await photos.wait_closed()


@pytest.mark.slow
async def test_demo_prints_the_completed_row_as_json_on_its_last_line(
    db_url: str, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "demo",
        env=env_for(db_url, tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    row = json.loads(stdout.decode().strip().splitlines()[-1])
    assert row["status"] == "completed"
    assert row["video_url"].startswith("http://") and len(row["video_sha256"]) == 64
    assert "sha256 matches" in stderr.decode()
    assert (tmp_path / "storage" / "hug-videos" / row["id"] / f"{row['video_id']}.mp4").is_file()


async def test_a_misspelt_setting_is_refused_with_a_suggestion(db_url: str, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "migrate",
        env=env_for(db_url, tmp_path, SORA_POLL_INTERVALL="3"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 2
    assert b"SORA_POLL_INTERVALL (did you mean SORA_POLL_INTERVAL?)" in stderr


async def test_a_default_provider_the_worker_has_no_adapter_for_is_refused(
    db_url: str, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        env=env_for(db_url, tmp_path, SORA_PROVIDER="nope"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, stderr = await proc.communicate()
    assert proc.returncode == 2
    (line,) = stderr.decode().splitlines()
    assert line.startswith("sora-worker: bad settings: SORA_PROVIDER: "), line
    assert "'openai', 'google_veo' or 'replicate'" in line


async def test_help_lists_every_setting_with_its_environment_name() -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, _ = await proc.communicate()
    text = stdout.decode()
    for name in (
        "DATABASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "SUPABASE_URL",
        "SORA_POLL_INTERVAL",
        "SORA_MODEL",
        "SORA_CONCURRENCY",
    ):
        assert name in text


async def test_request_list_show_and_stats(db_url: str, tmp_path: Path) -> None:
    env = env_for(db_url, tmp_path)

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
        return stdout.decode()

    row_id = (await cli("request", "a red fox", "--size", "1280x720")).strip()
    shown = json.loads(await cli("show", row_id))
    assert (shown["prompt"], shown["size"], shown["status"]) == ("a red fox", "1280x720", "queued")
    assert row_id in await cli("list", "--status", "queued")
    assert json.loads(await cli("stats", "--json"))["stages"] == {"pending": 1}


@pytest.mark.parametrize("profile", ["openai", "litellm"])
async def test_simulate_serves_the_sdk_and_stops_cleanly_on_sigterm(profile: str) -> None:
    import warnings

    import openai

    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "simulate",
        "--port",
        "0",
        "--generation-seconds",
        "0.1",
        "--profile",
        profile,
        env={k: v for k, v in os.environ.items() if not k.startswith("SORA_")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            line = await proc.stderr.readline()
        listening = json.loads(line)
        assert listening["event"] == "simulator.listening"
        assert listening["profile"] == profile
        # Port 0: the process binds a free port and says which; nothing to race for.
        client = openai.AsyncOpenAI(base_url=listening["base_url"], api_key="sk-any")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            video = await client.videos.create(prompt="a lighthouse")
            assert (await client.videos.retrieve(video.id)).id == video.id
            assert (video.prompt is None) == (profile == "litellm")  # LiteLLM drops it
        await client.close()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_request_uploads_local_photos_and_waits_for_the_finished_row(
    runtime: Runtime, db_url: str, tmp_path: Path
) -> None:
    """The seed app's upload + create + check, in one command beside a running worker."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, fmt, colour in (("a.png", "PNG", (200, 30, 30)), ("b.jpg", "JPEG", (30, 30, 200))):
        Image.new("RGB", (320, 400), colour).save(photos / name, format=fmt)
    storage = urlsplit(runtime.store.public_url("b", "k"))
    env = env_for(
        db_url,
        # The worker's data directory: its storage server is shared.
        runtime.settings.stand_ins.data_dir,
        SORA_STORAGE_PORT=str(storage.port),
    )
    async with running(runtime.worker()):
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "request",
            "two friends hug",
            "--image1",
            str(photos / "a.png"),
            "--image2",
            str(photos / "b.jpg"),
            "--wait",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    row = json.loads(stdout.decode().splitlines()[-1])
    assert row["status"] == "completed" and row["video_url"]
    for field in ("image1_url", "image2_url"):
        assert row[field].startswith(
            f"{storage.scheme}://{storage.netloc}/storage/v1/object/public/hug-images/requests/"
        )
    assert b"request: completed" in stderr  # the progress line


async def test_request_refuses_a_file_that_is_not_a_photo_in_one_line(
    db_url: str, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    huge = tmp_path / "huge.webp"  # what its header says is all that is read
    canvas = (6000 - 1).to_bytes(3, "little") * 2
    huge.write_bytes(b"RIFF\x1e\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00" + bytes(4) + canvas)
    for image, said in (
        (str(notes), "is not a JPEG, PNG or WebP file"),
        (str(tmp_path / "missing.jpg"), "no such file"),
        (str(huge), "is 6000x6000 (36.0 MP); the limit for WebP (decoded whole) is 10 MP"),
    ):
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "request",
            "a hug",
            "--image1",
            image,
            env=env_for(db_url, tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate()
        lines = stderr.decode().strip().splitlines()
        assert proc.returncode == 2 and stdout == b""
        assert len(lines) == 1 and said in lines[0] and "--image1" in lines[0], lines
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("select count(*) from videos") == 0  # nothing inserted
    finally:
        await conn.close()
