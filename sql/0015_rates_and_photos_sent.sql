-- Two things the providers' world asked for (issue 25).
--
-- 1. How a row's photos went to the generator. Models that take a first and a last
--    frame (Veo 3.1, Kling, Seedance, MiniMax, Wan) get photo 1 as the first frame and
--    photo 2 as the last; models that take one image get both composed into one frame.
--    Written with the intent (service/media/references.py); null: no photos, or sent
--    before this migration (composed, then).
alter table public.videos add column if not exists photos_sent text;
alter table public.videos drop constraint if exists videos_photos_sent_known;
alter table public.videos add constraint videos_photos_sent_known
    check (photos_sent in ('composed', 'first_last', 'references'));

-- 2. One request rate for every replica. A host limits one key (or project), whatever
--    the number of workers using it; each replica alone respecting the limit sends N
--    times it. So turns are handed out here, one row per limit (service/core/rates.py
--    names them: 'create:replicate', 'poll:replicate', 'create:google_veo:MODEL'), by
--    the generic cell rate algorithm: next_at is the earliest moment the next request
--    may go; a turn is that moment (or now), and moves next_at on by the limit's
--    spacing. A turn is reserved only when it is at most p_hold seconds away (the
--    worker then waits in place); further away, nothing is reserved and the caller
--    is told how long to wait. A host's 429 with Retry-After sets blocked_until, which
--    every replica's next turn waits out. The database's clock decides, never a
--    worker's.
create table if not exists sora_worker.rate_limits (
    key           text primary key,
    per_minute    integer not null check (per_minute > 0),
    next_at       timestamptz not null default now(),
    blocked_until timestamptz,
    granted       bigint not null default 0,
    deferred      bigint not null default 0,
    throttled     bigint not null default 0,
    updated_at    timestamptz not null default now()
);

create or replace function sora_worker.take_turn(
    p_key text, p_per_minute integer, p_spacing double precision, p_hold double precision,
    out granted boolean, out wait double precision)
language plpgsql security definer set search_path = '' as $$
declare
    b sora_worker.rate_limits;
    now_ timestamptz;
    turn timestamptz;
begin
    insert into sora_worker.rate_limits (key, per_minute) values (p_key, p_per_minute)
    on conflict (key) do nothing;
    -- Turns of one limit are handed out one at a time (the row lock); other limits and
    -- everything else go on.
    select * into b from sora_worker.rate_limits r where r.key = p_key for update;
    now_ := clock_timestamp();
    turn := greatest(b.next_at, now_, coalesce(b.blocked_until, now_));
    wait := extract(epoch from turn - now_);
    granted := wait <= p_hold;
    if granted then
        update sora_worker.rate_limits r
        set next_at = turn + make_interval(secs => p_spacing), per_minute = p_per_minute,
            granted = r.granted + 1, updated_at = now_
        where r.key = p_key;
    else
        update sora_worker.rate_limits r
        set deferred = r.deferred + 1, per_minute = p_per_minute, updated_at = now_
        where r.key = p_key;
    end if;
end
$$;

-- A host answered 429: nobody asks it again under this limit for p_seconds.
create or replace function sora_worker.hold_off(
    p_key text, p_per_minute integer, p_seconds double precision) returns void
language plpgsql security definer set search_path = '' as $$
begin
    insert into sora_worker.rate_limits as r (key, per_minute, blocked_until, throttled)
    values (p_key, p_per_minute, clock_timestamp() + make_interval(secs => p_seconds), 1)
    on conflict (key) do update
    set blocked_until = greatest(coalesce(r.blocked_until, clock_timestamp()),
                                 clock_timestamp() + make_interval(secs => p_seconds)),
        throttled = r.throttled + 1, updated_at = clock_timestamp();
end
$$;

-- Out of the public's reach like every object in sora_worker: the function below
-- (sql/0010) revokes every table, sequence and function of the schema from public,
-- anon and authenticated, and every `migrate` runs it again.
select sora_worker.assert_privileges();
