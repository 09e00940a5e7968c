"""What a simulator does: its timings, models and scripted failures."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .profiles import ProfileName

__all__ = ["FailureRule", "JobShapes", "SimulatorConfig"]

Stage = Literal["create", "generate", "slow_create", "download"]


@dataclass
class FailureRule:
    """Fail requests whose prompt contains ``prompt_contains`` (case-insensitive).

    ``stage="create"``: ``POST /v1/videos`` answers HTTP ``status`` with ``code``/``message``
    (and ``Retry-After: retry_after`` when given, as a 429 does); with ``after_create``
    the job is made first, as when a gateway times out after its upstream accepted.
    ``stage="generate"``: the job is accepted, then ends ``failed`` with error {code, message}.
    ``stage="slow_create"``: the job is made, then the answer waits ``delay`` seconds (a
    client with a shorter timeout cannot know the outcome).
    ``stage="download"``: the video's content stops after ``truncate_at`` (a fraction)
    of its bytes and the connection is closed, as a dropped download does.
    ``times``: the rule fires this many times, then stops matching (None: always).
    Rules are matched when a request arrives, so appending one affects later ones only.
    """

    prompt_contains: str
    stage: Stage
    status: int = 400
    code: str = "moderation_blocked"
    message: str = "Your request was blocked by our moderation system."
    times: int | None = None
    retry_after: float | None = None
    after_create: bool = False
    delay: float = 0.0
    truncate_at: float = 0.5
    fired: int = 0  # how many times it fired


Progress = Literal["linear", "s-curve", "none"]


@dataclass(frozen=True)
class JobShapes:
    """Jobs as uneven as real ones, each drawn from its id (the same in every process
    serving one ``state_dir``): how long it queues, how long it generates, how its
    progress moves, how large its video is.

    Generation takes ``typical_seconds`` times a factor drawn log-normally (``sigma``)
    and kept within ``spread``: most jobs near the typical time, a few at half or twice
    it. ``progress``: ``linear`` (from the end of the queue), ``s-curve`` (queued at 0,
    then slow, fast, slow: a smoothstep), or ``none`` (``in_progress`` at 0 until done,
    as a host that reports nothing: Veo, most of Replicate). ``video_bytes``: the served
    MP4 is padded (a trailing ``free`` box, which players skip) to a size drawn in this
    range; None serves the rendered file as it is.
    """

    typical_seconds: float = 60.0
    spread: tuple[float, float] = (0.5, 2.0)
    sigma: float = math.log(2) / 2
    queue_seconds: tuple[float, float] = (1.0, 8.0)
    progress: Progress = "s-curve"
    video_bytes: tuple[int, int] | None = (5_000_000, 30_000_000)

    def timing(self, job_id: str) -> tuple[float, float]:
        """(queue, generation) seconds of ``job_id``."""
        draw = random.Random(f"timing {job_id}")
        queue = draw.uniform(*self.queue_seconds)
        low, high = self.spread
        factor = min(max(math.exp(draw.gauss(0.0, self.sigma)), low), high)
        return queue, self.typical_seconds * factor

    def size(self, job_id: str) -> int | None:
        """The bytes ``job_id``'s video is served as (None: as rendered)."""
        if self.video_bytes is None:
            return None
        return random.Random(f"size {job_id}").randint(*self.video_bytes)

    def shown(self, status: str, fraction: float) -> tuple[str, int]:
        """The status and progress a running job shows ``fraction`` of the way through
        its generation (0 while queued)."""
        if self.progress == "none":
            return "in_progress", 0
        if status == "queued":
            return "queued", 0
        x = min(max(fraction, 0.0), 1.0)
        curve = x * x * (3 - 2 * x) if self.progress == "s-curve" else x
        return "in_progress", min(99, int(100 * curve))


def _sora_sizes() -> dict[str, tuple[str, ...]]:
    portrait_and_landscape = ("720x1280", "1280x720")
    return {
        "sora-2": portrait_and_landscape,
        "sora-2-pro": (*portrait_and_landscape, "1024x1792", "1792x1024"),
    }


@dataclass
class SimulatorConfig:
    """Behaviour of a simulator; mutable at runtime (e.g. ``failure_rules.append``).

    The timings are read on every request, so changing them moves existing jobs too
    (lengthening ``generation_seconds`` can even send a completed job back to in_progress).
    """

    queue_seconds: float = 1.0
    generation_seconds: float = 8.0
    expires_after_seconds: float = 86400.0
    poll_after_ms: int | None = None
    """Sent as ``openai-poll-after-ms`` with each job's status when set (the SDK's
    ``poll()`` honours it; whether a host sends it varies): None sends nothing."""
    models: dict[str, tuple[str, ...]] = field(default_factory=_sora_sizes)  # model -> sizes
    seconds: tuple[str, ...] = ("4", "8", "12")
    api_key: str | None = None  # None: any non-empty bearer token is accepted
    state_dir: Path | None = None  # jobs, references and rendered assets persist here
    failure_rules: list[FailureRule] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    profile: ProfileName = "openai"
    """Which host to behave as (``profiles.py``): OpenAI itself or a gateway's quirks."""
    shapes: JobShapes | None = None
    """Uneven jobs (``JobShapes``); None: every job queues ``queue_seconds`` and
    generates ``generation_seconds``, progress linear."""
    webhook_url: str | None = None
    """Where ``video.completed`` / ``video.failed`` events go when a job ends, as an
    OpenAI webhook endpoint receives them; None sends none."""
    webhook_secret: str | None = None
    """The endpoint's ``whsec_...`` secret: events are signed per Standard Webhooks."""
    webhook_attempts: int = 3
    """Deliveries tried per event (a 2xx answer ends them), 0.5 s apart."""

    def timing(self, job_id: str) -> tuple[float, float]:
        """(queue, generation) seconds of ``job_id``, read on every request."""
        if self.shapes is None:
            return self.queue_seconds, self.generation_seconds
        return self.shapes.timing(job_id)

    def rule_for(self, prompt: str, stage: Stage) -> FailureRule | None:
        """The first live rule of ``stage`` whose text occurs in ``prompt``; it fires.

        A rule with ``times`` left fires once more (and counts it); an exhausted one is
        skipped.
        """
        folded = prompt.casefold()
        for rule in self.failure_rules:
            if rule.stage != stage or rule.prompt_contains.casefold() not in folded:
                continue
            if rule.times is not None and rule.fired >= rule.times:
                continue
            rule.fired += 1
            return rule
        return None
