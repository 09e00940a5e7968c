-- Outcomes an app can act on without parsing `error`, and provider ids compared the
-- way hosts mean them.

-- Which outcome a failed row is: the request was wrong (invalid_request), a safety
-- filter stopped it (safety_filtered, not charged), the model is gone (model_retired),
-- the provider failed or never finished (provider_error), nobody can tell whether a job
-- was made (in_doubt: a person settles it with `sora-worker adopt`), or the video lapsed
-- before it was archived (expired: money lost). Null on every row that has not failed;
-- rows that failed before this migration keep null (their `error` says why).
alter table public.videos add column if not exists error_kind text;
alter table public.videos
    add constraint videos_error_kind_known check (error_kind is null or error_kind in (
        'invalid_request', 'safety_filtered', 'model_retired', 'provider_error',
        'in_doubt', 'expired')),
    add constraint videos_error_kind_only_when_failed
        check (error_kind is null or stage = 'failed');

-- A re-queued (or adopted) row is no longer failed: its old outcome goes with it. The
-- name sorts after videos_prepare_request, so this sees the stage that trigger chose.
create or replace function public.videos_settle_error_kind() returns trigger
language plpgsql as $$
begin
    if new.stage is distinct from 'failed' then
        new.error_kind := null;
    end if;
    return new;
end
$$;

drop trigger if exists videos_settle_error_kind on public.videos;
create trigger videos_settle_error_kind before insert or update on public.videos
    for each row execute function public.videos_settle_error_kind();

-- Front ends read outcomes through the public view too (a new column goes last).
create or replace view public.videos_public with (security_invoker = true) as
select id, prompt, image1_url, image2_url, status, video_id, video_url, openai_url,
       model, seconds, size, progress, error, video_bytes, video_sha256, thumbnail_url,
       created_at, updated_at, completed_at, error_kind
from public.videos;

-- A LiteLLM gateway's video ids are `video_` + base64 of
-- `litellm:custom_llm_provider:...;model_id:...;video_id:<upstream id>[;deployment_id:...]`,
-- and the same job can come back encoded two ways (a list drops the deployment part).
-- The upstream video_id is the job's identity: compare ids through this, never as raw
-- strings. Anything else is its own stable form. Mirrors stable_id() in
-- service/providers/ids.py (tests/test_repository_contract.py holds them together).
-- No exception block (a subtransaction per call): every step is guarded instead.
create or replace function public.video_stable_id(id text) returns text
language plpgsql immutable strict parallel safe as $$
declare
    body text := translate(regexp_replace(id, '^video_', ''), '-_', '+/');
    decoded text;
begin
    body := body || repeat('=', (4 - length(body) % 4) % 4);
    if body !~ '^[A-Za-z0-9+/]+={0,2}$' then
        return id;
    end if;
    decoded := encode(decode(body, 'base64'), 'escape');
    if decoded like 'litellm:%' and decoded ~ '(^|;)video_id:[^;]+' then
        return substring(decoded from '(?:^|;)video_id:([^;]+)');
    end if;
    return id;
end
$$;

-- A provider job belongs to one row, however the host spells its id: the unique index
-- of sql/0001 moves from the raw string to the stable form (same name, same rule).
-- Rows that already hold one job under two spellings (a LiteLLM id and the bare one)
-- would make that fail with a bare "is duplicated": name them and say what to do.
do $$
declare
    clashes text;
begin
    select string_agg(format('%s (rows %s)', job, row_ids), '; ') into clashes
    from (select public.video_stable_id(video_id) as job,
                 string_agg(id::text, ', ' order by created_at) as row_ids
          from public.videos where video_id is not null
          group by 1 having count(*) > 1 order by 1 limit 10) as clash;
    if clashes is not null then
        raise exception 'rows hold the same provider job under two spellings of its id: %; '
            'keep the row that should own each job and delete the others (they hold the same '
            'video), or set status = ''queued'' on them to make and pay for a new video each; '
            'then run sora-worker migrate again', clashes;
    end if;
end
$$;
drop index if exists public.videos_video_id_key;
create unique index videos_video_id_key
    on public.videos (public.video_stable_id(video_id)) where video_id is not null;
