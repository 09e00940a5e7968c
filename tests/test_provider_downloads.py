"""Every download from a provider goes through the guarded fetcher (issue 24, finding 1),
and gateways' answers are read as they really come (issue 25).

Before: Replicate's output URL was fetched with redirects followed and no address
check, so an output redirecting to a metadata path on 127.0.0.1 came back as "the
video", and any ``owner/name`` model could run. Now downloads keep to the provider's
delivery hosts (or its own API origin), public addresses only, every redirect checked;
Replicate runs only the models rows may ask for.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from service.core.request import RequestImage, VideoRequest
from service.local.replicate_server import ReplicateConfig, ReplicateServer
from service.local.simulator import Simulator, SimulatorConfig
from service.media.delivery import Delivery, DeliveryRefused
from service.providers.base import RequestRejected, VideoGone
from service.providers.openai_videos import OpenAIVideos
from service.providers.replicate_videos import ReplicateVideos
from service.runtime import open_runtime
from tests.conftest import eventually, make_settings
from tests.test_fetch import PUBLIC_IP, Internet
from tests.test_pipeline import finished, row_of, running
from tests.test_provider_conformance import reference

FAST = {"queue_seconds": 0.05, "generation_seconds": 0.2}


@asynccontextmanager
async def canary() -> AsyncIterator[tuple[str, list[str]]]:
    """A "metadata service" on loopback: it records every request that reaches it."""
    hits: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"iam-role-credentials", content_type="video/mp4")

    app = web.Application()
    app.router.add_get("/{tail:.*}", secret)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/computeMetadata/v1/instance/token", hits
    finally:
        await runner.cleanup()


def request(model: str = "google/veo-3.1", **kw: Any) -> VideoRequest:
    values: dict[str, Any] = dict(
        prompt="a hug", model=model, size="1280x720", seconds="4", idempotency_key="k"
    )
    values.update(kw)
    return VideoRequest(**values)


async def drain(provider: Any, job_id: str) -> bytes:
    body = b""
    async with provider.download(job_id) as chunks:
        async for chunk in chunks:
            body += chunk
    return body


async def test_a_replicate_output_redirecting_to_loopback_is_refused() -> None:
    async with canary() as (metadata, hits):
        config = ReplicateConfig(**FAST, output_redirect=metadata)
        async with ReplicateServer(config) as fake:
            provider = ReplicateVideos("r8_test", fake.base_url)
            job = await provider.submit(request())
            await eventually(lambda: provider.retrieve(job.id), lambda j: j.status == "completed")
            with pytest.raises(VideoGone) as refused:
                await drain(provider, job.id)
            await provider.aclose()
    said = str(refused.value)
    assert said.startswith("refused") and "127.0.0.1" in said, said
    assert hits == []  # the metadata service was never asked


async def test_delivery_keeps_to_the_providers_hosts_and_public_addresses() -> None:
    internet = Internet()
    internet.names["replicate.delivery"] = ["127.0.0.1"]  # a rebinding answer
    internet.names["cdn.replicate.delivery"] = ["10.0.0.7"]
    internet.names["evil.example"] = [PUBLIC_IP]
    guard = Delivery(
        ("replicate.delivery", ".replicate.delivery"),
        max_bytes=1000,
        timeout=2.0,
        resolver=internet.resolve,
        network=internet,
    )
    for url in (
        "https://replicate.delivery/x/output.mp4",
        "https://cdn.replicate.delivery/x/output.mp4",
        "https://evil.example/output.mp4",  # public, but not a delivery host
        "file:///etc/passwd",
    ):
        with pytest.raises(DeliveryRefused):
            async with guard.stream(url, "the output") as chunks:
                async for _ in chunks:
                    pass
    assert internet.connections == []  # refused before any connection
    assert "evil.example" not in internet.lookups  # refused before any lookup


async def test_a_gateways_content_redirect_to_loopback_is_refused_and_never_carries_the_key() -> (
    None
):
    """/content answered with a redirect (to the metadata service): the hop is checked
    like the first, refused, and the key never leaves for it."""
    async with canary() as (metadata, hits), Simulator(SimulatorConfig(**FAST)) as sim:

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(metadata)

        front = web.Application()
        front.router.add_get("/v1/videos/{id}/content", redirect)
        runner = web.AppRunner(front)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            provider = OpenAIVideos("sk-secret", f"http://127.0.0.1:{port}/v1")
            with pytest.raises(VideoGone) as refused:
                await drain(provider, "video_123")
            await provider.aclose()
        finally:
            await runner.cleanup()
        assert sim.created == []
    said = str(refused.value)
    assert said.startswith("refused") and "127.0.0.1" in said and hits == [], said


async def test_replicate_runs_only_the_models_rows_may_ask_for() -> None:
    """``validate`` refuses a model outside the allowlist before any call (it used to
    check only for a slash): Replicate runs any public model, whatever it costs."""
    async with ReplicateServer(ReplicateConfig(**FAST)) as fake:
        fake.config.models["someone/crypto-miner"] = "veo"
        provider = ReplicateVideos(
            "r8_test", fake.base_url, allowed_models=frozenset({"google/veo-3.1"})
        )
        with pytest.raises(RequestRejected) as refused:
            provider.validate("someone/crypto-miner", "1280x720", "4")
        provider.validate("google/veo-3.1", "1280x720", "4")
        provider.validate("google/veo-3.1:abc123", "1280x720", "4")  # a version of it
        await provider.aclose()
    assert "SORA_ALLOWED_MODELS" in str(refused.value) and fake.created == []


async def test_a_row_naming_a_model_the_operator_no_longer_allows_fails_before_any_call(
    db_url: str, tmp_path: Path
) -> None:
    """A row accepted while the operator allowed a model, served by a worker started
    since without it: refused before any call (the database's allowlist and the
    adapter's say the same)."""
    async with ReplicateServer(ReplicateConfig(**FAST)) as fake:
        fake.config.models["someone/crypto-miner"] = "veo"
        base = dict(
            provider="replicate",
            replicate_api_token="r8_test",
            replicate_base_url=fake.base_url,
            default_size="1280x720",
        )
        before = make_settings(
            db_url, tmp_path, **base, allowed_models="default,replicate:someone/crypto-miner"
        )
        async with open_runtime(before, apply_migrations=False) as runtime:
            row_id = await runtime.repo.insert_request("mine", model="someone/crypto-miner")
        after = make_settings(db_url, tmp_path, **base)
        async with open_runtime(after) as runtime, running(runtime.worker()):
            row = await finished(runtime, row_id, within=30)
    assert (row["status"], row["error_kind"], row["attempts"]) == ("failed", "invalid_request", 0)
    assert "someone/crypto-miner" in row["error"] and row["submit_key"] is None
    assert fake.created == []


def video(**fields: Any) -> Any:
    return openai.types.Video.construct(
        id="video_1", object="video", model="m", progress=0, created_at=0, **fields
    )


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"status": "NOT_START"}, "running"),
        ({"status": "THROTTLED"}, "running"),
        ({}, "running"),  # no status at all (new-api relaying xAI)
        ({"status": None}, "running"),
        ({"status": "done"}, "completed"),
        ({"status": "succeeded"}, "completed"),
        ({"status": "SUCCEEDED"}, "completed"),
        ({"status": "EXPIRED"}, "failed"),
        ({"status": "in_progress"}, "running"),
    ],
)
def test_gateway_statuses_are_read_as_they_come(fields: dict[str, Any], status: str) -> None:
    provider = OpenAIVideos("sk", "http://127.0.0.1:9/v1")
    job = provider._job(video(**fields))
    assert job.status == status
    if fields.get("status") == "EXPIRED":
        assert job.error_kind == "expired"


