"""The operator's verbs on one row, one function each: ``adopt``, ``retry``, ``cancel``,
``rearchive``. The CLI (``service.commands.verbs``) and the dashboard's buttons
(``service.dashboard``) both call these, so a button does exactly what the command does.

The SQL and its guards live in ``service.database.operator``; here is what a verb does
around its statement (cancel waits out a worker's step and deletes the provider's job;
adopt wraps a LiteLLM upstream id) and the ``Outcome`` it tells: a line for a person
and the JSON the CLI prints. A verb that changed nothing is not an error: ``ok`` is
False and the line says why.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from service.config import Settings
from service.database.errors import Conflict, Refused
from service.database.operator import Operator
from service.providers.base import Cancellable, ProviderError
from service.providers.ids import litellm_id
from service.providers.lookup import UnknownProvider
from service.runtime import open_providers

log = structlog.get_logger("service.operations")

CANCEL_PATIENCE = 30.0
"""Seconds ``cancel`` waits for a worker to finish the step it is in on the row."""


@dataclass(frozen=True)
class Outcome:
    """What a verb did: ``ok`` if it did what was asked, ``line`` in words, ``payload``
    as the CLI's ``--json`` prints it."""

    ok: bool
    line: str
    payload: dict[str, Any]


async def adopt(
    op: Operator,
    row_id: UUID,
    video_id: str,
    provider: str,
    *,
    litellm_model: str | None = None,
) -> Outcome:
    """Attach the job a person found (after an in-doubt failure) to its row.
    ``litellm_model``: ``video_id`` is an upstream id behind a LiteLLM proxy, wrapped
    the way the proxy mints ids for that model."""
    if litellm_model:
        video_id = litellm_id(video_id, litellm_model)
    try:
        await op.adopt(row_id, video_id, provider)
    except Refused as err:
        return Outcome(False, f"sora-worker: {err}", {"adopted": False, "reason": str(err)})
    except Conflict:
        holder = await op.holder_of(video_id)
        why = f"job {video_id} already belongs to row {holder}"
        return Outcome(False, f"sora-worker: {why}", {"adopted": False, "reason": why})
    log.info("video.adopted", row_id=str(row_id), video_id=video_id)
    line = f"row {row_id} adopted {video_id}; a worker will poll and archive it"
    return Outcome(True, line, {"adopted": True, "id": str(row_id), "video_id": video_id})


async def retry(
    op: Operator,
    row_id: UUID | None,
    *,
    failed_since: datetime | None = None,
    abandon: bool = False,
) -> Outcome:
    """Re-queue one failed row (or, with ``row_id`` None, every failed row changed since
    ``failed_since``); with ``abandon``, a row whose job the provider may still hold."""
    ids = await op.retry(row_id, failed_since=failed_since, abandon=abandon)
    if not ids and row_id is not None:
        why = (await op.why_not(row_id, "retry")).reason
        return Outcome(False, why, {"retried": [], "reason": why})
    listed = [str(i) for i in ids]
    return Outcome(True, f"re-queued {len(ids)} row(s) " + " ".join(listed), {"retried": listed})


async def cancel(
    op: Operator, settings: Settings, row_id: UUID, *, patience: float = CANCEL_PATIENCE
) -> Outcome:
    """Fail the row (waiting up to ``patience`` s for a worker's current step on it),
    then delete its job at the provider where the provider can."""
    deadline = time.monotonic() + patience
    while (done := await op.cancel(row_id)) is None:
        why = await op.why_not(row_id, "cancel")
        if not why.busy or time.monotonic() > deadline:
            return Outcome(False, why.reason, {"cancelled": False, "reason": why.reason})
        await asyncio.sleep(0.25)  # a worker is mid-step: its lease ends with the step
    payload: dict[str, Any] = {"cancelled": True, "id": str(row_id), "video_id": done.video_id}
    line = f"row {row_id} failed: cancelled by operator"
    if done.video_id is not None:
        payload["provider"] = await _cancel_at_provider(settings, done.video_id, done.provider)
        line += f"; provider job {done.video_id}: {payload['provider']}"
    return Outcome(True, line, payload)


async def _cancel_at_provider(settings: Settings, video_id: str, name: str | None) -> str:
    async with open_providers(settings) as providers:
        try:
            provider = providers.get(name)
        except UnknownProvider as err:
            return f"not cancelled ({err})"
        if not isinstance(provider, Cancellable):
            return f"not cancelled ({provider.name} cannot cancel jobs)"
        try:
            await provider.cancel(video_id)
        except ProviderError as err:
            log.warning("cancel.provider_failed", video_id=video_id, error=str(err))
            return f"not deleted: {err}"
    return "deleted"


async def rearchive(op: Operator, row_id: UUID) -> Outcome:
    """Send a finished row back to archiving while the provider's copy lasts."""
    if not await op.rearchive(row_id):
        why = (await op.why_not(row_id, "rearchive")).reason
        return Outcome(False, why, {"rearchiving": False, "reason": why})
    line = f"row {row_id} is archiving again; a worker copies it from the provider"
    return Outcome(True, line, {"rearchiving": True, "id": str(row_id)})
