"""What is asked of a video generator, and the outcomes a failed row can have.

Core types: the state machine decides on them and every provider adapter speaks them,
so they live below both (an adapter may import the core, never the reverse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ErrorKind = Literal[
    "invalid_request",
    "photo_unavailable",
    "safety_filtered",
    "model_retired",
    "provider_error",
    "in_doubt",
    "expired",
]
"""Why a row failed, in words an app can show (the row's ``error_kind`` column)."""


@dataclass(frozen=True)
class VideoRequest:
    """One submission. ``idempotency_key`` is recorded in the row before submitting."""

    prompt: str
    model: str
    size: str
    seconds: str
    idempotency_key: str
    reference: bytes | None = None
    reference_filename: str = "reference.jpg"
    reference_content_type: str = "image/jpeg"
