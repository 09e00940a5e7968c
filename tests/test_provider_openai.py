"""The OpenAI Videos adapter: the official SDK, and how its errors are sorted."""

from __future__ import annotations

import asyncio
import socket
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from service.core.request import RequestImage, VideoRequest
from service.local.simulator import FailureRule, Simulator, SimulatorConfig
from service.providers import openai_sdk
from service.providers.base import (
    CannotReconcile,
    OutcomeUnknown,
    ProviderUnavailable,
    RequestRejected,
    VideoGone,
)
from service.providers.ids import litellm_id, stable_id
from service.providers.openai_sdk import quiet
from service.providers.openai_videos import CREATE_LIMITS, STATUS_LIMITS, OpenAIVideos
from tests.conftest import eventually


def request(prompt: str = "a hug", **kw: Any) -> VideoRequest:
    values: dict[str, Any] = dict(
        prompt=prompt, model="sora-2", size="720x1280", seconds="4", idempotency_key="k-1"
    )
    values.update(kw)
    return VideoRequest(**values)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(queue_seconds=0, generation_seconds=0.05)) as simulator:
        yield simulator


@asynccontextmanager
async def fake_host(handler: Any) -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []

    async def record(req: web.Request) -> web.StreamResponse:
        seen.append(req)
        result: web.StreamResponse = await handler(req)
        return result

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", seen
    finally:
        await runner.cleanup()


