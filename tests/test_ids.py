"""Provider ids compared as hosts mean them (a LiteLLM proxy spells one job two ways)."""

from __future__ import annotations

import base64

import asyncpg
import pytest

from service.providers.ids import is_litellm_id, litellm_id, stable_id


def test_both_spellings_of_a_litellm_job_have_one_stable_form() -> None:
    created = litellm_id("video_abc123", "model-1", deployment_id="dep-9")
    listed = litellm_id("video_abc123", "model-1")
    assert created != listed
    assert stable_id(created) == stable_id(listed) == "video_abc123"
    assert is_litellm_id(created) and is_litellm_id(listed)


def test_padding_stripped_ids_still_decode() -> None:
    created = litellm_id("video_x", "m", deployment_id="d").rstrip("=")
    assert stable_id(created) == "video_x"


@pytest.mark.parametrize(
    "plain",
    [
        "video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5",
        "task_1",
        "video_" + base64.b64encode(b"not litellm;video_id:x").decode(),
        "video_!!",
        "",
    ],
)
def test_other_ids_are_their_own_stable_form(plain: str) -> None:
    assert stable_id(plain) == plain and not is_litellm_id(plain)


async def test_the_database_computes_the_same_stable_form(conn: asyncpg.Connection) -> None:
    ids = [
        litellm_id("video_abc123", "model-1", deployment_id="dep-9"),
        litellm_id("video_abc123", "model-1"),
        litellm_id("video_x", "m", deployment_id="d").rstrip("="),
        litellm_id("video_y", "m").replace("+", "-").replace("/", "_"),
        "video_68d7512d07848190b3e45da0ecbebcde004da08e1e0678d5",
        "video_" + base64.b64encode(b"not litellm;video_id:x").decode(),
        "video_" + base64.b64encode(b"litellm:\xff\xfe;video_id:z").decode(),
        "video_!!",
        "task_1",
        "a",
    ]
    in_sql = await conn.fetch(
        "select id, public.video_stable_id(id) as s from unnest($1::text[]) id", ids
    )
    assert {r["id"]: r["s"] for r in in_sql} == {i: stable_id(i) for i in ids}
