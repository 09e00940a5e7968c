"""The video-generation port: what the worker needs from any generator.

OpenAI retired Sora 2; its API shape lives on at gateways, and Veo and Replicate speak
their own. So the daemon talks to this Protocol, never to an SDK, and each adapter
translates its provider's facts (statuses, errors, expiry) into these few types. The
errors say exactly one thing the state machine needs to know: may we retry, and could
the provider have created a job we would pay for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

from service.core.diagnosis import Finding
from service.core.request import ErrorKind, VideoRequest

JobStatus = Literal["queued", "running", "completed", "failed"]


@dataclass(frozen=True)
class ProviderJob:
    """A provider's job as the worker sees it."""

    id: str
    status: JobStatus
    progress: int
    raw_status: str
    error: str | None = None
    error_kind: ErrorKind | None = None
    """For a failed job: which outcome it is (a safety filter is not a provider fault)."""
    created_at: datetime | None = None
    finished_at: datetime | None = None
    """When the provider says the job finished (OpenAI's and Replicate's
    ``completed_at``), if it says."""
    expires_at: datetime | None = None
    prompt: str | None = None
    model: str | None = None
    size: str | None = None
    seconds: str | None = None
    poll_after: timedelta | None = None
    """When the provider asked to be polled again (a hint; OpenAI's ``openai-poll-after-ms``)."""


class ProviderError(Exception):
    """Base of the port's errors; ``str()`` is a sentence a person can act on.

    ``retry_after`` is the provider's own word on when to try again, if it gave one.
    """

    def __init__(self, message: str, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestRejected(ProviderError):
    """Permanent: this request will never succeed as it is (bad input, policy, no model).

    ``kind`` is the outcome the row records: ``safety_filtered`` for a content-policy
    refusal, ``model_retired`` for a model that is gone, else ``invalid_request``.
    """

    def __init__(
        self,
        message: str,
        kind: ErrorKind = "invalid_request",
        retry_after: timedelta | None = None,
    ) -> None:
        super().__init__(message, retry_after)
        self.kind: ErrorKind = kind


class ProviderUnavailable(ProviderError):
    """Transient, and certainly nothing was created (refused before any work, unreachable)."""


class RateLimited(ProviderUnavailable):
    """The host refused for now because of its request rate (HTTP 429): nothing was
    created. ``retry_after`` is when it said to come back (None: it did not say); every
    replica waits that long (``service.database.limits``), not only this one."""


class OutcomeUnknown(ProviderError):
    """Transient, and the provider may have created a job (timeout, 5xx, dropped reply)."""


class CannotReconcile(ProviderError):
    """The host can never say whether a job is ours: it cannot list its jobs at all (a
    gateway that does not implement the list, a provider without one) or its list hides
    what would tell jobs apart (the prompt). A create in doubt there can only be settled
    by a person. Raised by ``find_submitted``; ``litellm``: the host is a LiteLLM proxy
    (a job found upstream is adopted with ``--litellm-model``)."""

    def __init__(self, message: str, *, litellm: bool = False) -> None:
        super().__init__(message)
        self.litellm = litellm


class VideoGone(ProviderError):
    """The job or its file no longer exists at the provider (deleted or expired)."""


Variant = Literal["video", "thumbnail"]


class VideoProvider(Protocol):
    """A video generator. Adapters validate what their own models accept."""

    name: str

    def validate(self, model: str, size: str, seconds: str) -> None:
        """Raise RequestRejected for parameters this provider's model cannot take."""

    async def submit(self, request: VideoRequest) -> ProviderJob:
        """Create a job. Never retried blindly inside: ambiguity raises OutcomeUnknown."""

    submit_timeout: timedelta
    """How long a create may still be in flight; "not found" means nothing before that.
    The steps bound a whole create, status poll and thumbnail download by it too."""

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        """Reconcile: every job since ``submitted_after`` that matches ``request``.

        Newest first, as the provider lists them.

        Raises CannotReconcile when the host has no usable list at all, and another
        ProviderError when it cannot give a complete answer this time.
        """

    async def retrieve(self, job_id: str) -> ProviderJob:
        """The job's current state."""

    def download(
        self, job_id: str, variant: Variant = "video"
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a finished job's file in chunks (never the whole file in memory)."""

    def content_url(self, job_id: str) -> str:
        """The provider's own (temporary) URL of the video, kept as a backup link."""

    async def aclose(self) -> None:
        """Release connections."""


@runtime_checkable
class Cancellable(Protocol):
    """A provider that can stop (or delete) a job: ``sora-worker cancel`` uses it where
    the adapter offers it. Not part of ``VideoProvider``: the worker never cancels."""

    async def cancel(self, job_id: str) -> None:
        """Stop or delete the job; a job already gone is no error."""


@runtime_checkable
class Diagnosable(Protocol):
    """A provider that can check itself for ``sora-worker doctor``: reachable, the
    model served, what else the worker relies on. Adapters without it get one WARN."""

    async def diagnose(self, model: str) -> list[Finding]:
        """One finding per check; never raises for what the provider answers."""


@runtime_checkable
class TellsWebhookSecret(Protocol):
    """A host that can say the secret its webhooks are signed with (Replicate): asked
    when this worker asks for webhooks (SORA_WEBHOOK_URL) and no secret is set."""

    async def webhook_secret(self) -> str:
        """The signing secret; ProviderUnavailable when the host cannot say it now."""
