"""Host profiles: the simulator behaving as OpenAI itself, or as a gateway really does.

Gateways serve the same ``/v1/videos`` shape with quirks that matter to a worker
(``contracts/providers.md``, LiteLLM 1.108 as measured); a profile reproduces them, so
the pipeline is tested against each host it will meet, never against a kinder one:

- ``openai``: the API as OpenAI documented it.
- ``litellm`` (checked against a real LiteLLM 1.108.7 proxy in front of this
  simulator): ids are ``video_`` + base64 of ``litellm:custom_llm_provider:openai;
  model_id:<model>;video_id:<ours>;deployment_id:<hash>``, and it retrieves an id it
  did not mint, or one naming another model, by sending it to api.openai.com (500 when
  that fails); an id without the deployment part works; ``prompt`` comes back null,
  ``usage`` is added on create; the list fails (400 "LLM Provider NOT provided");
  ``variant=thumbnail`` is ignored (the MP4 comes back); an unknown model is a 400 with
  code "400" and "/videos: Invalid model name passed in model=..."; ``Idempotency-Key``
  is not forwarded upstream (per providers.md).
- ``litellm-keyed``: a LiteLLM proxy whose keys are per model (litellm#33423): the ids
  it mints carry an empty ``model_id``, and status and download of such an id fail (it
  routes by that model: "Invalid model name passed in model=", the exact text not
  verified); an id naming the model works.
- ``new-api``: statuses outside OpenAI's enum (a queued job is ``NOT_START``).
- ``new-api-xai``: new-api relaying xAI: no status at all while a job is queued or
  running, ``done`` when finished with the file inline (``video.url``, on a path that
  needs no key), and no ``/content`` (404).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from .errors import ApiError

__all__ = ["PROFILES", "Profile", "ProfileName"]

ProfileName = Literal["openai", "litellm", "litellm-keyed", "new-api", "new-api-xai"]
PROFILES: tuple[ProfileName, ...] = ("openai", "litellm", "litellm-keyed", "new-api", "new-api-xai")
FILES = "/files"
"""Where the xAI relay's inline links point (no key needed, like a signed URL)."""

_LITELLM_DEPLOYMENT = "07bb2386cd5f03e544b6ccecf6c73a85cf3e6ca6cc11ca5f1073cdac50db30d6"
_LITELLM_UNROUTABLE = ApiError(
    500,
    "litellm.InternalServerError: InternalServerError: OpenAIException - Cannot connect to "
    "host api.openai.com:443 ssl:<ssl.SSLContext object> [Name or service not known]",
    code="500",
)
"""What a LiteLLM proxy answers for an id it cannot route: it tried OpenAI's own host."""


class Profile:
    """How one kind of host shows the simulator's jobs and answers its requests."""

    def __init__(self, name: ProfileName) -> None:
        if name not in PROFILES:
            raise ValueError(f"unknown simulator profile {name!r}; use one of {PROFILES}")
        self.name = name

    @property
    def litellm(self) -> bool:
        return self.name.startswith("litellm")

    @property
    def lists(self) -> bool:
        return not self.litellm

    @property
    def honours_variants(self) -> bool:
        return not self.litellm

    @property
    def forwards_idempotency_key(self) -> bool:
        return not self.litellm

    @property
    def serves_content(self) -> bool:
        return self.name != "new-api-xai"

    def public_id(self, job_id: str, model: str) -> str:
        """The id this host hands out for a job of ``model``."""
        if not self.litellm:
            return job_id
        minted = "" if self.name == "litellm-keyed" else model
        inner = (
            f"litellm:custom_llm_provider:openai;model_id:{minted};"
            f"video_id:{job_id};deployment_id:{_LITELLM_DEPLOYMENT}"
        )
        return "video_" + base64.b64encode(inner.encode()).decode()

    def job_id(self, public: str) -> tuple[str, str | None]:
        """The job behind an id a client sent, and the model the id routes to (None:
        any). A LiteLLM proxy routes only ids it minted (see ``check_route``)."""
        if not self.litellm:
            return public, None
        decoded = _litellm_parts(public)
        if decoded is None:
            raise _LITELLM_UNROUTABLE
        if not decoded[1]:
            raise self.unknown_model("")  # keys per model: the empty model is no model
        return decoded

    def check_route(self, routed_model: str | None, job_model: str) -> None:
        """A LiteLLM id naming another model is routed elsewhere, and fails there."""
        if routed_model is not None and routed_model != job_model:
            raise _LITELLM_UNROUTABLE

    def known_id(self, public: str) -> str:
        """The job behind ``public``, never raising (for tests looking a job up)."""
        if not self.litellm:
            return public
        decoded = _litellm_parts(public)
        return public if decoded is None else decoded[0]

    def video(
        self, video: dict[str, Any], *, created: bool = False, origin: str = ""
    ) -> dict[str, Any]:
        """The Video object as this host shows it (``created``: in the create answer;
        ``origin``: this host's, for inline links)."""
        shown = dict(video)
        if self.name == "new-api-xai":
            if video["status"] in ("queued", "in_progress"):
                shown.pop("status")
            elif video["status"] == "completed":
                shown["status"] = "done"
                shown["video"] = {"url": f"{origin}{FILES}/{video['id']}.mp4"}
        if self.litellm:
            shown["id"] = self.public_id(video["id"], video["model"])
            shown.pop("prompt", None)
            shown["usage"] = {"duration_seconds": float(video["seconds"])} if created else None
            if shown.get("remixed_from_video_id"):
                source = shown["remixed_from_video_id"]
                shown["remixed_from_video_id"] = self.public_id(source, video["model"])
        elif self.name == "new-api" and video["status"] == "queued":
            shown["status"] = "NOT_START"
        return shown

    def unknown_model(self, model: str) -> ApiError:
        if self.litellm:
            return ApiError(
                400,
                f"/videos: Invalid model name passed in model={model}. Call `/v1/models` "
                "to view available models for your key.",
                code="400",
            )
        message = f"The model `{model}` does not exist or you do not have access to it."
        return ApiError(404, message, code="model_not_found")

    def refuse_list(self) -> ApiError:
        return ApiError(
            400,
            "litellm.BadRequestError: LLM Provider NOT provided. Pass in the LLM provider "
            "you are trying to call. You passed model=\n Pass model as E.g. For "
            "'Huggingface' inference endpoints pass in `completion(model='huggingface/"
            "starcoder',..)` Learn more: https://docs.litellm.ai/docs/providers",
            code="400",
        )


def _litellm_parts(public: str) -> tuple[str, str] | None:
    """LiteLLM's own decoding: ``video_`` + base64 (padding optional) of ``;`` parts;
    (upstream video id, model id), or None for an id it did not mint."""
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
    return parts[2].removeprefix("video_id:"), parts[1].removeprefix("model_id:")
