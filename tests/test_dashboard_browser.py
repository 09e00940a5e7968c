"""The dashboard in a real browser: the system's Chromium (Debian's ``chromium``),
driven by Playwright through ``executable_path`` (Playwright's own browser download is
never used). ``scripts/bootstrap.sh`` installs Chromium when run as root with apt; as
an ordinary user without it these tests are skipped, saying what to install (under CI
they fail instead).

What a person would check: the page loads; a row inserted in the database appears
without a reload, with its poster, and its video plays; a hostile prompt stays text;
the retry button re-queues a failed row; the page rides out a database restart; and
off loopback, a request without the token is refused. The first test leaves a
screenshot, ``dashboard.png``, in its temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright

from service.config import Settings
from service.runtime import Runtime
from tests.conftest import changed, eventually, row_in
from tests.faultproxy import PostgresFaultProxy
from tests.test_dashboard import HOSTILE, base, serving
from tests.test_database_faults import through
from tests.test_pipeline import running

CHROMIUM = os.environ.get("SORA_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
MISSING = (
    f"no Chromium at {CHROMIUM}: install Debian's package as root "
    "(apt-get install chromium; `make install` does it when run as root), or point "
    "SORA_TEST_CHROMIUM at a Chromium binary"
)

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(MISSING, pytrace=False)
    pytest.skip(MISSING, allow_module_level=True)

WAIT_MS = 60_000
"""How long the browser waits for something on this shared, busy machine."""


@asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[tuple[Page, list[str]]]:
    """A page in a fresh headless Chromium profile, and the dialogs any script opened."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(WAIT_MS)
            dialogs: list[str] = []

            async def dismiss(dialog: Any) -> None:
                dialogs.append(dialog.message)
                await dialog.dismiss()

            page.on("dialog", dismiss)
            yield page, dialogs
        finally:
            await context.close()


async def open_live(page: Page, url: str) -> None:
    """Load the page and wait until its live feed has delivered a snapshot; mark the
    document, so a reload (which would lose the mark) can be told apart."""
    response = await page.goto(url)
    assert response is not None and response.status == 200
    await page.wait_for_function("() => document.body.dataset.updated !== undefined")
    await page.evaluate("() => { window.notReloaded = true; }")


async def still_the_same_document(page: Page) -> bool:
    return bool(await page.evaluate("() => window.notReloaded === true"))


async def test_a_new_row_appears_live_with_its_poster_and_its_video_plays(
    runtime: Runtime, settings: Settings, db_url: str, tmp_path: Path
) -> None:
    await row_in(
        runtime.pool,
        "failed",
        "a dog in a hat",
        error="the prompt was refused",
        error_kind="safety_filtered",
    )
    async with (
        serving(settings, db_url) as (dashboard, _),
        chromium(tmp_path) as (page, dialogs),
        running(runtime.worker()),
    ):
        await open_live(page, base(dashboard) + "/")
        assert await page.locator('[data-stage="failed"]').inner_text() == "1"
        row_id = await runtime.repo.insert_request("two friends hugging on a beach at dusk")
        card = page.locator(f"#row-{row_id}")
        await card.wait_for()  # appears, without a reload
        video = card.locator("video")
        await video.wait_for()  # the video is stored: its permanent URL plays here
        # Its poster is made after (the row is completed once its media are): the card
        # takes it live too.
        stored = await eventually(
            lambda: runtime.operator.fetch_row(row_id), lambda r: r["stage"] == "completed"
        )
        await page.wait_for_function(
            "selector => document.querySelector(selector)?.getAttribute('poster')",
            arg=f"#row-{row_id} video",
        )
        poster = await video.get_attribute("poster")
        src = await video.get_attribute("src")
        assert src == stored["video_url"]
        assert poster == stored["poster_url"] and poster is not None
        width = await page.evaluate(
            """url => new Promise(done => {
                const image = new Image();
                image.onload = () => done(image.naturalWidth);
                image.onerror = () => done(0);
                image.src = url;
            })""",
            poster,
        )
        assert width > 0  # the poster is an image the browser shows
        selector = f"#row-{row_id} video"
        await page.evaluate(
            """selector => {
                const video = document.querySelector(selector);
                window.played = false;
                video.addEventListener("playing", () => { window.played = true; });
                video.muted = true;
                return video.play();
            }""",
            selector,
        )
        await page.wait_for_function(
            """selector => {
                const video = document.querySelector(selector);
                return window.played && video.readyState >= 2 && video.currentTime > 0.5;
            }""",
            arg=selector,
        )
        assert await page.locator('[data-stage="completed"]').inner_text() == "1"
        assert await still_the_same_document(page)
        assert dialogs == []
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


