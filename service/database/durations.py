"""How long each model's recent jobs took: the table's own history (sql/0016).

One statement, cheap at any table size: a loose scan of ``videos_generated_idx`` finds
each (provider, model) that has finished jobs, then reads the most recent ``per_model``
of each from the same index. A duration is ``generated_at - submitted_at`` (both by the
database's clock, or the provider's word kept within them), within the generation
timeout: a row adopted long after its job ran would otherwise teach a wrong duration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

import asyncpg

from service.database.errors import driver_errors

RECENT = """
with recursive pairs as (
    (select provider, model from public.videos
     where generated_at is not null and submitted_at is not null      -- videos_generated_idx
       and provider is not null and model is not null
     order by provider, model limit 1)
    union all
    select next.provider, next.model from pairs, lateral (
        select v.provider, v.model from public.videos v
        where v.generated_at is not null and v.submitted_at is not null
          and v.provider is not null and v.model is not null
          and (v.provider, v.model) > (pairs.provider, pairs.model)  -- the next pair
        order by v.provider, v.model limit 1) as next
)
select pairs.provider, pairs.model, recent.seconds from pairs, lateral (
    select extract(epoch from v.generated_at - v.submitted_at)::float8 as seconds
    from public.videos v
    where v.generated_at is not null and v.submitted_at is not null
      and v.provider = pairs.provider and v.model = pairs.model
    order by v.generated_at desc limit $1) as recent
where recent.seconds > 0 and recent.seconds <= extract(epoch from $2::interval)
"""


async def recent(
    pool: asyncpg.Pool, per_model: int, longest: timedelta
) -> Mapping[tuple[str, str], Sequence[float]]:
    """The last ``per_model`` durations (seconds) of each (provider, model), up to
    ``longest`` each."""
    with driver_errors("reading the models' recent durations"):
        rows = await pool.fetch(RECENT, per_model, longest)
    found: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        found.setdefault((row["provider"], row["model"]), []).append(row["seconds"])
    return found
