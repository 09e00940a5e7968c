-- Nothing bounded cost (issue 23): a row picked any provider, model, size and length, and
-- nothing limited how many a person or everyone together asked for. Now the database
-- knows what the worker allows and what it costs, and refuses at insert, with words an
-- app can show:
--
-- - an allowlist of provider/model pairs, each with the sizes and lengths it offers and
--   its estimated price per second (service/providers/models.py is the source: the
--   worker rewrites this table from its settings at every start);
-- - per person (rows with a user_id): at most user_daily_videos rows and
--   user_daily_seconds seconds of video per UTC day;
-- - a global daily budget in estimated US dollars: spent today (every submission since
--   midnight UTC, a job abandoned by a re-queue included) plus what waiting requests
--   will cost.
--
-- The service role and the operator (rows without a user_id) meet the allowlist here and
-- the budget at submission: the worker looks right before each one and makes a row over
-- budget wait, and recording an intent past the budget is refused (videos_count_spend).

alter table sora_worker.settings
    add column if not exists default_provider       text    not null default 'openai',
    add column if not exists default_model          text    not null default 'sora-2',
    add column if not exists default_size           text    not null default '720x1280',
    add column if not exists default_seconds        text    not null default '4',
    add column if not exists user_daily_videos      integer not null default 5
        check (user_daily_videos >= 0),
    add column if not exists user_daily_seconds     integer not null default 60
        check (user_daily_seconds >= 0),
    add column if not exists daily_budget_usd       numeric not null default 20
        check (daily_budget_usd >= 0),
    add column if not exists unknown_usd_per_second numeric not null default 0.50
        check (unknown_usd_per_second > 0);

-- sizes / seconds null: any the CHECKs below allow (a model the registry does not know,
-- allowed by SORA_ALLOWED_MODELS). usd_per_second null: no published price is known;
-- counted at settings.unknown_usd_per_second (the dearest known price).
create table if not exists sora_worker.allowed_models (
    provider       text not null,
    model          text not null,
    sizes          text[],
    seconds        text[],
    usd_per_second numeric check (usd_per_second > 0),
    primary key (provider, model)
);
-- The registry as of this migration, for a database a worker has not started on yet.
insert into sora_worker.allowed_models (provider, model, sizes, seconds, usd_per_second) values
    ('openai', 'sora-2', '{720x1280,1280x720}', '{4,8,12}', 0.10),
    ('openai', 'sora-2-pro', '{720x1280,1280x720,1024x1792,1792x1024}', '{4,8,12}', 0.50),
    ('google_veo', 'veo-3.1-generate-preview', '{1280x720,720x1280,1920x1080,1080x1920}',
     '{4,6,8}', 0.40),
    ('google_veo', 'veo-3.1-fast-generate-preview', '{1280x720,720x1280,1920x1080,1080x1920}',
     '{4,6,8}', 0.15),
    ('replicate', 'google/veo-3.1', '{1280x720,720x1280,1920x1080,1080x1920}', '{4,6,8}', null),
    ('replicate', 'google/veo-3.1-fast', '{1280x720,720x1280,1920x1080,1080x1920}', '{4,6,8}',
     null)
on conflict do nothing;

-- Refusals at insert, counted for /metrics. Sequences, because a refused insert rolls
-- back everything else it wrote, but never a nextval.
create sequence if not exists sora_worker.refused_model;
create sequence if not exists sora_worker.refused_quota;
create sequence if not exists sora_worker.refused_budget;

-- Why a request cannot be made as it is, or null. A dated snapshot (sora-2-2025-10-06)
-- is allowed with its model. Shared by the insert trigger and the worker's last look
-- before it submits (service/database/costs.py), so both say the same.
create or replace function sora_worker.refusal(
    p_provider text, p_model text, p_size text, p_seconds text) returns text
language plpgsql stable security definer set search_path = '' as $$
declare
    s sora_worker.settings;
    m sora_worker.allowed_models;
    v_provider text;
    v_model text;
    v_size text;
    v_seconds text;
