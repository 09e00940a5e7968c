"""What a simulator does: its timings, models and scripted failures."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["FailureRule", "SimulatorConfig"]


@dataclass
class FailureRule:
    """Fail requests whose prompt contains ``prompt_contains`` (case-insensitive).

    ``stage="create"``: ``POST /v1/videos`` answers HTTP ``status`` with ``code``/``message``.
    ``stage="generate"``: the job is accepted, then ends ``failed`` with error {code, message}.
    Rules are matched when a job is created, so appending one affects later jobs only.
    """

    prompt_contains: str
    stage: Literal["create", "generate"]
    status: int = 400
    code: str = "moderation_blocked"
    message: str = "Your request was blocked by our moderation system."


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
    poll_after_ms: int = 1000
    models: dict[str, tuple[str, ...]] = field(default_factory=_sora_sizes)  # model -> sizes
    seconds: tuple[str, ...] = ("4", "8", "12")
    api_key: str | None = None  # None: any non-empty bearer token is accepted
    state_dir: Path | None = None  # jobs, references and rendered assets persist here
    failure_rules: list[FailureRule] = field(default_factory=list)
    clock: Callable[[], float] = time.time

    def rule_for(self, prompt: str, stage: Literal["create", "generate"]) -> FailureRule | None:
        """The first rule of ``stage`` whose text occurs in ``prompt``."""
        folded = prompt.casefold()
        matches = (r for r in self.failure_rules if r.prompt_contains.casefold() in folded)
        return next((rule for rule in matches if rule.stage == stage), None)
