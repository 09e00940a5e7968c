"""Where the OpenAI Videos adapter meets the official ``openai`` SDK's edges.

Public API only (openai 3.57, pinned in constraints.txt); what each piece stands in
for, and the test that keeps it honest on an upgrade
(tests/test_provider_openai.py, ``test_the_sdk_edges_hold``):

- ``quiet``: every videos method of the SDK is deprecated and warns when called;
- ``connection_limits``: the SDK's HTTP clients take its own HTTPX2's ``Limits``
  (HTTPX2 is the SDK's dependency, not ours), made here from the type of its public
  ``openai.DEFAULT_CONNECTION_LIMITS``;
- ``retrieve``: ``videos.retrieve`` with the answer's headers (the host's poll-after
  hint). ``with_raw_response`` would warn outside ``quiet`` (it calls the deprecated
  method inside its own coroutine), so the same GET goes through the client's public
  ``get`` (what the SDK's README offers for any endpoint), parsed by the SDK itself.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import openai
from openai.types import Video

T = TypeVar("T")

_SEGMENT_SAFE = "!$&'()*+,;=:@"
"""What stays unescaped in a path segment (RFC 3986 pchar), as the SDK escapes ids."""
_DOT_SEGMENT = re.compile(r"^(?:\.|%2[eE]){1,2}$")


def quiet(call: Callable[[], T]) -> T:
    """Run an SDK call with its DeprecationWarning silenced.

    The SDK's ``@deprecated`` wrapper warns synchronously when the method is called,
    before any await, so this block holds no await and is safe under asyncio.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return call()


def connection_limits(connections: int, keepalive: int, expiry: float) -> Any:
    """Connection limits in the type the SDK's HTTP clients take."""
    return type(openai.DEFAULT_CONNECTION_LIMITS)(
        max_connections=connections, max_keepalive_connections=keepalive, keepalive_expiry=expiry
    )


def path_segment(video_id: str) -> str:
    """``video_id`` escaped as one path segment, as the SDK escapes ids."""
    if not video_id:
        raise ValueError(f"Expected a non-empty value for `video_id` but received {video_id!r}")
    segment = quote(video_id, safe=_SEGMENT_SAFE)
    if _DOT_SEGMENT.match(segment):
        raise ValueError(f"{video_id!r} cannot name a video: it is a dot-segment")
    return segment


async def retrieve(client: openai.AsyncOpenAI, video_id: str) -> tuple[Video, Mapping[str, str]]:
    """``GET /videos/{video_id}`` as ``client.videos.retrieve`` sends it (the id escaped
    as a path segment, the API key as its only credential), with the answer's headers.
    Retries, timeouts and errors are the client's, as for any SDK call."""
    segment = path_segment(video_id)
    response: openai.AsyncAPIResponse[Video] = await client.get(
        f"/videos/{segment}",
        cast_to=openai.AsyncAPIResponse[Video],
        options={"security": {"bearer_auth": True}},
    )
    return await response.parse(), response.headers
