"""What videos may be asked for and what they may cost, as plain data.

The worker's settings and the model registry decide these (``runtime.cost_limits``); the
database keeps them (``sora_worker.settings`` and ``sora_worker.allowed_models``, see
sql/0011), where its insert checks and the worker's last look before each submission
read them, so both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class AllowedModel:
    """A provider/model pair rows may name, with what it offers and what it costs."""

    provider: str
    model: str
    sizes: frozenset[str] | None = None
    """None: any size the schema allows (a model the registry does not know)."""
    seconds: frozenset[str] | None = None
    usd_per_second: float | None = None
    """An estimate in US dollars; None when no published price is known (counted at
    ``CostLimits.unknown_usd_per_second``)."""


@dataclass(frozen=True)
class CostLimits:
    """Everything the worker tells the database at start."""

    allowed: tuple[AllowedModel, ...]
    default_provider: str
    default_model: str
    default_size: str
    default_seconds: str
    user_daily_videos: int
    user_daily_seconds: int
    daily_budget_usd: float
    unknown_usd_per_second: float
    public_prompts: bool


@dataclass(frozen=True)
class Admission:
    """The database's answer, right before a submission, to "may this be made now?"."""

    refusal: str | None
    """Why the request cannot be made as it is (model, size, length), or None."""
    spent_usd: float
    """Today's estimated spend (UTC day)."""
    cost_usd: float
    """This video's estimated cost."""
    budget_usd: float
    over_budget: bool
    """Whether this video would take today's spend past the budget: decided by the
    database in exact numerics (in floats, 0.80 + 0.40 > 1.20, and the third of three
    videos that fit a 1.20 budget would wait for tomorrow)."""


BUDGET_LOOK_AGAIN = timedelta(minutes=10)
"""How often a row over budget looks again (the operator may raise the budget)."""


def over_budget_wait(as_of: datetime) -> timedelta:
    """How long a row over budget waits: until the budget's day ends (midnight UTC),
    looking again every ``BUDGET_LOOK_AGAIN``. ``as_of`` is the database's clock."""
    now = as_of.astimezone(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return min(BUDGET_LOOK_AGAIN, midnight - now)