async def test_submit_sends_the_idempotency_key_and_no_deprecation_warning_escapes(
    sim: Simulator,
) -> None:
    provider = OpenAIVideos("sk-test", sim.base_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = await provider.submit(request(idempotency_key="key-42"))
        await provider.retrieve(job.id)
    await provider.aclose()
    assert [w for w in caught if issubclass(w.category, DeprecationWarning)] == []
    assert sim.created[0].idempotency_key == "key-42"
    assert job.status in {"queued", "running"}


async def test_a_retired_model_is_a_permanent_error_that_says_what_to_change(
    sim: Simulator,
) -> None:
    provider = OpenAIVideos("sk-test", sim.base_url)
    with pytest.raises(RequestRejected, match="SORA_MODEL") as caught:
        await provider.submit(request(model="sora-1"))
    assert "sora-1" in str(caught.value) and "OPENAI_BASE_URL" in str(caught.value)
    await provider.aclose()


async def test_bad_credentials_are_retryable_and_name_the_setting() -> None:
    async with Simulator(SimulatorConfig(api_key="sk-right")) as sim:
        provider = OpenAIVideos("sk-wrong", sim.base_url)
        with pytest.raises(ProviderUnavailable, match="OPENAI_API_KEY"):
            await provider.submit(request())
        await provider.aclose()


async def test_an_unreachable_provider_means_nothing_was_created() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIVideos("sk-test", f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ProviderUnavailable):
        await provider.submit(request())
    await provider.aclose()


async def test_a_5xx_on_create_is_ambiguous_and_is_never_retried_by_the_sdk() -> None:
    async def fail(_req: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=502)

    async with fake_host(fail) as (base_url, seen):
        provider = OpenAIVideos("sk-test", base_url)
        with pytest.raises(OutcomeUnknown):
            await provider.submit(request())
        await provider.aclose()
    assert len(seen) == 1  # one POST: a retry could have paid twice


async def test_a_create_that_times_out_is_ambiguous() -> None:
    release = asyncio.Event()

    async def hang(_req: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async with fake_host(hang) as (base_url, seen):
        provider = OpenAIVideos("sk-test", base_url, timeout=0.3)
        with pytest.raises(OutcomeUnknown):
            await provider.submit(request())
        release.set()
        await provider.aclose()
    assert len(seen) == 1


async def test_a_create_dropped_after_it_was_sent_is_ambiguous() -> None:
    """The host reads the whole POST, then closes without a word: the job may exist."""
    posts: list[bytes] = []

    async def read_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        posts.append(head)
        writer.close()

    server = await asyncio.start_server(read_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = OpenAIVideos("sk-test", f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(OutcomeUnknown):
            big = RequestImage("first_frame", b"\x89PNG" + bytes(64 * 1024), "image/png")
            await provider.submit(request(images=(big,)))
    finally:
        await provider.aclose()
        server.close()
        await server.wait_closed()
    assert len(posts) == 1


async def test_rate_limits_are_retryable_with_the_providers_delay() -> None:
    async def limited(_req: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "slow down", "type": "rate_limit"}},
            status=429,
            headers={"retry-after": "7"},
        )

    async with fake_host(limited) as (base_url, seen):
        provider = OpenAIVideos("sk-test", base_url)
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.submit(request())
        await provider.aclose()
    assert caught.value.retry_after == timedelta(seconds=7)
    assert len(seen) == 1


async def test_an_unknown_gateway_status_counts_as_still_running() -> None:
    async def gateway(_req: web.Request) -> web.Response:
        return web.json_response(
            {
                "id": "task_1",
                "object": "video",
                "model": "veo-3.1",
                "status": "NOT_START",
                "progress": 0,
                "created_at": 1,
                "seconds": "8",
                "size": "1280x720",
            }
        )

    async with fake_host(gateway) as (base_url, _):
        provider = OpenAIVideos("sk-test", base_url)
        job = await provider.retrieve("task_1")
        await provider.aclose()
    assert job.status == "running" and job.raw_status == "NOT_START"


async def test_reconcile_lists_every_matching_job_since_the_submission(sim: Simulator) -> None:
    provider = OpenAIVideos("sk-test", sim.base_url)
    since = datetime.now(UTC) - timedelta(seconds=1)
    await provider.submit(request(prompt="someone else's"))
    first = await provider.submit(request(prompt="ours"))
    second = await provider.submit(request(prompt="ours"))
    await provider.submit(request(prompt="ours", size="1280x720"))
    found = await provider.find_submitted(request(prompt="ours"), since)
    assert sorted(j.id for j in found) == sorted([first.id, second.id])
    assert await provider.find_submitted(request(prompt="never sent"), since) == []
    await provider.aclose()


def listing(prompt: str | None, created: int, has_more: bool) -> dict[str, Any]:
    video = {
        "id": f"video_{created}",
        "object": "video",
        "model": "sora-2",
        "status": "queued",
        "progress": 0,
        "created_at": created,
        "seconds": "4",
        "size": "720x1280",
        "prompt": prompt,
    }
    return {
        "object": "list",
        "data": [video],
        "first_id": video["id"],
        "last_id": video["id"],
        "has_more": has_more,
    }


async def test_reconcile_refuses_to_answer_when_the_host_hides_prompts() -> None:
    now = int(datetime.now(UTC).timestamp())

    async def no_prompts(_req: web.Request) -> web.Response:
        return web.json_response(listing(None, now, False))

    async with fake_host(no_prompts) as (base_url, _):
        provider = OpenAIVideos("sk-test", base_url)
        with pytest.raises(CannotReconcile, match="does not echo prompts"):
            await provider.find_submitted(request(), datetime.now(UTC) - timedelta(seconds=5))
        await provider.aclose()


async def test_reconcile_refuses_to_answer_when_the_list_does_not_reach_back() -> None:
    now = int(datetime.now(UTC).timestamp())

    async def endless(_req: web.Request) -> web.Response:
        return web.json_response(listing("someone else's", now, True))

    async with fake_host(endless) as (base_url, seen):
        provider = OpenAIVideos("sk-test", base_url)
        with pytest.raises(ProviderUnavailable, match="cannot reach back"):
            await provider.find_submitted(request(), datetime.now(UTC) - timedelta(seconds=5))
        await provider.aclose()
    assert len(seen) == 50


async def test_a_running_job_carries_the_hosts_poll_after_hint(sim: Simulator) -> None:
    provider = OpenAIVideos("sk-test", sim.base_url)
    sim.config.generation_seconds = 60
    job = await provider.submit(request())
    assert (await provider.retrieve(job.id)).poll_after is None  # the host sent none
    sim.config.poll_after_ms = 2500
    assert (await provider.retrieve(job.id)).poll_after == timedelta(milliseconds=2500)
    await provider.aclose()


async def test_download_streams_and_a_deleted_video_is_gone(sim: Simulator) -> None:
    provider = OpenAIVideos("sk-test", sim.base_url)
    job = await provider.submit(request())
    await eventually(lambda: provider.retrieve(job.id), lambda j: j.status == "completed")
    async with provider.download(job.id) as chunks:
        data = b"".join([chunk async for chunk in chunks])
    assert data[4:8] == b"ftyp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        await provider._client.videos.delete(job.id)
    with pytest.raises(VideoGone):
        await provider.retrieve(job.id)
    with pytest.raises(VideoGone):
        async with provider.download(job.id) as chunks:
            pass
    await provider.aclose()


# ------------------------------------------------------------ the SDK's edges, pinned

ODD_IDS = ["video_68d7", "a/b c", "=x==?#", "vidéo", litellm_id("video_1", "m-1", "d-1")]


async def test_the_sdk_edges_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """``openai_sdk.retrieve`` stands in for ``videos.retrieve`` through public API: the
    same request (path, escaping, credentials: never the admin key) and the same parsing
    (a gateway's status outside the SDK's enum included). An SDK upgrade that makes the
    two part fails here, saying how; so does one whose clients refuse our limits."""
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-never-sent")
    version = openai.__version__
    body = {
        "id": "video_1",
        "object": "video",
        "status": "NOT_START",
        "progress": 5,
        "created_at": 1_700_000_000,
        "model": "sora-2",
        "prompt": "a hug",
        "size": "720x1280",
        "seconds": "4",
    }

    async def answer(_req: web.Request) -> web.Response:
        return web.json_response(body, headers={"openai-poll-after-ms": "1500"})

    async with fake_host(answer) as (base_url, seen):
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, max_retries=0)
        for video_id in ODD_IDS:
            ours, headers = await openai_sdk.retrieve(client, video_id)
            theirs = await quiet(lambda video_id=video_id: client.videos.retrieve(video_id))
            mine, sdk = seen[-2], seen[-1]
            assert (mine.method, mine.raw_path) == (sdk.method, sdk.raw_path), (
                f"openai {version} sends videos.retrieve({video_id!r}) to {sdk.raw_path}, "
                f"openai_sdk.retrieve to {mine.raw_path}"
            )
            assert dict(mine.headers) == dict(sdk.headers), (
                f"openai {version}: videos.retrieve sends other headers than openai_sdk.retrieve"
            )
            assert mine.headers["Authorization"] == "Bearer sk-test"
            assert ours.model_dump() == theirs.model_dump(), f"openai {version} parses apart"
            assert headers["openai-poll-after-ms"] == "1500"
        asked = len(seen)
        for bad in ("", ".", ".."):
            with pytest.raises(ValueError):
                await openai_sdk.retrieve(client, bad)
            with pytest.raises(ValueError):
                await quiet(lambda bad=bad: client.videos.retrieve(bad))
        assert len(seen) == asked  # refused before anything was sent, by both
        await client.close()
    for limits in (STATUS_LIMITS, CREATE_LIMITS):
        for http_client in (openai.DefaultAioHttpClient, openai.DefaultAsyncHttpxClient):
            await http_client(limits=limits).aclose()


# ---------------------------------------------------------------- gateways as they are


@asynccontextmanager
async def gateway(profile: str) -> AsyncIterator[Simulator]:
    config = SimulatorConfig(queue_seconds=0, generation_seconds=0.05, profile=profile)  # type: ignore[arg-type]
    async with Simulator(config) as simulator:
        yield simulator


async def test_a_litellm_proxy_is_found_unable_to_list_at_startup_and_never_reconciles() -> None:
    async with gateway("litellm") as sim:
        provider = OpenAIVideos("sk-test", sim.base_url)
        with capture_logs() as logs:
            assert await provider.probe() is False
        said = [e for e in logs if e["event"] == "provider.cannot_list"]
        assert len(said) == 1 and "LLM Provider NOT provided" in said[0]["error"]
        assert "adopt" in said[0]["message"]
        with pytest.raises(CannotReconcile, match="LLM Provider NOT provided"):
            await provider.find_submitted(request(), datetime.now(UTC))
        await provider.aclose()


async def test_an_openai_host_lists() -> None:
    async with gateway("openai") as sim:
        provider = OpenAIVideos("sk-test", sim.base_url)
        assert await provider.probe() is True
        await provider.aclose()


async def test_a_gateways_unknown_model_gives_the_advice_and_says_its_status_once() -> None:
    async with gateway("litellm") as sim:
        provider = OpenAIVideos("sk-test", sim.base_url)
        with pytest.raises(RequestRejected) as caught:
            await provider.submit(request(model="kling-9"))
        await provider.aclose()
    text = str(caught.value)
    assert "SORA_MODEL" in text and "kling-9" in text and "Invalid model name" in text
    assert caught.value.kind == "invalid_request"
    assert text.count("400") == 1, text  # not "HTTP 400 400"


async def test_a_litellm_proxy_cannot_look_up_an_id_it_did_not_mint() -> None:
    async with gateway("litellm") as sim:
        provider = OpenAIVideos("sk-test", sim.base_url)
        minted = await provider.submit(request())
        assert (await provider.retrieve(minted.id)).id == minted.id
        with pytest.raises(RequestRejected, match="did not mint"):
            await provider.retrieve("video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5")
        # As a real proxy does: the id without its deployment part routes; one naming
        # another model does not (it goes to OpenAI's own host, and fails there).
        upstream = stable_id(minted.id)
        assert (await provider.retrieve(litellm_id(upstream, "sora-2"))).status != "failed"
        with pytest.raises(ProviderUnavailable, match=r"api\.openai\.com"):
            await provider.retrieve(litellm_id(upstream, "another-model"))
        await provider.aclose()


async def test_new_api_statuses_outside_the_enum_count_as_running_said_once_per_job() -> None:
    async with gateway("new-api") as sim:
        sim.config.queue_seconds = 60
        provider = OpenAIVideos("sk-test", sim.base_url)
        with capture_logs() as logs:
            first = await provider.submit(request(prompt="one"))
            second = await provider.submit(request(prompt="two"))
            for _ in range(3):
                for job in (first, second):
                    polled = await provider.retrieve(job.id)
                    assert (polled.status, polled.raw_status) == ("running", "NOT_START")
        await provider.aclose()
    said = [e for e in logs if e["event"] == "provider.unknown_status"]
    assert sorted(e["video_id"] for e in said) == sorted([first.id, second.id])


async def test_content_filtered_jobs_are_safety_filtered_not_provider_errors(
    sim: Simulator,
) -> None:
    sim.config.failure_rules.append(
        FailureRule("blocked", "generate", code="moderation_blocked", message="no")
    )
    sim.config.failure_rules.append(
        FailureRule("broken", "generate", code="internal_error", message="oops")
    )
    provider = OpenAIVideos("sk-test", sim.base_url)
    blocked = await provider.submit(request(prompt="blocked"))
    broken = await provider.submit(request(prompt="broken"))
    blocked_end = await eventually(lambda: provider.retrieve(blocked.id), lambda j: j.error)
    broken_end = await eventually(lambda: provider.retrieve(broken.id), lambda j: j.error)
    await provider.aclose()
    assert (blocked_end.status, blocked_end.error_kind) == ("failed", "safety_filtered")
    assert (broken_end.status, broken_end.error_kind) == ("failed", "provider_error")
