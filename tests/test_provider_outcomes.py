"""What each non-OpenAI provider's own outcomes do to a row: safety filters, and creates
whose answer was lost (reconciled by Replicate's list; settled by hand for Veo)."""

from __future__ import annotations

import importlib.metadata
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from pydantic.v1 import ValidationError
from replicate.client import Client
from replicate.exceptions import ReplicateError

from service.core.request import VideoRequest
from service.local.replicate_server import ReplicateConfig, ReplicateServer
from service.local.veo_server import VeoServer
from service.providers.replicate_videos import ReplicateVideos
from service.runtime import Runtime
from tests.test_pipeline import finished, running
from tests.test_provider_conformance import provider_runtime


async def leave_in_doubt(runtime: Runtime, row_id: UUID, provider: str, model: str) -> str:
    """What a worker killed mid-create leaves: intent recorded, outcome unknown."""
    key: UUID = await runtime.pool.fetchval(
        """update videos set stage = 'submitting', status = 'processing', model = $3,
           size = '720x1280', seconds = '4', provider = $2, submit_key = gen_random_uuid(),
           submitted_at = now() - interval '1 second', locked_by = 'dead-worker',
           locked_until = now() - interval '1 second' where id = $1 returning submit_key""",
        row_id,
        provider,
        model,
    )
    return str(key)


async def test_a_safety_filtered_veo_video_fails_once_and_is_never_retried(
    db_url: str, tmp_path: Path
) -> None:
    async with provider_runtime(db_url, tmp_path, "google_veo") as runtime:
        fake = runtime.stand_in
        assert isinstance(fake, VeoServer)
        row_id = await runtime.repo.insert_request("two friends hug [rai-filtered]")
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)

        assert (row["status"], row["stage"]) == ("failed", "failed")
        assert "safety filter" in row["error"] and "58061214" in row["error"]
        assert row["video_url"] is None
        assert len(fake.created) == 1  # one create, never a second try
        job = await runtime.providers.get(None).retrieve(row["video_id"])
        assert (job.status, job.error_kind) == ("failed", "safety_filtered")


async def test_a_flagged_replicate_prediction_fails_as_safety_filtered(
    db_url: str, tmp_path: Path
) -> None:
    async with provider_runtime(db_url, tmp_path, "replicate") as runtime:
        fake = runtime.stand_in
        assert isinstance(fake, ReplicateServer)
        row_id = await runtime.repo.insert_request("a hug [flagged]")
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)

        assert (row["status"], row["stage"]) == ("failed", "failed")
        assert "E005" in row["error"]
        assert len(fake.created) == 1
        job = await runtime.providers.get(None).retrieve(row["video_id"])
        assert job.error_kind == "safety_filtered"


async def test_a_veo_create_in_doubt_fails_with_what_settles_it_and_is_never_resent(
    db_url: str, tmp_path: Path
) -> None:
    async with provider_runtime(db_url, tmp_path, "google_veo") as runtime:
        fake = runtime.stand_in
        assert isinstance(fake, VeoServer)
        row_id = await runtime.repo.insert_request("a hug that may have been paid for")
        key = await leave_in_doubt(runtime, row_id, "google_veo", "veo-3.1-generate-001")
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)

        assert (row["status"], row["stage"]) == ("failed", "failed")
        assert row["error_kind"] == "in_doubt"
        assert key in row["error"] and "sora-worker adopt" in row["error"]
        assert "veo-3.1-generate-001" in row["error"] and "720x1280" in row["error"]
        assert fake.created == []


async def test_a_replicate_create_in_doubt_is_found_in_the_list_and_adopted(
    db_url: str, tmp_path: Path
) -> None:
    async with provider_runtime(db_url, tmp_path, "replicate") as runtime:
        fake = runtime.stand_in
        assert isinstance(fake, ReplicateServer)
        prompt = "a hug whose answer was lost"
        row_id = await runtime.repo.insert_request(prompt)
        await leave_in_doubt(runtime, row_id, "replicate", "google/veo-3.1")
        # The create that reached Replicate before the worker died.
        transport = httpx.AsyncHTTPTransport()  # the SDK's Client has no close of its own
        client = Client(api_token="r8_test", base_url=fake.base_url, transport=transport)
        lost = await client.predictions.async_create(
            model="google/veo-3.1",
            input={"prompt": prompt, "duration": 4, "aspect_ratio": "9:16", "resolution": "720p"},
        )
        await transport.aclose()
        async with running(runtime.worker()):
            row = await finished(runtime, row_id)

        assert row["status"] == "completed", row["error"]
        assert row["video_id"] == lost.id
        assert fake.created == [lost.id]  # adopted, not paid for twice