begin
    select * into s from sora_worker.settings;
    v_provider := coalesce(p_provider, s.default_provider);
    v_model := coalesce(p_model, s.default_model);
    v_size := coalesce(p_size, s.default_size);
    v_seconds := coalesce(p_seconds, s.default_seconds);
    if v_size !~ '^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$' then
        return format('size %s is not WIDTHxHEIGHT, like 720x1280', v_size);
    end if;
    if v_seconds !~ '^[1-9][0-9]{0,3}$' then
        return format('seconds %s is not a whole number of seconds, like 4', v_seconds);
    end if;
    select * into m from sora_worker.allowed_models a
    where a.provider = v_provider
      and a.model in (v_model, regexp_replace(v_model, '-[0-9]{4}-[0-9]{2}-[0-9]{2}$', ''))
    order by a.model = v_model desc
    limit 1;
    if not found then
        return format('model %s is not offered here%s; use one of: %s', v_model,
            case when p_provider is null then '' else format(' (provider %s)', v_provider) end,
            coalesce((select string_agg(a.model, ', ' order by a.model)
                      from sora_worker.allowed_models a where a.provider = v_provider), 'none'));
    end if;
    if m.sizes is not null and not v_size = any (m.sizes) then
        return format('size %s is not offered by %s; use one of: %s',
            v_size, v_model, array_to_string(m.sizes, ', '));
    end if;
    if m.seconds is not null and not v_seconds = any (m.seconds) then
        return format('%s seconds is not offered by %s; use one of: %s',
            v_seconds, v_model, array_to_string(m.seconds, ', '));
    end if;
    return null;
end
$$;

