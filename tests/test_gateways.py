"""End to end against gateways as they really are (``contracts/providers.md``).

The simulator plays a LiteLLM proxy or a new-api gateway (``simulator/profiles.py``):
the real daemon, the official SDK and a real PostgreSQL meet each host's quirks, and
the CLI is run as an operator runs it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from service.local.simulator import FailureRule, ProfileName, SimulatorConfig
from service.providers.ids import litellm_id, stable_id
from service.runtime import Runtime, open_runtime
from tests.conftest import FAST_SIMULATOR, eventually, make_settings, simulator_of
from tests.test_cli import CLI, env_for
from tests.test_pipeline import finished, row_of, running


@asynccontextmanager
async def gateway(
    db_url: str, tmp_path: Path, profile: ProfileName, **settings: Any
) -> AsyncIterator[Runtime]:
    config = SimulatorConfig(**FAST_SIMULATOR, profile=profile)  # type: ignore[arg-type]
    async with open_runtime(
        make_settings(db_url, tmp_path, **settings),
        apply_migrations=False,
        stand_in_configs={"openai": config},
    ) as runtime:
        yield runtime


async def cli(db_url: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env_for(db_url, tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_an_in_doubt_create_on_a_host_that_cannot_list_is_settled_by_a_person(
    db_url: str, tmp_path: Path
) -> None:
    """The create times out at a LiteLLM proxy (whose list fails): the row fails within a
    minute saying what a person needs, no second job is made, and `sora-worker adopt`
    with the job that person found gets the video archived while the worker runs."""
    with capture_logs() as logs:
        async with gateway(db_url, tmp_path, "litellm", provider_timeout=1.0) as runtime:
            await settled_by_hand(db_url, tmp_path, runtime, logs)


async def settled_by_hand(
    db_url: str, tmp_path: Path, runtime: Runtime, logs: list[dict[str, Any]]
) -> None:
    assert any(e["event"] == "provider.cannot_list" for e in logs)
    sim = simulator_of(runtime)
    assert sim is not None
    sim.config.failure_rules.append(FailureRule("lost answer", "slow_create", delay=3.0))
    prompt = "a lost answer at the gateway"
    row_id = await runtime.repo.insert_request(prompt)
    started = time.monotonic()
    async with running(runtime.worker()):
        row = await finished(runtime, row_id, within=60)
        assert time.monotonic() - started < 60
        assert (row["status"], row["error_kind"]) == ("failed", "in_doubt"), row["error"]
        error = row["error"]
        for needed in (
            repr(prompt),
            row["submitted_at"].isoformat(),
            str(row["submit_key"]),
            sim.base_url,
            f"sora-worker adopt {row_id} VIDEO_ID",
            # The upstream id a person finds behind the proxy only routes wrapped.
            f"sora-worker adopt {row_id} UPSTREAM_ID --litellm-model sora-2",
        ):
            assert needed in error, (needed, error)
        # LiteLLM's own text carries raw newlines: the row's error is one line.
        assert "\n" not in error and "You passed model= Pass model" in error
        # Nothing said "will retry" before the row failed in doubt: it was looked for.
        steps = [e for e in logs if str(e["event"]).startswith("video.")]  # the one row so far
        assert not any("will retry" in str(e.get("reason", "")) for e in steps), steps
        assert [e["event"] for e in steps if e["event"] in ("video.in_doubt", "video.failed")] == [
            "video.in_doubt",
            "video.failed",
        ]
        assert len(sim.created) == 1  # never a second job

        # What the operator sees.
        code, shown, _ = await cli(db_url, tmp_path, "show", str(row_id))
        assert code == 0 and json.loads(shown)["error_kind"] == "in_doubt"
        code, listed, _ = await cli(db_url, tmp_path, "list", "--status", "failed")
        assert code == 0 and "[in_doubt]" in listed

        # The person found the job upstream (its own id, behind the gateway's model
        # sora-2): adopt it, wrapped as the gateway mints ids, while the worker runs.
        upstream = sim.store.created[0].video_id
        code, _, err = await cli(
            db_url, tmp_path, "adopt", str(row_id), upstream, "--litellm-model", "sora-2"
        )
        assert code == 0, err
        row = await finished(runtime, row_id, within=30)
        assert row["status"] == "completed", row["error"]
        assert stable_id(row["video_id"]) == upstream and row["error_kind"] is None
        found = row["video_id"]
        assert row["video_url"] and row["video_sha256"]
        assert len(sim.created) == 1

        # A job belongs to one row; a row that holds one adopts no other.
        other = await runtime.repo.insert_request("another row")
        await finished(runtime, other)
        code, _, err = await cli(db_url, tmp_path, "adopt", str(row_id), found)
        assert code == 1 and "only a row that holds no job" in err


async def test_adopting_a_job_already_held_by_another_row_is_refused(
    db_url: str, tmp_path: Path
) -> None:
    async with gateway(db_url, tmp_path, "litellm") as runtime:
        done = await runtime.repo.insert_request("the first owner")
        async with running(runtime.worker()):
            first = await finished(runtime, done)
        waiting = await runtime.repo.insert_request("a second row")
        # The same job, spelt as the gateway's list would spell it (no deployment part).
        respelt = litellm_id(stable_id(first["video_id"]), "another-model-id")
        code, _, err = await cli(db_url, tmp_path, "adopt", str(waiting), respelt)
    assert code == 1 and f"already belongs to row {done}" in err


async def test_an_adopted_id_the_gateway_did_not_mint_fails_at_once(
    db_url: str, tmp_path: Path
) -> None:
    async with gateway(db_url, tmp_path, "litellm") as runtime:
        row_id = await runtime.repo.insert_request("made at OpenAI, adopted at a gateway")
        foreign = "video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5"
        await runtime.operator.adopt(row_id, foreign, "openai")
        started = time.monotonic()
        async with running(runtime.worker()):
            row = await finished(runtime, row_id, within=30)
        assert time.monotonic() - started < 30
    assert (row["status"], row["error_kind"]) == ("failed", "invalid_request")
    assert "did not mint" in row["error"] and foreign in row["error"]
    assert simulator_of(runtime).created == []


async def test_a_new_api_status_outside_the_enum_is_waited_out_and_said_once(
    db_url: str, tmp_path: Path
) -> None:
    async with gateway(db_url, tmp_path, "new-api") as runtime:
        simulator_of(runtime).config.queue_seconds = 0.6  # several polls see NOT_START
        row_id = await runtime.repo.insert_request("a gateway that invents statuses")
        with capture_logs() as logs:
            async with running(runtime.worker()):
                row = await finished(runtime, row_id)
    assert row["status"] == "completed", row["error"]
    said = [e for e in logs if e["event"] == "provider.unknown_status"]
    assert [(e["video_id"], e["status"]) for e in said] == [(row["video_id"], "NOT_START")]


async def test_a_retired_model_at_openai_fails_at_once_naming_what_to_use(
    db_url: str, tmp_path: Path
) -> None:
    """OpenAI's own API lost sora-2 on 2026-09-24; the row fails before any call."""
    settings = make_settings(
        db_url, tmp_path, openai_api_key="sk-test", openai_base_url="https://api.openai.com/v1"
    )
    async with open_runtime(settings, apply_migrations=False) as runtime:
        row_id = await runtime.repo.insert_request("a retired model", model="sora-2")
        async with running(runtime.worker()):
            row = await eventually(
                lambda: row_of(runtime, row_id), lambda r: r["status"] == "failed"
            )
    assert (row["error_kind"], row["attempts"]) == ("model_retired", 0)
    assert "2026-09-24" in row["error"] and "SORA_MODEL" in row["error"]
    assert row["submit_key"] is None  # nothing was ever sent
