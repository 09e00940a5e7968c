"""Provider job ids in a form that can be compared.

A gateway may hand out the same job under more than one id string: a LiteLLM proxy
mints ``video_`` + base64 of ``litellm:custom_llm_provider:...;model_id:...;video_id:
<upstream id>;deployment_id:...`` on create, and re-encodes it without the deployment
part in a list. So the worker keeps the id create returned (it is what the host routes
by) and compares ids only through ``stable_id``. The same rule runs in SQL
(``public.video_stable_id`` in ``sql/0006_error_kind.sql``) for the "already recorded
by another row" check; the repository contract tests hold the two together.
"""

from __future__ import annotations

import base64
import binascii
import re

_LITELLM_PREFIX = "video_"
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_UPSTREAM = re.compile(r"(?:^|;)video_id:([^;]+)")


def stable_id(video_id: str) -> str:
    """The job's identity: the upstream id inside a LiteLLM id, else the id itself."""
    body = video_id.removeprefix(_LITELLM_PREFIX).replace("-", "+").replace("_", "/")
    body += "=" * (-len(body) % 4)
    if not _BASE64.fullmatch(body):
        return video_id
    try:
        decoded = base64.b64decode(body, validate=True).decode("ascii", "replace")
    except binascii.Error:
        return video_id
    found = _UPSTREAM.search(decoded) if decoded.startswith("litellm:") else None
    return found.group(1) if found else video_id


def is_litellm_id(video_id: str) -> bool:
    """Whether a LiteLLM gateway minted this id (it can retrieve no other kind)."""
    return stable_id(video_id) != video_id


def litellm_id(upstream_id: str, model_id: str, deployment_id: str | None = None) -> str:
    """A LiteLLM-style id, as its proxy mints one (the simulator's gateway profile)."""
    parts = ["litellm:custom_llm_provider:openai", f"model_id:{model_id}"]
    parts.append(f"video_id:{upstream_id}")
    if deployment_id is not None:
        parts.append(f"deployment_id:{deployment_id}")
    return _LITELLM_PREFIX + base64.b64encode(";".join(parts).encode()).decode()


def with_model(video_id: str, model: str) -> str:
    """A LiteLLM id whose model part is empty (keys per model: litellm#33423), minted
    again naming ``model`` so that the proxy can route it; any other id as it is."""
    if not is_litellm_id(video_id):
        return video_id
    body = video_id.removeprefix(_LITELLM_PREFIX)
    body += "=" * (-len(body) % 4)
    decoded = base64.b64decode(body).decode("ascii", "replace")
    parts = decoded.split(";")
    if not any(p == "model_id:" for p in parts):
        return video_id
    fixed = ";".join(f"model_id:{model}" if p == "model_id:" else p for p in parts)
    return _LITELLM_PREFIX + base64.b64encode(fixed.encode()).decode()
