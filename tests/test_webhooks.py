"""Webhooks wake rows and nothing else: verified, de-duplicated, never trusted for state.

The deliveries come from the Replicate fake (signed as Replicate signs them) or are
signed here as an OpenAI-shaped host would; the receiver runs as the worker's HTTP
server will mount it, on a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import httpx
from aiohttp import web
from standardwebhooks import Webhook

from service.core.events import Progressed
from service.core.job import Job, Policy, RowId, Stage
from service.core.machine import apply
from service.local.replicate_server import ReplicateServer
from service.providers.lookup import Providers
from service.providers.replicate_videos import ReplicateVideos
from service.runtime import Runtime
from service.wakeups.wakeup import Wakeup
from service.web.serving import serve
from service.web.webhooks import MAX_BODY, WebhookReceiver, signed_headers
from service.worker.webhook_health import WebhookHealth
from tests.conftest import eventually
from tests.test_cli import CLI, env_for
from tests.test_pipeline import finished, running
from tests.test_provider_conformance import provider_runtime

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
OTHER_SECRET = "whsec_" + "b3RoZXItb3RoZXItb3RoZXItb3RoZXI="


@asynccontextmanager
async def receiving(receiver: WebhookReceiver) -> AsyncIterator[str]:
    """The receiver's routes on a real socket, as the worker's HTTP server mounts them."""
    app = web.Application(client_max_size=MAX_BODY)
    app.add_routes(receiver.routes())
    runner, port = await serve(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_replicate_webhook_wakes_the_row_long_before_its_next_poll(
    db_url: str, tmp_path: Path
) -> None:
    # Polls an hour apart: only the webhook can make the row finish within the test.
    async with provider_runtime(db_url, tmp_path, "replicate", poll_interval=3600.0) as runtime:
        fake = runtime.stand_in
        assert isinstance(fake, ReplicateServer)
        # Long enough that the job is recorded on the row before its "completed" webhook
        # is sent: one sent before that finds no row to wake (the first poll, at the
        # poll floor, is what catches such a job; here an hour away).
        fake.config.generation_seconds = 2.0
        wakeup = Wakeup()
        assert runtime.webhook_health is not None
        receiver = WebhookReceiver(
            {"replicate": fake.config.webhook_secret}, runtime.repo, wakeup, runtime.webhook_health
        )
        async with receiving(receiver) as base:
            provider = ReplicateVideos(
                "r8_test", fake.base_url, webhook_url=f"{base}/webhooks/replicate"
            )
            providers = Providers(default="replicate")
            providers.add(provider, provider.base_url)
            with_webhooks = dataclasses.replace(runtime, providers=providers)
            row_id = await runtime.repo.insert_request("a hug announced by webhook")
            async with running(with_webhooks.worker(wakeup=wakeup)):
                row = await finished(runtime, row_id)
            await provider.aclose()

    assert row["status"] == "completed", row["error"]
    completed = [d for d in fake.deliveries if d.event == "completed"]
    assert [(d.prediction_id, d.status) for d in completed] == [(row["video_id"], 200)]
    assert runtime.webhook_health.working("replicate")
    assert not runtime.webhook_health.working("openai")


async def test_the_receiver_asks_replicate_for_its_secret(db_url: str, tmp_path: Path) -> None:
    async with provider_runtime(
        db_url, tmp_path, "replicate", webhook_url="https://worker.example"
    ) as runtime:
        fake = runtime.stand_in
        assert isinstance(fake, ReplicateServer)
        replicate = runtime.providers.get("replicate")
        assert isinstance(replicate, ReplicateVideos)
        assert replicate.webhook_url == "https://worker.example/webhooks/replicate"
        receiver = await runtime.webhook_receiver(Wakeup())
        async with receiving(receiver) as base, httpx.AsyncClient() as http:
            body = json.dumps({"id": "unknown-prediction", "status": "succeeded"})
            signed = signed_headers(fake.config.webhook_secret, "msg_1", body)
            answer = await http.post(f"{base}/webhooks/replicate", content=body, headers=signed)
    assert answer.status_code == 200


# ---------------------------------------------------------------- what a delivery may change


async def generating_row(runtime: Runtime, provider: str, video_id: str) -> RowId:
    """A row whose job runs at ``provider`` and whose next poll is an hour away."""
    row_id = await runtime.repo.insert_request(f"a row waiting on {video_id}")
    await runtime.pool.execute(
        """update videos set stage = 'generating', status = 'processing', provider = $2,
           video_id = $3, model = 'm', size = '720x1280', seconds = '4',
           submitted_at = now(), next_attempt_at = now() + interval '1 hour' where id = $1""",
        row_id,
        provider,
        video_id,
    )
    return row_id


async def due_in(runtime: Runtime, row_id: UUID) -> timedelta:
    value: timedelta = await runtime.pool.fetchval(
        "select next_attempt_at - now() from videos where id = $1", row_id
    )
    return value


async def test_forged_unsigned_stale_and_replayed_deliveries_change_nothing(
    runtime: Runtime,
) -> None:
    row_id = await generating_row(runtime, "replicate", "pred-1")
    wakeup = Wakeup()
    health = WebhookHealth(timedelta(minutes=1))
    receiver = WebhookReceiver({"replicate": SECRET}, runtime.repo, wakeup, health)
    body = json.dumps({"id": "pred-1", "status": "succeeded"})
    old = datetime.now(UTC) - timedelta(minutes=10)
    forgeries = {
        "unsigned": {"content-type": "application/json"},
        "wrong secret": signed_headers(OTHER_SECRET, "msg_a", body),
        "stale": {
            "webhook-id": "msg_b",
            "webhook-timestamp": str(int(old.timestamp())),
            "webhook-signature": Webhook(SECRET).sign("msg_b", old, body),
        },
        "garbled": {"webhook-id": "x", "webhook-timestamp": "soon", "webhook-signature": "v1"},
    }
    async with receiving(receiver) as base, httpx.AsyncClient() as http:
        url = f"{base}/webhooks/replicate"
        for name, headers in forgeries.items():
            answer = await http.post(url, content=body, headers=headers)
            assert answer.status_code == 401, name
        tampered = body.replace("succeeded", "failed")
        answer = await http.post(url, content=tampered, headers=signed_headers(SECRET, "m", body))
        assert answer.status_code == 401
        assert await due_in(runtime, row_id) > timedelta(minutes=50)  # nothing changed
        assert not health.working("replicate")

        genuine = signed_headers(SECRET, "msg_genuine", body)
        assert (await http.post(url, content=body, headers=genuine)).status_code == 200
        assert await due_in(runtime, row_id) <= timedelta(0)  # woken: due now
        assert await wakeup.wait(0) == frozenset({"webhook"})
        assert health.working("replicate")

        # The same delivery again (a replay, or the sender's retry) wakes nothing.
        await runtime.pool.execute(
            "update videos set next_attempt_at = now() + interval '1 hour' where id = $1", row_id
        )
        answer = await http.post(url, content=body, headers=genuine)
        assert answer.status_code == 200 and answer.json()["duplicate"] is True
        assert await due_in(runtime, row_id) > timedelta(minutes=50)

        # A provider without a secret has no endpoint at all.
        answer = await http.post(f"{base}/webhooks/openai", content=body, headers=genuine)
        assert answer.status_code == 404

    row = await runtime.operator.fetch_row(row_id)
    assert row is not None and (row["stage"], row["status"]) == ("generating", "processing")


async def test_a_signed_body_that_arrives_in_several_writes_is_read_whole(
    runtime: Runtime,
) -> None:
    """A sender (or a proxy) may write a body in pieces; Replicate's carry the whole
    prediction, photo included. The signature covers all of it, so all of it is read."""
    row_id = await generating_row(runtime, "replicate", "pred-big")
    health = WebhookHealth(timedelta(minutes=1))
    receiver = WebhookReceiver({"replicate": SECRET}, runtime.repo, Wakeup(), health)
    photo = "data:image/jpeg;base64," + "A" * (3 * 1024 * 1024)  # as Replicate echoes input
    body = json.dumps({"id": "pred-big", "status": "succeeded", "input": {"image": photo}})
    head = "".join(f"{k}: {v}\r\n" for k, v in signed_headers(SECRET, "msg_big", body).items())
    raw = body.encode()
    async with receiving(receiver) as base:
        port = int(base.rpartition(":")[2])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"POST /webhooks/replicate HTTP/1.1\r\nHost: worker\r\n{head}"
                f"Content-Length: {len(raw)}\r\n\r\n".encode()
                + raw[: len(raw) // 2]
            )
            await writer.drain()
            # Half the body is there: a receiver that judged it now would answer 401.
            with contextlib.suppress(TimeoutError):
                early = await asyncio.wait_for(reader.readline(), 0.5)
                raise AssertionError(f"answered before the body was whole: {early!r}")
            writer.write(raw[len(raw) // 2 :])
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()
    assert status.startswith(b"HTTP/1.1 200"), status
    assert await due_in(runtime, row_id) <= timedelta(0)  # the row was woken


async def test_openai_video_events_wake_their_row_and_other_events_are_ignored(
    runtime: Runtime,
) -> None:
    row_id = await generating_row(runtime, "openai", "video_123")
    health = WebhookHealth(timedelta(minutes=1))
    receiver = WebhookReceiver({"openai": SECRET}, runtime.repo, Wakeup(), health)
    other = json.dumps({"object": "event", "type": "batch.completed", "data": {"id": "video_123"}})
    event = json.dumps(
        {
            "object": "event",
            "id": "evt_1",
            "type": "video.completed",
            "created_at": 1,
            "data": {"id": "video_123"},
        }
    )
    async with receiving(receiver) as base, httpx.AsyncClient() as http:
        url = f"{base}/webhooks/openai"
        answer = await http.post(url, content=other, headers=signed_headers(SECRET, "e0", other))
        assert answer.status_code == 200
        assert await due_in(runtime, row_id) > timedelta(minutes=50)
        answer = await http.post(url, content=event, headers=signed_headers(SECRET, "e1", event))
        assert answer.status_code == 200
        assert await eventually(lambda: due_in(runtime, row_id), lambda d: d <= timedelta(0))


def test_a_provider_whose_webhooks_arrive_is_polled_less_often() -> None:
    now = [0.0]
    health = WebhookHealth(timedelta(minutes=2), trust_for=timedelta(hours=1), clock=lambda: now[0])
    assert health.poll_interval("replicate") is None  # not seen yet: the usual interval
    health.seen("replicate")
    assert health.poll_interval("replicate") == timedelta(minutes=2)
    now[0] += 3601
    assert health.poll_interval("replicate") is None  # quiet too long: poll as usual again

    second = timedelta(seconds=1)
    policy = Policy(poll_interval=5 * second, max_attempts=3, retry_base=second, retry_cap=second)
    job = Job(
        id=RowId(UUID(int=1)),
        stage=Stage.GENERATING,
        as_of=datetime.now(UTC),
        attempts=0,
        video_id="pred-1",
        submitted_at=datetime.now(UTC),
    )
    stretched = apply(
        job, Progressed(10, "processing", timedelta(minutes=2)), policy=policy, jitter=0
    )
    usual = apply(job, Progressed(10, "processing"), policy=policy, jitter=0)
    assert (stretched.delay, usual.delay) == (timedelta(minutes=2), timedelta(seconds=5))


async def test_a_running_worker_takes_webhooks_on_its_http_server(
    db_url: str, tmp_path: Path
) -> None:
    """`sora-worker run` mounts the receiver beside /metrics: a signed event wakes its
    row there, and a forged one is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = env_for(db_url, tmp_path, SORA_HTTP_PORT=str(port), SORA_OPENAI_WEBHOOK_SECRET=SECRET)
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    event = json.dumps({"object": "event", "id": "evt_9", "type": "video.completed",
                        "created_at": 1, "data": {"id": "video_unknown"}})  # fmt: skip
    url = f"http://127.0.0.1:{port}/webhooks/openai"
    try:
        async with httpx.AsyncClient() as http:

            async def ready() -> int:
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code
                except httpx.TransportError:
                    return 0

            await eventually(ready, lambda status: status == 200, within=60)
            forged = signed_headers(OTHER_SECRET, "e9", event)
            assert (await http.post(url, content=event, headers=forged)).status_code == 401
            genuine = signed_headers(SECRET, "e9", event)
            assert (await http.post(url, content=event, headers=genuine)).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-2000:]