async def test_a_replicate_prediction_carries_its_deadline() -> None:
    """Cancel-After reaches Replicate: a job still queued at its deadline is aborted, and
    one running at it is canceled; both end failed with a reason, as does one that runs
    past Replicate's own time limit."""
    clock = ManualClock()
    async with ReplicateServer(ReplicateConfig(queue_seconds=60.0, clock=clock)) as fake:
        provider = ReplicateVideos("r8_test", fake.base_url, cancel_after=timedelta(seconds=30))
        queued = await provider.submit(request("a hug in a long queue"))
        clock.now += 31
        aborted = await provider.retrieve(queued.id)

        fake.config.queue_seconds, fake.config.generation_seconds = 1.0, 600.0
        running_job = await provider.submit(request("a hug that takes too long"))
        clock.now += 31
        canceled = await provider.retrieve(running_job.id)

        # Replicate's own limit applies too (30 minutes for API predictions).
        fake.config.prediction_timeout = 20.0
        no_deadline = ReplicateVideos("r8_test", fake.base_url)
        slow = await no_deadline.submit(request("a hug that never ends"))
        clock.now += 22
        timed_out = await no_deadline.retrieve(slow.id)
        await provider.aclose()
        await no_deadline.aclose()

    assert (aborted.status, aborted.raw_status) == ("failed", "aborted")
    assert (canceled.status, canceled.raw_status) == ("failed", "canceled")
    assert "deadline" in (aborted.error or "") and "deadline" in (canceled.error or "")
    assert (timed_out.status, timed_out.error_kind) == ("failed", "provider_error")
    assert "timed out" in (timed_out.error or "")


async def test_what_the_replicate_adapter_does_around_the_sdk_is_still_needed() -> None:
    """Two facts of replicate 1.0.7 (constraints.txt) that ReplicateVideos works around
    with public means; an upgrade that changes either fails here, saying which. Its
    Client has no close, so it is given a transport that can be closed; its Prediction
    model rejects Replicate's "aborted", so such predictions are read as plain JSON."""
    version = importlib.metadata.version("replicate")
    sent: list[str] = []

    class Recording(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.url.path)
            return await super().handle_async_request(request)

    clock = ManualClock()
    async with ReplicateServer(ReplicateConfig(queue_seconds=60.0, clock=clock)) as fake:
        transport = Recording()
        client = Client(
            api_token="r8_test",
            base_url=fake.base_url,
            headers={"Cancel-After": "30s"},
            transport=transport,
        )
        assert not hasattr(client, "aclose") and not hasattr(client, "close"), (
            f"replicate {version}'s Client can close itself now: ReplicateVideos.aclose "
            "may use that instead of closing the transport it gave it"
        )
        made = await client.predictions.async_create(
            model="google/veo-3.1", input={"prompt": "a hug in a long queue", "duration": 4}
        )
        clock.now += 31  # past Cancel-After, still queued: aborted
        try:
            await client.predictions.async_get(made.id)
        except ValidationError:
            pass
        else:
            pytest.fail(
                f"replicate {version}'s Prediction accepts status 'aborted' now "
                "(replicate-python#449): ReplicateVideos._read's plain JSON read may go"
            )
        finally:
            await transport.aclose()
    assert sent == ["/v1/models/google/veo-3.1/predictions", f"/v1/predictions/{made.id}"], (
        f"replicate {version}'s Client no longer sends through Client(transport=...): "
        "ReplicateVideos.aclose would leave the SDK's connections open"
    )


@pytest.mark.parametrize(
    ("model", "inputs", "field"),
    [
        ("google/veo-3.1", {"prompt": " "}, "prompt"),
        ("google/veo-3.1", {"prompt": "a hug", "duration": 5}, "duration"),
        ("openai/sora-2", {"prompt": "a hug", "aspect_ratio": "16:9"}, "aspect_ratio"),
        ("openai/sora-2", {"prompt": "a hug", "input_reference": "data:,x"}, "input_reference"),
    ],
)
async def test_the_replicate_stand_in_refuses_inputs_as_replicate_does(
    model: str, inputs: dict[str, Any], field: str
) -> None:
    """A 422 in problem details naming the field, which the SDK reads into its error."""
    async with ReplicateServer() as fake:
        transport = httpx.AsyncHTTPTransport()
        client = Client(api_token="r8_test", base_url=fake.base_url, transport=transport)
        try:
            with pytest.raises(ReplicateError) as refused:
                await client.predictions.async_create(model=model, input=inputs)
        finally:
            await transport.aclose()
        assert fake.created == []
    assert refused.value.status == 422
    assert refused.value.title == "Input validation failed"
    assert (refused.value.detail or "").startswith(f"- input.{field}: ")


class ManualClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def request(prompt: str) -> VideoRequest:
    return VideoRequest(prompt, "google/veo-3.1", "1280x720", "4", str(uuid.uuid4()))


def test_settings_choose_the_provider_and_its_default_model() -> None:
    from pydantic import ValidationError

    from service.config import GenerationSettings, Settings
    from tests.conftest import grouped

    def generation(**values: str) -> GenerationSettings:
        return Settings(**grouped(**values)).generation

    assert generation(provider="veo").provider == "google_veo"  # the demo's short name
    assert generation(provider="google_veo").default_model == "veo-3.1-generate-001"
    assert generation(provider="replicate").default_model == "google/veo-3.1"
    assert generation(provider="openai").default_model == "sora-2"
    assert generation(provider="replicate", model="openai/sora-2").default_model == "openai/sora-2"
    try:
        generation(provider="vertex")
    except ValidationError as err:
        assert "google_veo" in str(err)
    else:
        raise AssertionError("an unknown provider must be refused")
