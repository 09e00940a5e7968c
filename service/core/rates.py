"""Which request-rate limit a provider call falls under, as plain data.

Every replica calls the same provider with the same key, so a host's limit (Replicate:
600 creates a minute per account; Vertex AI: 50 a minute per project and Veo model)
is shared by all of them. The limits are kept in the database
(``service.database.limits``), where each replica takes its turn before a create or a
poll; this module only says which limit a call falls under and how far apart turns are.

A limit is named ``call:provider`` or ``call:provider:model`` (``create:replicate``,
``poll:replicate``, ``create:google_veo:veo-3.1-generate-001``). Its figures come from
the model registry and the provider registry, and ``SORA_RATE_LIMITS`` overrides them:
``PROVIDER[:MODEL]=CREATES[/OTHERS]`` per minute, entries separated by commas, ``0``
for none (``replicate=300/1000,openai=20``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

Call = Literal["create", "poll"]
"""What a turn is taken for: a create, or any other call (status poll, list)."""

HEADROOM = 0.9
"""The share of a host's published limit the worker uses: turns are spaced for 90 % of
it, so that a request that reaches the host a little later than its turn (the network,
a busy event loop) still finds the host's window with room."""

HOLD = timedelta(seconds=10)
"""How long a step waits in place for a turn it reserved; a turn further away is not
reserved, and the row waits out of the worker (``Throttled``)."""


UNLIMITED = 1_000_000
"""The figure of a call no limit is known for: it takes no turn, but still reads (one
plain read, no lock) whether a host's 429 holds every replica off."""


@dataclass(frozen=True)
class Rule:
    """One limit: its name in the database and the host's requests per minute."""

    key: str
    per_minute: int

    @property
    def spacing(self) -> timedelta:
        """The time between two turns: one request every ``spacing``, everywhere."""
        return timedelta(seconds=60 / (self.per_minute * HEADROOM))


@dataclass(frozen=True)
class RateRules:
    """Requests per minute by ``provider`` or ``provider:model``, for creates and for
    other calls; a name absent or 0 has no limit."""

    creates: Mapping[str, int]
    others: Mapping[str, int]

    def rule(self, provider: str, model: str, call: Call) -> Rule:
        """The limit a ``call`` to ``provider`` for ``model`` falls under: the model's
        own where the host limits per model, else the provider's, else none
        (``UNLIMITED``, named after the provider)."""
        table = self.creates if call == "create" else self.others
        for name in (f"{provider}:{model}", provider):
            per_minute = table.get(name, 0)
            if per_minute > 0:
                return Rule(f"{call}:{name}", per_minute)
        return Rule(f"{call}:{provider}", UNLIMITED)


NO_RULES = RateRules({}, {})


def parse_rate_limits(
    text: str, providers: Collection[str]
) -> dict[str, tuple[int | None, int | None]]:
    """``SORA_RATE_LIMITS`` as {``provider[:model]``: (creates, others)} per minute
    (None: not said). Raises ValueError naming a bad entry."""
    limits: dict[str, tuple[int | None, int | None]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, equals, figures = entry.partition("=")
        provider = name.partition(":")[0].strip()
        creates, slash, others = figures.partition("/")
        numbers = [creates.strip()] + ([others.strip()] if slash else [])
        if not equals or provider not in providers or not all(n.isdigit() for n in numbers):
            raise ValueError(
                f"{entry!r} is not PROVIDER[:MODEL]=CREATES[/OTHERS] requests per minute "
                f"with PROVIDER one of {', '.join(sorted(providers))} (e.g. replicate=300/1000)"
            )
        limits[name.strip()] = (int(numbers[0]), int(numbers[1]) if slash else None)
    return limits


def rules_from(
    defaults: Mapping[str, tuple[int | None, int | None]],
    overrides: Mapping[str, tuple[int | None, int | None]],
) -> RateRules:
    """The registry's figures (``defaults``), each replaced where ``overrides`` says."""
    merged = dict(defaults)
    for name, (creates, others) in overrides.items():
        old_creates, old_others = merged.get(name, (None, None))
        merged[name] = (
            creates if creates is not None else old_creates,
            others if others is not None else old_others,
        )
    return RateRules(
        {n: c for n, (c, _) in merged.items() if c is not None},
        {n: o for n, (_, o) in merged.items() if o is not None},
    )