async def test_a_relays_inline_link_is_fetched_before_content(db_url: str, tmp_path: Path) -> None:
    """new-api relaying xAI: no status while queued, ``done`` with ``video.url`` when
    finished, and no /content at all: the row completes from the inline link, which is
    kept as its backup link."""
    config = SimulatorConfig(**FAST, profile="new-api-xai")
    settings = make_settings(db_url, tmp_path)
    async with open_runtime(
        settings, apply_migrations=False, stand_in_configs={"openai": config}
    ) as runtime:
        row_id = await runtime.repo.insert_request("a relay's inline link")
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]
    assert f"/files/{row['video_id']}.mp4" in row["openai_url"]


async def test_litellm_keys_per_model_mint_ids_the_worker_completes(
    db_url: str, tmp_path: Path
) -> None:
    """LiteLLM with a key per model mints ids with an empty model, which it then cannot
    route (litellm#33423): the worker names the model in the id it keeps, and the row
    completes."""
    config = SimulatorConfig(**FAST, profile="litellm-keyed")
    async with open_runtime(
        make_settings(db_url, tmp_path), apply_migrations=False, stand_in_configs={"openai": config}
    ) as runtime:
        row_id = await runtime.repo.insert_request("a key per model")
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)
        assert row["status"] == "completed", row["error"]
        kept = await row_of(runtime, row_id)
    assert "model_id:sora-2" in _decoded(kept["video_id"])


def _decoded(video_id: str) -> str:
    body = video_id.removeprefix("video_")
    return base64.b64decode(body + "=" * (-len(body) % 4)).decode()


async def test_veo_previews_are_refused_at_the_gemini_api_naming_the_ga_model(
    db_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        db_url,
        tmp_path,
        provider="google_veo",
        google_api_key="AIza-test",
        google_vertex_base_url="https://generativelanguage.googleapis.com",
        default_size="1280x720",
        allowed_models="default",
    )
    async with open_runtime(settings, apply_migrations=False) as runtime:
        row_id = await runtime.repo.insert_request(
            "a retired preview", model="veo-3.1-generate-preview"
        )
        async with running(runtime.worker()):
            row = await eventually(
                lambda: row_of(runtime, row_id), lambda r: r["status"] == "failed"
            )
    assert (row["error_kind"], row["attempts"], row["submit_key"]) == ("model_retired", 0, None)
    assert "2026-10-22" in row["error"] and "veo-3.1-generate-001" in row["error"]


def test_a_request_of_first_and_last_frames_names_each_field() -> None:
    """What a Kling prediction is sent: start_image and end_image, mode for resolution."""
    provider = ReplicateVideos("r8_test", "http://127.0.0.1:9")
    frames = (
        RequestImage("first_frame", reference("1280x720")),
        RequestImage("last_frame", reference("1280x720", (0, 0, 200))),
    )
    sent = provider._input(
        request("kwaivgi/kling-v3-video", seconds="5", size="1920x1080", images=frames)
    )
    assert set(sent) == {"prompt", "duration", "aspect_ratio", "mode", "start_image", "end_image"}
    assert sent["mode"] == "pro" and sent["duration"] == 5
    assert sent["start_image"].startswith("data:image/jpeg;base64,")
