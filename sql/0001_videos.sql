-- The videos table: the seed's columns, kept as they were so existing front ends keep
-- working, plus the worker's columns. The table is the truth: every step the worker
-- takes is recorded here, so a crash resumes from the last checkpoint.
--
-- Written to run on plain PostgreSQL and on Supabase, and on a database where the
-- seed app already created `videos` (hence IF NOT EXISTS everywhere and the backfill).


create table if not exists public.videos (
    id          uuid primary key default gen_random_uuid(),
    prompt      text,
    image1_url  text,
    image2_url  text,
    status      text not null default 'queued',
    video_id    text,
    video_url   text,
    openai_url  text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

alter table public.videos
    add column if not exists model             text,
    add column if not exists seconds           text,
    add column if not exists size              text,
    add column if not exists provider          text,
    add column if not exists stage             text,
    add column if not exists progress          integer not null default 0,
    add column if not exists attempts          integer not null default 0,
    add column if not exists next_attempt_at   timestamptz not null default now(),
    add column if not exists locked_by         text,
    add column if not exists locked_until      timestamptz,
    add column if not exists error             text,
    add column if not exists submit_key        uuid,
    add column if not exists submitted_at      timestamptz,
    add column if not exists video_bytes       bigint,
    add column if not exists video_sha256      text,
    add column if not exists thumbnail_url     text,
    add column if not exists openai_expires_at timestamptz,
    add column if not exists completed_at      timestamptz;

-- Rows that existed before the worker (a seed table) get the stage their status implies.
-- A seed row still 'processing' with an OpenAI id is a paid-for job: keep polling it.
update public.videos set stage = case
        when status = 'completed' then 'completed'
        when status = 'failed' then 'failed'
        when status = 'processing' and video_id is not null then 'generating'
        when status = 'processing' then 'failed'
        else 'pending'
    end,
    status = case when status = 'processing' and video_id is null then 'failed' else status end,
    error = case
        when status = 'processing' and video_id is null
            then 'found processing without a provider id when the worker was installed; '
                 || 'set status to queued to generate it again'
        when status = 'failed' then coalesce(error, 'failed before the worker was installed')
        else error end,
    -- The generation deadline counts from here for jobs adopted mid-flight.
    submitted_at = case when status = 'processing' and video_id is not null
        then coalesce(updated_at, created_at, now()) end
where stage is null;

-- An old request that could never be generated as it is fails now, with the reason,
-- rather than being claimed (and refused by the constraints below) over and over.
update public.videos set stage = 'failed', status = 'failed',
    error = 'cannot be generated as it is: the prompt must be 1 to 4000 characters and '
            || 'photo URLs at most 2048; fix the row and set status to queued'
where stage = 'pending' and not (
    prompt is not null and char_length(btrim(prompt)) between 1 and 4000
    and coalesce(char_length(image1_url), 0) <= 2048
    and coalesce(char_length(image2_url), 0) <= 2048);

alter table public.videos alter column stage set default 'pending';
alter table public.videos alter column stage set not null;
alter table public.videos alter column status set default 'queued';

-- The stage is the worker's fine-grained state; status is the coarse one front ends read.
-- The database refuses a pair that disagrees, so no code path can leave them apart.
alter table public.videos
    add constraint videos_status_known
        check (status in ('queued', 'processing', 'completed', 'failed')),
    add constraint videos_stage_known
        check (stage in ('pending', 'submitting', 'generating', 'archiving', 'completed', 'failed')),
    add constraint videos_stage_matches_status check (
        (stage = 'pending' and status = 'queued')
        or (stage in ('submitting', 'generating', 'archiving') and status = 'processing')
        or (stage = 'completed' and status = 'completed')
        or (stage = 'failed' and status = 'failed')),
    -- Checked for requests (stage pending): a finished or in-flight row is past its prompt.
    add constraint videos_prompt_length check (stage <> 'pending'
        or (prompt is not null and char_length(btrim(prompt)) between 1 and 4000)),
    -- Shapes only: which sizes, lengths and models exist is the provider adapter's call.
    add constraint videos_size_format
        check (size is null or size ~ '^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$'),
    add constraint videos_seconds_format
        check (seconds is null or seconds ~ '^[1-9][0-9]{0,3}$'),
    add constraint videos_model_format
        check (model is null or char_length(model) between 1 and 200),
    add constraint videos_image_urls_format check (stage <> 'pending' or (
        coalesce(char_length(image1_url), 0) <= 2048
        and coalesce(char_length(image2_url), 0) <= 2048)),
    add constraint videos_progress_range check (progress between 0 and 100),
    add constraint videos_attempts_nonnegative check (attempts >= 0),
    add constraint videos_sha256_format check (video_sha256 is null or video_sha256 ~ '^[0-9a-f]{64}$'),
    add constraint videos_bytes_positive check (video_bytes is null or video_bytes > 0),
    -- completed_at is set only by the worker: seed rows finished elsewhere are exempt.
    add constraint videos_completed_has_video check (status <> 'completed' or completed_at is null
        or (video_url is not null and video_sha256 is not null)),
    add constraint videos_failed_has_error check (status <> 'failed' or error is not null);

-- The claim query's index: only rows the worker still owes work, ordered by when they
-- are due. Finished rows never enter it, so it stays small however large the table grows.
create index if not exists videos_due_idx on public.videos (next_attempt_at)
    where stage in ('pending', 'submitting', 'generating', 'archiving');
create index if not exists videos_created_at_idx on public.videos (created_at desc);
create unique index if not exists videos_video_id_key on public.videos (video_id)
    where video_id is not null;
-- At most one row may be in doubt (intent recorded, outcome unknown) per identical
-- request. The provider echoes only the request, not our key, so two identical
-- submissions in doubt at once could not be told apart when reconciling; this makes
-- identical requests take turns instead. md5: prompts can exceed a btree entry.
create unique index if not exists videos_one_in_doubt_per_request
    on public.videos (md5(prompt), model, size, seconds)
    where stage = 'submitting' and submit_key is not null;

-- A hot, small queue table bloats its partial index between autovacuum passes
-- (DESIGN.md, measured): vacuum it early and often.
alter table public.videos set (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 200,
    autovacuum_analyze_scale_factor = 0.02
);

create or replace function public.videos_touch_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end
$$;

drop trigger if exists videos_touch_updated_at on public.videos;
create trigger videos_touch_updated_at before update on public.videos
    for each row execute function public.videos_touch_updated_at();
