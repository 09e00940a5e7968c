"""The OpenAI Videos adapter: the official SDK, and how its errors are sorted."""

from __future__ import annotations

import asyncio
import socket
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from service.local.simulator import Simulator, SimulatorConfig
from service.providers.base import (
    OutcomeUnknown,
    ProviderUnavailable,
    RequestRejected,
    VideoGone,
    VideoRequest,
)
from service.providers.openai_videos import OpenAIVideos
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
        with pytest.raises(ProviderUnavailable, match="does not echo prompts"):
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


@pytest.mark.parametrize(
    ("model", "size", "seconds", "ok"),
    [
        ("sora-2", "720x1280", "4", True),
        ("sora-2", "1792x1024", "4", False),
        ("sora-2-pro", "1792x1024", "12", True),
        ("sora-2-2025-10-06", "1280x720", "8", True),
        ("sora-2", "720x1280", "10", False),
        ("veo-3.1-generate-preview", "1920x1080", "6", True),  # the gateway decides
    ],
)
def test_validation_knows_sora_limits_and_leaves_other_models_to_their_host(
    model: str, size: str, seconds: str, ok: bool
) -> None:
    provider = OpenAIVideos("sk-test", "http://127.0.0.1:9/v1")
    if ok:
        provider.validate(model, size, seconds)
    else:
        with pytest.raises(RequestRejected):
            provider.validate(model, size, seconds)