-- One video's estimated cost: its length times its model's price per second (the
-- dearest known price when the model's is unknown).
create or replace function sora_worker.estimated_usd(
    p_provider text, p_model text, p_seconds text) returns numeric
language sql stable security definer set search_path = '' as $$
    select coalesce(p_seconds, s.default_seconds)::numeric * coalesce(
        (select max(a.usd_per_second) from sora_worker.allowed_models a
         where a.provider = coalesce(p_provider, s.default_provider)
           and a.model in (coalesce(p_model, s.default_model),
               regexp_replace(coalesce(p_model, s.default_model),
                              '-[0-9]{4}-[0-9]{2}-[0-9]{2}$', ''))),
        s.unknown_usd_per_second)
    from sora_worker.settings s
$$;

-- The day's estimated spend, kept as it happens (one row per UTC day): a submission is
-- charged when its intent is recorded, before the provider is called, and refunded when
-- the provider certainly made nothing (the worker drops the key) or did not charge (the
-- request was refused or filtered). A job a re-queue or a delete abandons stays charged.
create table if not exists sora_worker.daily_spend (
    day date primary key,
    usd numeric not null default 0 check (usd >= 0)
);

create or replace function sora_worker.spent_today() returns numeric
language sql stable security definer set search_path = '' as $$
    select coalesce((select d.usd from sora_worker.daily_spend d
                     where d.day = (now() at time zone 'UTC')::date), 0)
$$;

-- What the requests still waiting will cost once submitted.
create or replace function sora_worker.reserved_usd() returns numeric
language sql stable security definer set search_path = '' as $$
    select coalesce(sum(sora_worker.estimated_usd(v.provider, v.model, v.seconds)), 0)
    from public.videos v where v.stage = 'pending'
$$;

-- The insert's checks. A person's inserts take turns on an advisory lock of their own,
-- and then every person's on the budget's, so that 50 inserts at once cannot all see
-- room for one more (each reads after the one before it committed). The errors carry
-- PostgREST's PTxxx codes, so an app gets HTTP 429 (the person's quota) or 503 (the
-- day's budget) with the message and hint as they are.
create or replace function sora_worker.limit_request() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
    s sora_worker.settings;
    why text;
    today timestamptz := date_trunc('day', now(), 'UTC');
    asked integer;
    videos integer;
    seconds integer;
begin
    why := sora_worker.refusal(new.provider, new.model, new.size, new.seconds);
    if why is not null then
        perform nextval('sora_worker.refused_model');
        raise exception using errcode = 'check_violation', message = why,
            hint = 'leave model, size and seconds out for the defaults, or ask the operator '
                || 'to allow the model (SORA_ALLOWED_MODELS)';
    end if;
    if new.user_id is null then
        return new;  -- the service role's and the operator's rows: nobody's quota
    end if;
    select * into s from sora_worker.settings;
    asked := coalesce(new.seconds, s.default_seconds)::integer;
    perform pg_advisory_xact_lock(1397707345, hashtext(new.user_id::text));  -- 'SORQ'
    select count(*), coalesce(sum(coalesce(v.seconds, s.default_seconds)::integer), 0)
    into videos, seconds
    from public.videos v
    where v.user_id = new.user_id and v.created_at >= today;
    if videos >= s.user_daily_videos then
        perform nextval('sora_worker.refused_quota');
        raise exception using errcode = 'PT429',
            message = format('you have asked for %s videos today, the most one person may '
                             '(%s a day)', videos, s.user_daily_videos),
            hint = 'try again after midnight UTC';
    end if;
    if seconds + asked > s.user_daily_seconds then
        perform nextval('sora_worker.refused_quota');
        raise exception using errcode = 'PT429',
            message = format('a %s-second video would take you past %s seconds of video '
                             'today (%s asked for so far)', asked, s.user_daily_seconds, seconds),
            hint = 'ask for a shorter video, or try again after midnight UTC';
    end if;
    perform pg_advisory_xact_lock(1397707330, 0);  -- 'SORB'
    if sora_worker.spent_today() + sora_worker.reserved_usd()
       + sora_worker.estimated_usd(new.provider, new.model, new.seconds) > s.daily_budget_usd then
        perform nextval('sora_worker.refused_budget');
        raise exception using errcode = 'PT503',
            message = 'no more videos can be made today: the service has reached its daily '
                      'budget',
            hint = 'try again after midnight UTC';
    end if;
    return new;
end
$$;

-- After videos_guard_request (a row carrying a job is refused for that first), before
-- videos_prepare_request.
drop trigger if exists videos_limit_request on public.videos;
create trigger videos_limit_request before insert on public.videos
    for each row execute function sora_worker.limit_request();

-- The budget's wall for every submission, the service role's and the operator's rows
-- included: no intent is recorded past it (the worker then lets the row wait; it looks
-- first, so this answers only when replicas race for the last of the budget). The day's
-- row is locked by the charge, so intents take turns on it and never overshoot.
create or replace function sora_worker.count_spend() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
    total numeric;
begin
    if new.stage = 'submitting' and new.submit_key is not null
       and new.submit_key is distinct from old.submit_key then
        insert into sora_worker.daily_spend as d (day, usd)
        values ((now() at time zone 'UTC')::date,
                sora_worker.estimated_usd(new.provider, new.model, new.seconds))
        on conflict (day) do update set usd = d.usd + excluded.usd
        returning d.usd into total;
        if total > (select s.daily_budget_usd from sora_worker.settings s) then
            raise exception using errcode = 'PT503',
                message = 'no more videos can be made today: the service has reached its '
                          'daily budget',
                hint = 'the row waits for the next day (midnight UTC), or for '
                       'SORA_DAILY_BUDGET_USD to be raised';
        end if;
    elsif old.submitted_at is not null
          and ((old.submit_key is not null and new.submit_key is null
                and new.stage = 'submitting')
               or (new.stage = 'failed' and old.stage <> 'failed'
                   and (old.submit_key is not null or old.video_id is not null)
                   and new.error_kind in ('invalid_request', 'safety_filtered',
                                          'model_retired'))) then
        update sora_worker.daily_spend d
        set usd = greatest(d.usd - sora_worker.estimated_usd(old.provider, old.model,
                                                             old.seconds), 0)
        where d.day = (old.submitted_at at time zone 'UTC')::date;
    end if;
    return new;
end
$$;

drop trigger if exists videos_count_spend on public.videos;
create trigger videos_count_spend before update on public.videos
    for each row when (new.submit_key is distinct from old.submit_key
                       or new.stage is distinct from old.stage)
    execute function sora_worker.count_spend();

-- The CHECKs' upper bounds were absurd (9999 seconds, 99999x99999). A request asks for at
-- most 60 seconds and 4096 pixels a side, whatever the model (the allowlist narrows it
-- further); finished and running rows keep what they were made with. A waiting request
-- beyond that fails now, saying why, rather than stop the constraint.
update public.videos set stage = 'failed', status = 'failed', error_kind = 'invalid_request',
    error = 'cannot be generated as it is: at most 60 seconds and 4096 pixels a side; fix the '
            || 'row and set status to queued'
where stage = 'pending'
  and ((seconds ~ '^[0-9]+$' and seconds::numeric > 60)
       or (size ~ '^[0-9]+x[0-9]+$' and (split_part(size, 'x', 1)::numeric > 4096
                                          or split_part(size, 'x', 2)::numeric > 4096)));

alter table public.videos
    add constraint videos_seconds_bounded check (stage <> 'pending' or case
        when seconds ~ '^[0-9]{1,4}$' then seconds::integer <= 60 else true end),
    add constraint videos_size_bounded check (stage <> 'pending' or case
        when size ~ '^[0-9]{1,5}x[0-9]{1,5}$'
            then split_part(size, 'x', 1)::integer <= 4096
                 and split_part(size, 'x', 2)::integer <= 4096
        else true end);

select sora_worker.assert_privileges();
