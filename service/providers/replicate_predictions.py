"""Reading Replicate's predictions: their output URL, why one failed, its progress from
its logs, whether it is the one a request made, and its times. Plain functions on the
prediction's JSON (``replicate_videos`` reads it through the SDK or, for statuses the
SDK's model refuses, as JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from replicate.prediction import Prediction

from service.core.request import ErrorKind, VideoRequest


class PageDict:
    """A typed SDK page, seen as the JSON it came from (the adapter's read wants ``.dict()``)."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def dict(self) -> dict[str, Any]:
        return {"next": self.page.next, "results": [p.dict() for p in self.page.results]}


def output_url(prediction: dict[str, Any]) -> str | None:
    output = prediction.get("output")
    if isinstance(output, list):
        output = output[0] if output else None
    return (
        output if isinstance(output, str) and output.startswith(("http://", "https://")) else None
    )


def failure(prediction: dict[str, Any], raw: str) -> tuple[str, ErrorKind]:
    message = str(prediction.get("error") or "")
    if "E005" in message or "flagged as sensitive" in message:
        return f"Replicate's safety check refused it: {message}", "safety_filtered"
    if raw == "canceled":
        return (
            "the prediction was canceled (deadline reached or canceled by hand)",
            "provider_error",
        )
    if raw == "aborted":
        return "the prediction was aborted before it started (deadline reached)", "provider_error"
    return f"the model failed: {message or 'no details'}", "provider_error"


def progress(logs: object) -> int:
    """The last ``NN%|...| a/b`` progress line in the logs (as the SDK parses it)."""
    if not isinstance(logs, str) or not logs:
        return 0
    progress = Prediction.Progress.parse(logs)
    return 0 if progress is None else int(progress.percentage * 100)


def matches(prediction: dict[str, Any], request: VideoRequest) -> bool:
    inputs = prediction.get("input")
    if not isinstance(inputs, dict) or inputs.get("prompt") != request.prompt:
        return False
    model, _, version = request.model.partition(":")
    if version:
        return prediction.get("version") == version
    return prediction.get("model") == model


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