async def test_a_hostile_prompt_stays_text_loaded_and_live(
    settings: Settings, db_url: str, tmp_path: Path
) -> None:
    sneaky = HOSTILE.replace("alert(2)", "window.pwned = 2") + "<script>window.pwned = 1</script>"
    async with (
        serving(settings, db_url) as (dashboard, pool),
        chromium(tmp_path) as (page, dialogs),
    ):
        before = await pool.fetchval("insert into videos (prompt) values ($1) returning id", sneaky)
        await open_live(page, base(dashboard) + "/")
        after = await pool.fetchval("insert into videos (prompt) values ($1) returning id", sneaky)
        await page.locator(f"#row-{after}").wait_for()
        for row_id in (before, after):
            assert await page.locator(f"#row-{row_id} .prompt").inner_text() == sneaky
        await page.goto(f"{base(dashboard)}/rows/{after}")
        assert await page.locator(".prompt").inner_text() == sneaky
        assert await page.evaluate("() => window.pwned === undefined")
        assert await page.locator(".prompt img, .prompt script").count() == 0
    assert dialogs == []


async def test_the_retry_button_requeues_a_failed_row(
    settings: Settings, db_url: str, tmp_path: Path
) -> None:
    async with serving(settings, db_url) as (dashboard, pool), chromium(tmp_path) as (page, _):
        row_id = await row_in(
            pool, "failed", "try me again", error="the host said 500", error_kind="provider_error"
        )
        await page.goto(f"{base(dashboard)}/rows/{row_id}")
        assert "the host said 500" in await page.locator("pre.error").inner_text()
        await page.get_by_role("button", name="Retry").click()
        await page.locator(".flash.ok").wait_for()
        assert f"re-queued 1 row(s) {row_id}" in await page.locator(".flash").inner_text()
        row = await pool.fetchrow("select status, stage, error from videos where id = $1", row_id)
        assert tuple(row) == ("queued", "pending", None)
        assert await page.locator(".facts .stage").inner_text() == "pending"


async def test_the_page_rides_out_a_database_restart_without_a_reload(
    settings: Settings, db_url: str, tmp_path: Path
) -> None:
    proxy = PostgresFaultProxy(db_url)
    async with proxy as port, chromium(tmp_path) as (page, _):
        quick = changed(settings, dashboard_refresh=0.25)
        async with serving(quick, through(port, db_url)) as (dashboard, pool):
            await open_live(page, base(dashboard) + "/")
            proxy.refuse()  # the database goes down: every connection cut, none let in
            proxy.cut_all()
            live = page.locator("#live")
            await page.wait_for_function("() => document.querySelector('#live.down') !== null")
            assert "database unavailable" in await live.inner_text()
            proxy.restore()  # back up; a row arrives meanwhile
            row_id = await pool.fetchval(
                "insert into videos (prompt) values ('after the restart') returning id"
            )
            await page.locator(f"#row-{row_id}").wait_for()
            await page.wait_for_function("() => document.querySelector('#live.ok') !== null")
            assert await still_the_same_document(page)


async def test_off_loopback_a_request_without_the_token_is_refused(
    settings: Settings, db_url: str, tmp_path: Path
) -> None:
    token = "the-dashboards-token-for-this-test"
    async with (
        serving(settings, db_url, dashboard_host="0.0.0.0", dashboard_token=token) as (
            dashboard,
            _,
        ),
        chromium(tmp_path) as (page, _),
    ):
        refused = await page.goto(base(dashboard) + "/")
        assert refused is not None and refused.status == 401
        assert "needs its token" in await page.locator("body").inner_text()
        await open_live(page, f"{base(dashboard)}/?token={token}")
        assert page.url == base(dashboard) + "/"  # the token left the address bar
        assert await page.locator("#live").inner_text() == "live"
        cookies = await page.context.cookies()
        assert {c["name"]: (c["httpOnly"], c["sameSite"]) for c in cookies} == {
            "sora_dashboard_token": (True, "Strict"),
            "sora_dashboard_session": (True, "Strict"),
        }
