"""What the table's history says about a model: how long its recent jobs took.

Learnt by the worker from completed rows of the same provider and model
(``service.database.durations``, cached in ``service.worker.durations``) and handed to
the machine inside events, so that the core stays pure: it decides on plain data.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

FEWEST = 10
"""A model's learnt durations count once this many of its jobs are known."""
STILL_POSSIBLE = 5
"""Fewer learnt durations than this longer than a job has taken: it is past what
history knows, and polls thin out again (half the time taken)."""
EARLIEST = 0.05
"""The quantile of the durations still possible taken as the earliest likely end: the
few jobs quicker than that wait longer for their first poll, and every other job is
spared the polls that would catch them (about one in seven, for durations spread as
0.5x-2x of the typical time: ``make bench``, "completion -> URL")."""

NOW = timedelta(0)


@dataclass(frozen=True)
class Durations:
    """How long a model's recent jobs took from submission to generated, in seconds,
    sorted: learnt from the table (``service.database.durations``)."""

    seconds: tuple[float, ...]

    @staticmethod
    def of(values: Iterable[float]) -> Durations:
        return Durations(tuple(sorted(values)))

    def earliest_end(self, elapsed: timedelta) -> timedelta | None:
        """The earliest likely end of a job still running after ``elapsed``: the
        ``EARLIEST`` quantile of the learnt durations longer than that. None when too
        few are known, or too few are that long."""
        past = bisect_right(self.seconds, elapsed.total_seconds())
        possible = len(self.seconds) - past
        if len(self.seconds) < FEWEST or possible < STILL_POSSIBLE:
            return None
        return timedelta(seconds=self.seconds[past + int(EARLIEST * possible)])
