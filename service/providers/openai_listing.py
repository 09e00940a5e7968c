"""The job list of an OpenAI Videos host: whether it can be read, and the walk back
through it that settles a create in doubt.

A LiteLLM proxy's list fails outright (``contracts/providers.md``), which ``probe``
learns at startup and every refusal confirms: there a create that got no clear answer
can only be settled by a person, so reconciliation says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import openai
import structlog

from service.core.diagnosis import Finding
from service.core.request import VideoRequest
from service.providers.base import CannotReconcile, ProviderJob, ProviderUnavailable
from service.providers.openai_errors import detail, from_litellm, retry_after
from service.providers.openai_sdk import quiet

log = structlog.get_logger("service.providers.openai_videos")  # the adapter's own log

PROBE_TIMEOUT = 10.0
"""The startup probe is one try: a host that does not answer is probed again by use."""
RECONCILE_SLACK = timedelta(minutes=2)
RECONCILE_MAX_PAGES = 50


class JobListing:
    """Reads a host's job list for ``OpenAIVideos``; ``to_job`` reads one listed video."""

    def __init__(
        self, client: openai.AsyncOpenAI, base_url: str, to_job: Callable[[Any], ProviderJob]
    ) -> None:
        self._client = client
        self.base_url = base_url
        self._to_job = to_job
        self.lists_jobs: bool | None = None
        """Whether the host can list its jobs: None until ``probe`` or a list tells."""
        self._refusal = ""
        self._litellm = False

    async def probe(self) -> bool | None:
        """One cheap call at startup: can this host list its jobs (reconcile a create in
        doubt)? Said in the log either way; None when the host is unreachable now."""
        once = self._client.with_options(max_retries=0, timeout=PROBE_TIMEOUT)
        try:
            await quiet(lambda: once.videos.list(limit=1))
        except openai.APIConnectionError as err:
            log.warning("provider.unreachable", base_url=self.base_url, error=str(err))
            return None
        except openai.APIStatusError as err:
            if not self._cannot_list(err):
                log.warning("provider.list_failed", base_url=self.base_url, error=detail(err))
                return None
            return False
        self.lists_jobs = True
        log.info("provider.lists_jobs", base_url=self.base_url)
        return True

    def _cannot_list(self, err: openai.APIStatusError) -> bool:
        """Record (and say) that the host cannot list, if ``err`` means that for good:
        any 4xx to a plain list, or a LiteLLM proxy's 5xx (it tries another host)."""
        permanent = 400 <= err.status_code < 500 and err.status_code not in (401, 403, 408, 429)
        if not (permanent or (err.status_code >= 500 and from_litellm(err))):
            return False
        if self.lists_jobs is not False:
            log.warning(
                "provider.cannot_list",
                base_url=self.base_url,
                error=detail(err),
                message="this host cannot list its jobs, so a create that gets no clear "
                "answer cannot be reconciled: such a row fails at once (error_kind in_doubt) "
                "with what a person needs to settle it (sora-worker adopt ROW VIDEO_ID)",
            )
        self.lists_jobs = False
        self._refusal = detail(err)
        self._litellm = from_litellm(err)
        return True

    async def find_submitted(
        self, request: VideoRequest, submitted_after: datetime
    ) -> list[ProviderJob]:
        """Every job created since our intent was recorded that matches what we sent.

        The Videos API stores no client metadata, so the best evidence is the echoed
        prompt, model, size and seconds of jobs created after ``submitted_after`` (less
        clock slack). When the answer cannot be complete (the list does not reach back
        that far, or the host does not echo prompts) this raises instead of returning
        too little: an incomplete "nothing found" would pay twice.
        """
        if self.lists_jobs is False:
            raise CannotReconcile(f"its list fails ({self._refusal})", litellm=self._litellm)
        horizon = submitted_after - RECONCILE_SLACK
        found: list[ProviderJob] = []
        try:
            page = await quiet(lambda: self._client.videos.list(limit=100, order="desc"))
            self.lists_jobs = True
            for pages in range(1, RECONCILE_MAX_PAGES + 1):
                for video in page.data:
                    job = self._to_job(video)
                    if job.created_at is not None and job.created_at < horizon:
                        return found
                    if job.prompt is None:
                        raise CannotReconcile(
                            "its job list does not echo prompts, so the earlier submission "
                            "cannot be told apart from other jobs"
                        )
                    if _matches(job, request):
                        found.append(job)
                if not page.has_next_page():
                    return found
                if pages < RECONCILE_MAX_PAGES:
                    page = await page.get_next_page()
        except openai.APIConnectionError as err:
            raise ProviderUnavailable(f"cannot list jobs at {self.base_url}: {err}") from err
        except openai.APIStatusError as err:
            if self._cannot_list(err):
                raise CannotReconcile(
                    f"its list fails ({detail(err)})", litellm=self._litellm
                ) from err
            raise ProviderUnavailable(
                f"cannot list jobs at {self.base_url} ({detail(err)})", retry_after(err)
            ) from err
        raise ProviderUnavailable(
            f"more than {RECONCILE_MAX_PAGES * 100} jobs were created at {self.base_url} since "
            "the earlier submission; cannot reach back to it"
        )

    async def diagnose(self) -> Finding:
        """``doctor``'s line on listing (reconciliation needs it)."""
        try:
            await quiet(lambda: self._client.with_options(max_retries=0).videos.list(limit=1))
        except openai.APIError as err:
            return Finding(
                "list videos",
                "FAIL",
                f"GET /videos?limit=1 failed: {err}",
                "use a host that lists videos: without it a submission whose answer was lost "
                "cannot be reconciled, and its row fails as in_doubt for a person to settle "
                "(sora-worker adopt)",
            )
        return Finding("list videos", "OK", "GET /videos?limit=1 works (reconciliation)")


def _matches(job: ProviderJob, request: VideoRequest) -> bool:
    if job.prompt != request.prompt:
        return False  # without the prompt echoed back, nothing proves the job is ours
    pairs = (
        (job.model, request.model),
        (job.size, request.size),
        (job.seconds, request.seconds),
    )
    return all(theirs is None or theirs == ours for theirs, ours in pairs)
