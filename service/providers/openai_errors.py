"""What an OpenAI Videos host's errors mean, in the provider port's terms.

The SDK raises one exception per HTTP status; gateways put their own words in the body
(a LiteLLM proxy says "400" for a code and names itself in messages). These functions
read what a person needs from either, sort a create's failure into "nothing was made"
and "a job may exist", and give a failed job its reason and outcome.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import openai

from service.core.request import ErrorKind
from service.providers.base import (
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
)

SAFETY_CODES = ("moderation", "safety", "content_policy", "content_filter")
"""Error codes (substrings) that mean a content filter stopped the request."""


def retry_after(err: openai.APIStatusError) -> timedelta | None:
    headers = err.response.headers
    try:
        if "retry-after-ms" in headers:
            return timedelta(milliseconds=float(headers["retry-after-ms"]))
        if "retry-after" in headers:
            return timedelta(seconds=float(headers["retry-after"]))
    except ValueError:
        return None
    return None


def message(err: openai.APIStatusError) -> str:
    """The host's own words, on one line (LiteLLM puts raw newlines in its messages)."""
    body = err.body
    said = err.message
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            said = str(inner["message"])
    return " ".join(said.split())


def _field(err: openai.APIStatusError, name: str) -> str | None:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get(name) is not None:
            return str(inner[name])
    return None


def error_code(err: openai.APIStatusError) -> str | None:
    return _field(err, "code") or err.code


def detail(err: openai.APIStatusError) -> str:
    """``HTTP 400 code: message``; a gateway's code that only repeats the status (LiteLLM
    sends code "400") is said once."""
    status, code = err.status_code, error_code(err)
    shown = f" {code}" if code and code != str(status) else ""
    return f"HTTP {status}{shown}: {message(err)}"


def from_litellm(err: openai.APIStatusError) -> bool:
    """A LiteLLM proxy's own error (its messages name it; its list refusal is this one)."""
    text = message(err)
    return "litellm" in text.casefold() or "LLM Provider NOT provided" in text


def kind_of(code: str | None) -> ErrorKind:
    folded = (code or "").casefold()
    return "safety_filtered" if any(w in folded for w in SAFETY_CODES) else "invalid_request"


def never_connected(err: openai.APIConnectionError) -> bool:
    """True when the request provably never reached the server (connect failed)."""
    cause = err.__cause__
    never = {"ConnectError", "ConnectTimeout", "PoolTimeout"}  # PoolTimeout: no connection yet
    return cause is not None and type(cause).__name__ in never


def _unknown_model(err: openai.APIStatusError) -> bool:
    """A gateway's own "no such model" (LiteLLM: 400, code "400", "Invalid model name
    passed in model=...")."""
    return err.status_code == 400 and (
        "invalid model name" in message(err).casefold() or _field(err, "param") == "model"
    )


def create_error(err: openai.APIStatusError, model: str, base_url: str) -> ProviderError:
    """A create's HTTP error: whether a job may exist, and what a person should change."""
    status, code = err.status_code, error_code(err)
    said = detail(err)
    if status == 410:
        return RequestRejected(
            f"model {model!r} is gone from {base_url} ({said}). "
            "Set SORA_MODEL (or the row's model) to a model this host serves.",
            kind="model_retired",
        )
    if (status == 404 and code == "model_not_found") or _unknown_model(err):
        return RequestRejected(
            f"model {model!r} is not available at {base_url} ({said}). "
            "Set SORA_MODEL (or the row's model) to a model this host serves "
            "(a gateway lists them at /v1/models), or OPENAI_BASE_URL to a host that "
            "serves this one."
        )
    if status == 404:
        return RequestRejected(
            f"{base_url}/videos does not exist ({said}). "
            "Check OPENAI_BASE_URL: it should end in /v1 of a Videos API host."
        )
    if status in (401, 403):
        return ProviderUnavailable(
            f"the provider refused our credentials ({said}); check OPENAI_API_KEY"
        )
    if status == 429:
        return RateLimited(f"rate limited ({said})", retry_after(err))
    if status == 408 or status >= 500:
        return OutcomeUnknown(f"provider error on create ({said})", retry_after(err))
    return RequestRejected(f"the provider refused the request ({said})", kind_of(code))


def job_error(video: Any, raw_status: str) -> tuple[str, ErrorKind]:
    """A failed job's reason and outcome."""
    if raw_status == "expired":
        return "the provider expired the job before it could be archived", "expired"
    err = getattr(video, "error", None)
    code = getattr(err, "code", None) if err is not None else None
    said = getattr(err, "message", None) if err is not None else None
    kind: ErrorKind = "safety_filtered" if kind_of(code) == "safety_filtered" else "provider_error"
    if code or said:
        return f"the provider failed the job ({code or 'error'}): {said or 'no details'}", kind
    return "the provider failed the job without saying why", kind
