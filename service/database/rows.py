"""How a ``videos`` row maps to the machine's ``Job``: the columns read, the stages as
SQL literals. Shared by the worker's statements and the operator's."""

from __future__ import annotations

import asyncpg

from service.core.job import ACTIVE_STAGES, Job, RowId, Stage, SubmitKey

ACTIVE = [stage.value for stage in ACTIVE_STAGES]
WAKEABLE = [Stage.GENERATING.value, Stage.ARCHIVING.value]
"""Stages that wait on a provider's job, which a webhook may announce."""
ACTIVE_SQL = "(" + ", ".join(f"'{stage}'" for stage in ACTIVE) + ")"
"""The active stages as a literal: the planner proves a partial index's predicate from
a literal list, never from a parameter (a generic plan would scan the table)."""

ROW_COLUMNS = (
    "id",
    "stage",
    "attempts",
    "prompt",
    "image1_url",
    "image2_url",
    "model",
    "size",
    "seconds",
    "provider",
    "video_id",
    "submit_key",
    "submitted_at",
    "progress",
    "progress_at",
    "openai_expires_at",
    "error_kind",
)
JOB_COLUMNS = ", ".join(ROW_COLUMNS) + ", now() as as_of"
"""What the machine reads of a row, and the database's clock as it was read."""

# One statement claims fresh rows and takes back rows whose owner died, so a crash
# needs no rescue job: a lapsed lease simply makes the row claimable again.


def job_from_record(record: asyncpg.Record) -> Job:
    submit_key = record["submit_key"]
    return Job(
        id=RowId(record["id"]),
        stage=Stage(record["stage"]),
        as_of=record["as_of"],
        attempts=record["attempts"],
        prompt=record["prompt"],
        image1_url=record["image1_url"],
        image2_url=record["image2_url"],
        model=record["model"],
        size=record["size"],
        seconds=record["seconds"],
        provider=record["provider"],
        video_id=record["video_id"],
        submit_key=None if submit_key is None else SubmitKey(submit_key),
        submitted_at=record["submitted_at"],
        progress=record["progress"],
        progress_at=record["progress_at"],
        expires_at=record["openai_expires_at"],
        error_kind=record["error_kind"],
    )
