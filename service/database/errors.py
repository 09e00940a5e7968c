"""The database port's errors, and the one place driver failures become them.

Every statement the adapters run goes through ``driver_errors`` (or ``bounded``), so no
layer above ever sees asyncpg's exceptions: a lost connection is ``DatabaseUnavailable``,
a broken rule is ``Refused`` or ``Conflict``, a schema not migrated ``SchemaMissing``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from enum import StrEnum
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


class RepositoryError(Exception):
    """Base of the port's errors; ``str()`` says what failed without driver internals."""


class DatabaseUnavailable(RepositoryError):
    """The database could not be reached or could not run the statement: try again later."""


class SchemaMissing(RepositoryError):
    """The table or a column is missing: the migrations have not run."""


class Refused(RepositoryError):
    """The database refused the values (a CHECK or NOT NULL rule): retrying the same
    write cannot help; it is a bug in the caller or a row the schema does not allow."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
        """The database's own words (and hint) in one line, for a person who asked."""


class BudgetSpent(Refused):
    """The day's budget refused to record a submission's intent (sql/0011's
    videos_count_spend): nothing was written, and nothing may be sent."""


class LeaseLost(RepositoryError):
    """The row is no longer ours (another worker claimed it, it was re-queued, or its
    stage moved on): the write changed nothing."""


class Rule(StrEnum):
    """The uniqueness rules a checkpoint can run into."""

    ONE_ROW_PER_VIDEO = "videos_video_id_key"
    """A provider job belongs to one row."""


class Conflict(RepositoryError):
    """The write would break a uniqueness rule; nothing changed. ``rule`` names it."""

    def __init__(self, rule: Rule | None, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@contextlib.contextmanager
def driver_errors(doing: str) -> Iterator[None]:
    """Turn every driver and socket failure into the port's own errors."""
    try:
        yield
    except asyncpg.UniqueViolationError as err:
        rule = next((r for r in Rule if r.value == err.constraint_name), None)
        raise Conflict(rule, f"{doing}: {err.constraint_name or 'a uniqueness rule'}") from err
    except asyncpg.IntegrityConstraintViolationError as err:
        said = _reason(err)
        broken = err.constraint_name or "a rule"
        raise Refused(f"{doing}: refused by {broken}: {said}", said) from err
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as err:
        raise SchemaMissing(f"{doing}: {err}; run `sora-worker migrate`") from err
    except (
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    ) as err:
        if isinstance(err, asyncpg.PostgresError) and str(err.sqlstate).startswith("PT"):
            # sql/0011's quota and budget refusals (PostgREST's PTxxx codes): an answer,
            # not an outage.
            refused = BudgetSpent if err.sqlstate == "PT503" else Refused
            raise refused(f"{doing}: {_reason(err)}", _reason(err)) from err
        raise DatabaseUnavailable(f"{doing}: {err or type(err).__name__}") from err


def _reason(err: asyncpg.PostgresError) -> str:
    """The server's message and hint in one line (``str(err)`` adds DETAIL and HINT on
    lines of their own, and DETAIL may carry the whole row)."""
    message = getattr(err, "message", None) or (err.args[0] if err.args else type(err).__name__)
    hint = getattr(err, "hint", None)
    return f"{message}; {hint}" if hint else str(message)


_ABANDONED: set[asyncio.Future[Any]] = set()


async def bounded(query: Awaitable[T], within: float, doing: str) -> T:
    """``query``'s result, or DatabaseUnavailable after ``within`` seconds.

    Not ``asyncio.timeout``: cancelling a query whose connection swallows packets waits
    for the pool to take the connection back, which can take as long as the freeze.
    Here the query is cancelled and left to finish its cleanup on its own.
    """
    task = asyncio.ensure_future(query)
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        task.cancel()
        _ABANDONED.add(task)
        task.add_done_callback(_forget)
        raise DatabaseUnavailable(f"{doing}: no answer within {within:g} s")
    with driver_errors(doing):
        return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a cancelled query's error is expected, not news
