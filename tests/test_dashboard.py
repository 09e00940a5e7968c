"""``sora-worker dashboard`` over HTTP: the pages, who may use them, the actions and the
live feed, on a real PostgreSQL. What a browser does with them is
``tests/test_dashboard_browser.py``."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from service.config import Settings, secret_values
from service.dashboard.access import CSP, Unprotected
from service.dashboard.app import Dashboard
from service.database.operator import CANCELLED
from service.providers.base import VideoGone
from tests.conftest import changed, eventually, make_settings, row_in
from tests.faultproxy import PostgresFaultProxy
from tests.test_cli import CLI, env_for
from tests.test_database_faults import through
from tests.test_operator import shared_settings, slow_runtime
from tests.test_pipeline import running

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


@asynccontextmanager
async def serving(
    settings: Settings, dsn: str, **flat: Any
) -> AsyncIterator[tuple[Dashboard, asyncpg.Pool]]:
    """A dashboard on any free port (``flat``: dashboard settings by their flat names)."""
    settings = changed(settings, dashboard_port=0, **flat)
    async with (
        asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool,
        Dashboard(settings, pool, dsn) as dashboard,
    ):
        yield dashboard, pool


def client(**kwargs: Any) -> aiohttp.ClientSession:
    """A client that keeps cookies of 127.0.0.1, as a browser does."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)


def base(dashboard: Dashboard) -> str:
    return f"http://127.0.0.1:{dashboard.port}"


async def page(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str]:
    async with session.get(url, allow_redirects=False, **kwargs) as response:
        return response.status, await response.text()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, html
    return found[1]


async def post(
    session: aiohttp.ClientSession, dashboard: Dashboard, path: str, **form: str
) -> tuple[int, str]:
    """POST a row page's form as the page would: with its CSRF token and its Origin."""
    _, html = await page(session, base(dashboard) + path.rsplit("/", 1)[0])
    data = {"csrf": csrf_of(html), **form}
    headers = {"Origin": base(dashboard)}
    async with session.post(
        base(dashboard) + path, data=data, headers=headers, allow_redirects=True
    ) as response:
        return response.status, await response.text()


