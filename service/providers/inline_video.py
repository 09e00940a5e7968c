"""Streaming through a Vertex operation whose video is inline, base64 in its JSON.

Without ``output_gcs_uri`` Veo on Vertex returns the finished video inside the
``fetchPredictOperation`` answer (``"bytesBase64Encoded": "..."``). Parsed whole, as the
SDK does, a 20 MiB video cost the worker about 140 MiB (measured: the body, its JSON
string, the decoded bytes and the model's copies). This scanner reads the body as it
arrives and splits it in one pass into

- the operation's JSON with every video payload emptied (small: handed to the SDK's own
  parser for done / error / safety-filter fields), and
- the first payload's decoded bytes, yielded in chunks as they are decoded,

so neither a poll nor a download holds more than a chunk of the video at a time.
Base64 has no JSON escapes except an optional ``\\/``, which is dropped.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator

KEY = b'"bytesBase64Encoded"'
_OPENING = re.compile(rb"\s*:\s*\"")
_KEEP = len(KEY) + 64  # bytes held back so a key (and its colon) split across chunks is seen


class InlineVideoScanner:
    """Feed body chunks; read ``json`` afterwards; ``video`` receives the decoded bytes."""

    def __init__(self, keep_video: bool) -> None:
        self.keep_video = keep_video
        self._json = bytearray()
        self._pending = b""
        self._in_value = False
        self._b64 = b""
        self._payloads = 0

    def feed(self, chunk: bytes) -> bytes:
        """Consume ``chunk``; return the decoded video bytes it completed (maybe none)."""
        out = bytearray()
        data = self._pending + chunk
        self._pending = b""
        while data:
            if self._in_value:
                end = data.find(b'"')
                part = data if end < 0 else data[:end]
                if self._wanted():
                    out += self._decode(part.replace(b"\\", b""), final=end >= 0)
                if end < 0:
                    return bytes(out)
                self._in_value = False
                self._payloads += 1
                self._json += b'"'
                data = data[end + 1 :]
                continue
            at = data.find(KEY)
            if at < 0:
                cut = max(0, len(data) - _KEEP)
                self._json += data[:cut]
                self._pending = data[cut:]
                return bytes(out)
            opening = _OPENING.match(data, at + len(KEY))
            if opening is None:
                if len(data) - at > _KEEP:  # the key is not followed by a string
                    self._json += data[: at + len(KEY)]
                    data = data[at + len(KEY) :]
                    continue
                self._json += data[:at]
                self._pending = data[at:]
                return bytes(out)
            self._json += data[: opening.end()]
            self._in_value = True
            data = data[opening.end() :]
        return bytes(out)

    def close(self) -> None:
        self._json += self._pending
        self._pending = b""

    @property
    def json(self) -> bytes:
        """The operation's JSON with every video payload replaced by an empty string."""
        return bytes(self._json)

    @property
    def payloads(self) -> int:
        return self._payloads

    def _wanted(self) -> bool:
        return self.keep_video and self._payloads == 0

    def _decode(self, text: bytes, *, final: bool) -> bytes:
        self._b64 += text
        usable = len(self._b64) if final else len(self._b64) - len(self._b64) % 4
        ready, self._b64 = self._b64[:usable], self._b64[usable:]
        return base64.b64decode(ready) if ready else b""


async def scan(chunks: AsyncIterator[bytes], scanner: InlineVideoScanner) -> AsyncIterator[bytes]:
    """Run ``chunks`` through ``scanner``; yield the decoded video as it comes."""
    async for chunk in chunks:
        decoded = scanner.feed(chunk)
        if decoded:
            yield decoded
    scanner.close()
