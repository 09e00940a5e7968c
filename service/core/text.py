"""Text that came from elsewhere (a provider's error, a gateway's message, a row) made
safe to store and to show: one line, no control characters, bounded.

A provider's error text reaches the row's ``error`` and, from there, an operator's
terminal (``sora-worker list``) and an app's page. Raw, it can carry newlines (LiteLLM
puts them in its messages), terminal escapes that rewrite what the operator sees, or
megabytes. Here it becomes one line with every control character spelt out (``\\x1b``),
cut in the middle when long, so both its start (what failed) and its end (what to do)
survive.
"""

from __future__ import annotations

import re
import unicodedata

MAX_STORED = 4000
"""The longest ``error`` written to a row (a prompt of up to 4000 characters may be in
an in-doubt message; the cut keeps the start and the advice at the end)."""

_BREAKS = re.compile(r"\s*[\r\n\v\f\u2028\u2029]+\s*")


def _spelt(char: str) -> str:
    if char == "\t":
        return " "
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control or invisible formatting character (C0, DEL, C1, bidi
    overrides) spelt out, and line breaks as `` | ``: safe to print on a terminal."""
    text = _BREAKS.sub(" | ", text)
    return "".join(
        _spelt(char) if unicodedata.category(char) in ("Cc", "Cf") else char for char in text
    )


def one_line(text: str, limit: int = MAX_STORED) -> str:
    """``printable(text)`` of at most ``limit`` characters, cut in the middle (marked)."""
    line = printable(text).strip()
    if len(line) <= limit:
        return line
    mark = f" ...[{len(line) - limit} characters cut]... "
    keep = max(limit - len(mark), 2)
    return line[: keep // 2 + keep % 2] + mark + line[len(line) - keep // 2 :]