class Events:
    """The live feed as a browser's EventSource reads it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict[str, Any]:
        kind, data = None, None
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and kind == "snapshot" and data is not None:
                parsed: dict[str, Any] = json.loads(data)
                return parsed
        raise AssertionError("the stream ended")

    async def until(self, check: Any, within: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                snapshot = await self.next()
                if check(snapshot):
                    return snapshot


@asynccontextmanager
async def events(session: aiohttp.ClientSession, dashboard: Dashboard) -> AsyncIterator[Events]:
    async with session.get(base(dashboard) + "/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        yield Events(response)


def shows(row_id: object) -> Any:
    return lambda s: s["database"] == "ok" and any(r["id"] == str(row_id) for r in s["rows"])


# ------------------------------------------------------------------ pages


async def test_the_page_shows_the_queue_and_rows_escaped(settings: Settings, db_url: str) -> None:
    async with serving(settings, db_url) as (dashboard, pool), client() as s:
        failed = await row_in(pool, "failed", HOSTILE, error=HOSTILE, error_kind="provider_error")
        done = await row_in(
            pool,
            "completed",
            "two friends hugging",
            video_url="javascript:alert(3)",
            poster_url="https://cdn.example/p.webp",
            completed_at=None,
        )
        async with s.get(base(dashboard) + "/") as response:
            assert response.status == 200
            assert response.headers["Content-Security-Policy"] == CSP
            assert response.headers["X-Frame-Options"] == "DENY"
            html = await response.text()
        assert f'id="row-{failed}"' in html and f'id="row-{done}"' in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<script>alert" not in html and "onerror=" not in html.replace("onerror=&#34;", "")
        assert "javascript:" not in html  # not a link, not a src
        assert 'poster="https://cdn.example/p.webp"' not in html  # no video: the poster alone
        assert '<img src="https://cdn.example/p.webp"' in html
        assert re.search(r'data-stage="failed">1<', html)
        assert "provider_error" in html
        status, row_page = await page(s, f"{base(dashboard)}/rows/{failed}")
        assert status == 200
        assert "<script>alert" not in row_page
        assert row_page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # prompt, error
        assert (await page(s, f"{base(dashboard)}/rows/{UUID(int=7)}"))[0] == 404
        assert (await page(s, f"{base(dashboard)}/rows/not-a-row"))[0] == 404


async def test_no_secret_reaches_any_page(db_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        db_url,
        tmp_path,
        openai_api_key="sk-the-openai-key-0123456789",
        openai_base_url="http://127.0.0.1:9/v1",
        replicate_api_token="r8-the-replicate-token-0123",
        metrics_token="the-metrics-token-0123",
        dashboard_token="the-dashboard-token-0123",
    )
    secrets = [s for s in secret_values(settings) if len(s) > 8]
    assert len(secrets) == 5  # the four, and the database URL
    auth = {"Authorization": "Bearer the-dashboard-token-0123"}
    async with (
        serving(settings, db_url) as (dashboard, pool),
        client(headers=auth) as s,
    ):
        row_id = await row_in(pool, "failed", "a prompt", error="boom")
        seen = [
            (await page(s, base(dashboard) + path))[1]
            for path in ("/", f"/rows/{row_id}", "/static/dashboard.js", "/nothing")
        ]
        async with events(s, dashboard) as feed:
            seen.append(json.dumps(await feed.next()))
        seen.append((await post(s, dashboard, f"/rows/{row_id}/retry"))[1])
    for text in seen:
        for secret in secrets:
            assert secret not in text


# ------------------------------------------------------------------ who may use it


async def test_off_loopback_it_needs_a_token_and_refuses_requests_without_it(
    settings: Settings, db_url: str
) -> None:
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        with pytest.raises(Unprotected, match="SORA_DASHBOARD_TOKEN"):
            Dashboard(changed(settings, dashboard_host="0.0.0.0"), pool, db_url)
    token = "a-long-random-token-for-the-test"
    async with serving(settings, db_url, dashboard_host="0.0.0.0", dashboard_token=token) as (
        dashboard,
        _,
    ):
        url = base(dashboard)
        async with client() as s:
            for path in ("/", "/events", "/static/dashboard.js", f"/rows/{UUID(int=1)}"):
                assert (await page(s, url + path))[0] == 401, path
            assert (await page(s, url + "/?token=wrong"))[0] == 401
            assert (await page(s, url + "/", headers={"Authorization": "Bearer no"}))[0] == 401
            bearer = {"Authorization": f"Bearer {token}"}
            assert (await page(s, url + "/", headers=bearer))[0] == 200
        async with client() as s:  # a browser: one login, then the cookie
            async with s.get(url + f"/?token={token}", allow_redirects=False) as login:
                assert login.status == 303
                assert login.headers["Location"] == "/"  # the token leaves the address
                cookie = login.cookies["sora_dashboard_token"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
            assert (await page(s, url + "/"))[0] == 200


async def test_without_a_token_it_answers_only_requests_addressed_to_loopback(
    settings: Settings, db_url: str
) -> None:
    """A page whose own name was pointed at 127.0.0.1 (DNS rebinding) is refused."""
    async with serving(settings, db_url) as (dashboard, _), client() as s:
        url = base(dashboard) + "/"
        assert (await page(s, url, headers={"Host": "attacker.example"}))[0] == 421
        assert (await page(s, url, headers={"Host": f"localhost:{dashboard.port}"}))[0] == 200
        assert (await page(s, url))[0] == 200


async def test_actions_need_the_session_csrf_token_and_the_dashboards_origin(
    settings: Settings, db_url: str
) -> None:
    async with serving(settings, db_url) as (dashboard, pool), client() as s:
        row_id = await row_in(pool, "failed", "retry me", error="boom")
        url = f"{base(dashboard)}/rows/{row_id}/retry"
        async with s.get(f"{base(dashboard)}/rows/{row_id}") as response:
            html = await response.text()
            cookie = response.cookies["sora_dashboard_session"]
            assert cookie["samesite"] == "Strict" and cookie["httponly"]
        csrf, own = csrf_of(html), {"Origin": base(dashboard)}
        forged = [
            ({"csrf": csrf}, {}),  # no Origin
            ({"csrf": csrf}, {"Origin": "http://attacker.example"}),
            ({}, own),  # no token
            ({"csrf": "0" * 64}, own),  # another token
        ]
        for data, headers in forged:
            async with s.post(url, data=data, headers=headers, allow_redirects=False) as r:
                assert r.status == 403, (data, headers)
        async with (
            client() as stranger,  # another session's token
            stranger.post(url, data={"csrf": csrf}, headers=own) as r,
        ):
            assert r.status == 403
        assert await pool.fetchval("select stage from videos where id = $1", row_id) == "failed"
        async with s.post(url, data={"csrf": csrf}, headers=own, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == f"/rows/{row_id}"
        assert await pool.fetchval("select stage from videos where id = $1", row_id) == "pending"


# ------------------------------------------------------------------ the verbs


async def test_the_buttons_are_the_cli_verbs(settings: Settings, db_url: str) -> None:
    async with serving(settings, db_url) as (dashboard, pool), client() as s:
        failed = await row_in(pool, "failed", "again", error="boom")
        status, html = await post(s, dashboard, f"/rows/{failed}/retry")
        assert status == 200 and f"re-queued 1 row(s) {failed}" in html
        assert await pool.fetchval("select status from videos where id = $1", failed) == "queued"
        # Refused, saying why, exactly as the CLI says it.
        _, html = await post(s, dashboard, f"/rows/{failed}/retry")
        assert "not failed: only failed rows are retried" in html
        _, html = await post(s, dashboard, f"/rows/{failed}/rearchive")
        assert "is still pending: the worker archives it when done" in html
        done = await row_in(
            pool,
            "completed",
            "done",
            video_id="video_old",
            openai_url="https://provider.example/v",
            openai_expires_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        _, html = await post(s, dashboard, f"/rows/{done}/rearchive")
        assert f"the provider&#39;s copy of row {done} expired at 2026-01-01" in html
        # adopt: the job a person found becomes the row's, and a worker would poll it.
        doubted = await row_in(pool, "failed", "in doubt", error="?", error_kind="in_doubt")
        _, html = await post(s, dashboard, f"/rows/{doubted}/adopt", video_id="video_found_1")
        assert "adopted video_found_1" in html
        row = await pool.fetchrow("select stage, video_id from videos where id = $1", doubted)
        assert tuple(row) == ("generating", "video_found_1")
        _, html = await post(s, dashboard, f"/rows/{failed}/adopt", video_id="video_found_1")
        assert "already belongs to row" in html


async def test_cancel_from_the_page_deletes_the_providers_job(settings: Settings) -> None:
    async with slow_runtime(settings) as rt, running(rt.worker()):
        row_id = await rt.repo.insert_request("cancel me from the page")
        row = await eventually(
            lambda: rt.operator.fetch_row(row_id), lambda r: r["stage"] == "generating"
        )
        dsn = rt.dsn
        async with (
            serving(shared_settings(rt), dsn) as (dashboard, _),
            client() as s,
        ):
            _, html = await post(s, dashboard, f"/rows/{row_id}/cancel")
        assert f"provider job {row['video_id']}: deleted" in html
        after = await rt.operator.fetch_row(row_id)
        assert after is not None and (after["status"], after["error"]) == ("failed", CANCELLED)
        with pytest.raises(VideoGone):
            await rt.providers.get(None).retrieve(row["video_id"])


# ------------------------------------------------------------------ live


async def test_a_new_row_reaches_the_live_feed_through_listen(
    settings: Settings, db_url: str
) -> None:
    """The refresh is an hour: only the worker's NOTIFY can bring the row this fast."""
    async with (
        serving(settings, db_url, dashboard_refresh=3600.0) as (dashboard, pool),
        client() as s,
        events(s, dashboard) as feed,
    ):
        first = await feed.next()
        assert first["database"] == "ok" and first["overview"] is not None
        assert dashboard.feed.listener is not None
        await asyncio.wait_for(dashboard.feed.listener.connected.wait(), 30)
        row_id = await pool.fetchval(
            "insert into videos (prompt) values ($1) returning id", HOSTILE
        )
        snapshot = await feed.until(shows(row_id))
        card = next(r for r in snapshot["rows"] if r["id"] == str(row_id))
        assert "&lt;script&gt;" in card["html"] and "<script>" not in card["html"]
        # What this watcher already has is not sent again.
        await pool.execute("update videos set progress = 5 where id = $1", row_id)
        dashboard.feed.wakeup.set("test")
        again = await feed.until(
            lambda s: any(r["id"] == str(row_id) and r["html"] for r in s["rows"])
        )
        assert [r["id"] for r in again["rows"] if r["html"] is not None] == [str(row_id)]
        assert again["overview"] is None  # the counts did not change


