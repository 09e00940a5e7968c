"""Host profiles: the simulator behaving as OpenAI itself, or as a gateway really does.

Gateways serve the same ``/v1/videos`` shape with quirks that matter to a worker
(``contracts/providers.md``, LiteLLM 1.108 as measured); a profile reproduces them, so
the pipeline is tested against each host it will meet, never against a kinder one:

- ``openai``: the API as OpenAI documented it.
- ``litellm``: ids are ``video_`` + base64 of ``litellm:custom_llm_provider:openai;
  model_id:...;video_id:<ours>;deployment_id:...``; ``prompt`` comes back null and
  ``usage`` is added; the list fails (400 "LLM Provider NOT provided"); ``variant=
  thumbnail`` is ignored (the MP4 comes back); an unknown model is a 400 with code
  "400" and "Invalid model name passed in model=..."; an id it did not mint cannot be
  retrieved (500, it tries the public OpenAI host); ``Idempotency-Key`` is not
  forwarded upstream.
- ``new-api``: statuses outside OpenAI's enum (a queued job is ``NOT_START``).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from .errors import ApiError

__all__ = ["PROFILES", "Profile", "ProfileName"]

ProfileName = Literal["openai", "litellm", "new-api"]
PROFILES: tuple[ProfileName, ...] = ("openai", "litellm", "new-api")

_LITELLM_MODEL_ID = "7f3c0d2e-sim-deployment-model"
_LITELLM_DEPLOYMENT = "sim-deployment-1"


class Profile:
    """How one kind of host shows the simulator's jobs and answers its requests."""

    def __init__(self, name: ProfileName) -> None:
        if name not in PROFILES:
            raise ValueError(f"unknown simulator profile {name!r}; use one of {PROFILES}")
        self.name = name

    @property
    def lists(self) -> bool:
        return self.name != "litellm"

    @property
    def honours_variants(self) -> bool:
        return self.name != "litellm"

    @property
    def forwards_idempotency_key(self) -> bool:
        return self.name != "litellm"

    def public_id(self, job_id: str) -> str:
        """The id this host hands out for a job."""
        if self.name != "litellm":
            return job_id
        inner = (
            f"litellm:custom_llm_provider:openai;model_id:{_LITELLM_MODEL_ID};"
            f"video_id:{job_id};deployment_id:{_LITELLM_DEPLOYMENT}"
        )
        return "video_" + base64.b64encode(inner.encode()).decode()

    def job_id(self, public: str) -> str:
        """The job behind an id a client sent; a LiteLLM proxy routes only ids it minted."""
        if self.name != "litellm":
            return public
        decoded = _litellm_upstream(public)
        if decoded is None:
            raise ApiError(
                500,
                "litellm.InternalServerError: OpenAIException - Error code: 401 - You "
                "didn't provide an API key. (the video id carries no LiteLLM routing, so "
                "the request went to https://api.openai.com/v1)",
                code="500",
            )
        return decoded

    def known_id(self, public: str) -> str:
        """Like ``job_id`` but never raising (for tests looking a job up)."""
        if self.name != "litellm":
            return public
        return _litellm_upstream(public) or public

    def video(self, video: dict[str, Any]) -> dict[str, Any]:
        """The Video object as this host shows it."""
        shown = dict(video)
        if self.name == "litellm":
            shown["id"] = self.public_id(video["id"])
            shown["prompt"] = None
            shown["usage"] = {"duration_seconds": int(video["seconds"])}
            if shown.get("remixed_from_video_id"):
                shown["remixed_from_video_id"] = self.public_id(shown["remixed_from_video_id"])
        elif self.name == "new-api" and video["status"] == "queued":
            shown["status"] = "NOT_START"
        return shown

    def unknown_model(self, model: str) -> ApiError:
        if self.name == "litellm":
            return ApiError(
                400,
                f"Invalid model name passed in model={model}. Call `/v1/models` to view "
                "available models for your key.",
                code="400",
            )
        message = f"The model `{model}` does not exist or you do not have access to it."
        return ApiError(404, message, code="model_not_found")

    def refuse_list(self) -> ApiError:
        return ApiError(
            400,
            "litellm.BadRequestError: LLM Provider NOT provided. Pass in the LLM provider "
            "you are trying to call. You passed model=None",
            code="400",
        )


def _litellm_upstream(public: str) -> str | None:
    """LiteLLM's own decoding: ``video_`` + base64 (padding optional) of ``;`` parts."""
    if not public.startswith("video_"):
        return None
    body = public.removeprefix("video_")
    try:
        decoded = base64.b64decode(body + "=" * (-len(body) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    parts = decoded.split(";")
    if len(parts) < 3 or not parts[0].startswith("litellm:custom_llm_provider:"):
        return None
    return parts[2].removeprefix("video_id:")