async def test_the_live_feed_survives_a_database_restart(settings: Settings, db_url: str) -> None:
    """Every connection is cut and new ones are refused (as while PostgreSQL restarts),
    then let through: the feed says unavailable, then shows rows inserted since."""
    proxy = PostgresFaultProxy(db_url)
    async with proxy as port:
        proxy_dsn = through(port, db_url)
        proxied = changed(settings, dashboard_refresh=0.2)
        async with (
            serving(proxied, proxy_dsn) as (dashboard, _),
            client() as s,
            events(s, dashboard) as feed,
            asyncpg.create_pool(db_url, min_size=1, max_size=1) as direct,
        ):
            await feed.until(lambda s: s["database"] == "ok")
            proxy.refuse()
            proxy.cut_all()
            await feed.until(lambda s: s["database"] == "unavailable")
            row_id = await direct.fetchval(
                "insert into videos (prompt) values ('after') returning id"
            )
            proxy.restore()
            await feed.until(shows(row_id))


# ------------------------------------------------------------------ the command


async def test_the_command_refuses_an_open_bind_and_serves_until_sigterm(
    db_url: str, tmp_path: Path
) -> None:
    env = env_for(db_url, tmp_path, SORA_DASHBOARD_HOST="0.0.0.0", SORA_DASHBOARD_PORT="0")
    proc = await asyncio.create_subprocess_exec(
        *CLI, "dashboard", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"SORA_DASHBOARD_TOKEN" in err
    env = env_for(db_url, tmp_path, SORA_DASHBOARD_PORT="0")
    proc = await asyncio.create_subprocess_exec(
        *CLI, "dashboard", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        while b"the dashboard is at" not in (line := await proc.stderr.readline()):
            assert line, "the dashboard exited"
        url = line.decode().split("the dashboard is at ")[1].strip()
        async with client() as s:
            status, html = await page(s, url)
        assert status == 200 and 'id="overview"' in html
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.communicate()
    assert proc.returncode == 0
