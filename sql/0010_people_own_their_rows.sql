-- The app is public (issue 23). Each person reads only the rows they asked for; a
-- gallery view shows finished videos without anything personal; a signed-in person asks
-- for a video with the request's columns and nothing else; nobody but the worker writes
-- the worker's columns; a new row never arrives carrying a provider job or a stage; a
-- job that a re-queue (or a delete) leaves running is written down for the worker to
-- cancel; the worker's own tables live in a schema the API cannot reach.
--
-- Supabase's default privileges grant every new table, view, function and sequence in
-- `public` to anon, authenticated and service_role, so nothing here is left to them:
-- every privilege is said explicitly, and sora_worker.assert_privileges() says it again
-- at the end of every `sora-worker migrate` (service/database/migrations.py).

-- The worker's own objects. The migrations' bootstrap creates the schema (and moves the
-- ledger into it) before any file runs; said again so the file reads on its own.
create schema if not exists sora_worker;
revoke all on schema sora_worker from public;

-- Supabase's auth.uid() where it does not exist (plain PostgreSQL): the `sub` claim
-- PostgREST sets per request, in Supabase's own words. Without claims (the worker, the
-- operator, `sora-worker request`) it is null.
do $$
begin
    if to_regnamespace('auth') is null then
        create schema auth;
        grant usage on schema auth to anon, authenticated, service_role;
    end if;
    if to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid language sql stable as $uid$
            select nullif(coalesce(current_setting('request.jwt.claim.sub', true),
                (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')), '')::uuid
        $uid$;
    end if;
end
$$;

-- Whose row it is. Null for rows the service role, the table owner or `sora-worker
-- request` inserts (and for every row that existed before this migration).
alter table public.videos add column if not exists user_id uuid;
alter table public.videos alter column user_id set default auth.uid();
-- A person's rows by day: the read policy's and the daily quota's (sql/0011) index.
create index if not exists videos_user_id_idx on public.videos (user_id, created_at)
    where user_id is not null;

-- What the worker tells the database (rewritten from its settings at every start, see
-- service/database/costs.py); sql/0011 adds the cost controls.
create table if not exists sora_worker.settings (
    only_row       boolean primary key default true check (only_row),
    public_prompts boolean not null default false,
    written_by     text,
    written_at     timestamptz
);
insert into sora_worker.settings default values on conflict do nothing;

-- Reading: a signed-in person (Supabase's anonymous sign-ins included: role
-- authenticated) reads the rows they asked for, every column of them, so a front end
-- that reads its row keeps working. anon reads nothing of the table (the gallery view
-- is theirs). Supabase Realtime applies this policy to each subscriber of
-- postgres_changes, so a person hears only their own rows; the worker subscribes with
-- the service role, which bypasses RLS, and hears all.
alter table public.videos enable row level security;
drop policy if exists videos_public_read on public.videos;
drop policy if exists videos_owner_read on public.videos;
create policy videos_owner_read on public.videos for select to authenticated
    using (user_id = (select auth.uid()));

-- Asking: a signed-in person inserts a request for themselves (user_id defaults to
-- their id and may not be anyone else's), with only the request's columns (granted in
-- sora_worker.assert_privileges()). No UPDATE or DELETE policy: a person neither
-- re-queues nor deletes (either could silently abandon a paid job); their app's
-- backend (service role) or the operator does.
drop policy if exists videos_owner_request on public.videos;
create policy videos_owner_request on public.videos for insert to authenticated
    with check (user_id = (select auth.uid()));

-- A new row is a request. Until now a row inserted with status 'processing' and a
-- video_id was adopted: anyone whose insert reached the table could attach any job and
-- have it published. Refused now, whoever inserts (the service role included);
-- attaching a job is `sora-worker adopt`'s alone. Runs after videos_check_status (an
-- unknown status gets that trigger's answer first) and before videos_prepare_request,
-- whose INSERT branches for 'processing', 'completed' and 'failed' (sql/0002) it leaves
-- unreachable: only a request gets past it.
create sequence if not exists sora_worker.refused_job_or_stage;

create or replace function sora_worker.guard_request() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
    if new.status is distinct from 'queued' or new.stage is distinct from 'pending'
       or new.video_id is not null or new.submit_key is not null then
        perform nextval('sora_worker.refused_job_or_stage');
        raise exception using
            errcode = 'check_violation',
            message = 'a new row is a request for a video: it cannot arrive carrying a '
                || 'provider job or a stage',
            detail = format('status %s, stage %s, video_id %s, submit_key %s',
                new.status, new.stage, coalesce(new.video_id, 'null'),
                coalesce(new.submit_key::text, 'null')),
            hint = 'insert only the request (prompt, image1_url, image2_url, model, size, '
                || 'seconds; status queued or left out). To attach a job already made at '
                || 'the provider, insert the request, then run: sora-worker adopt ROW_ID '
                || 'VIDEO_ID';
    end if;
    return new;
end
$$;

drop trigger if exists videos_guard_request on public.videos;
create trigger videos_guard_request before insert on public.videos
    for each row execute function sora_worker.guard_request();

-- A row sent back to 'queued' (or deleted) while the provider may hold its job: the job
-- runs on at the provider, paid for, and nobody would archive it. Written down here for
-- the worker, which cancels it where the provider can and logs a warning naming it and
-- its estimated cost either way (service/worker/daemon.py). A row that was submitting
-- with a key has no job id yet: it is written down too (the warning says so).
create table if not exists sora_worker.abandoned_jobs (
    id           bigint generated always as identity primary key,
    row_id       uuid not null,
    provider     text,
    video_id     text,
    submit_key   uuid,
    stage        text not null,
    model        text,
    size         text,
    seconds      text,
    submitted_at timestamptz,
    how          text not null,
    abandoned_at timestamptz not null default now(),
    tries        integer not null default 0,
    next_try_at  timestamptz not null default now(),
    settled_at   timestamptz,
    outcome      text
);
create index if not exists abandoned_jobs_due_idx on sora_worker.abandoned_jobs (next_try_at)
    where settled_at is null;

create or replace function sora_worker.record_abandoned_job() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
    if (old.stage in ('generating', 'archiving') and old.video_id is not null)
       or (old.stage = 'submitting' and old.submit_key is not null) then
        insert into sora_worker.abandoned_jobs
            (row_id, provider, video_id, submit_key, stage, model, size, seconds,
             submitted_at, how)
        values (old.id, old.provider, old.video_id, old.submit_key, old.stage, old.model,
                old.size, old.seconds, old.submitted_at,
                case when tg_op = 'DELETE' then 'deleted' else 're-queued' end);
        -- Wake a worker (a re-queue notifies anyway; a delete would not).
        perform pg_notify('sora_worker', old.id::text);
    end if;
    return null;
end
$$;

drop trigger if exists videos_record_requeued_job on public.videos;
create trigger videos_record_requeued_job after update on public.videos
    for each row when (new.stage = 'pending' and old.stage <> 'pending')
    execute function sora_worker.record_abandoned_job();
drop trigger if exists videos_record_deleted_job on public.videos;
create trigger videos_record_deleted_job after delete on public.videos
    for each row execute function sora_worker.record_abandoned_job();

-- The public gallery: finished, unpruned videos, and only what a stranger may see. No
-- prompt (unless the owner turns SORA_PUBLIC_PROMPTS on), no photo URLs, no errors, no
-- prints, keys, leases or owner. With the owner's rights (security_invoker = false), so
-- anon needs no right on the table itself; a security barrier, so a caller's function in
-- a WHERE clause never sees a row the view filters out. Supabase's linter calls this a
-- "security definer view": here that is the point. Dropped and made again: its columns
-- change (a front end that read removed columns reads its own rows from the table).
drop view if exists public.videos_public;
create view public.videos_public with (security_invoker = false, security_barrier = true) as
select v.id, v.status, v.progress, v.video_url, v.poster_url, v.thumbnail_url,
       v.rendition_url, v.duration_seconds, v.width, v.height, v.size, v.seconds,
       v.created_at, v.completed_at,
       case when s.public_prompts then v.prompt end as prompt
from public.videos v cross join sora_worker.settings s
where v.stage = 'completed' and v.pruned_at is null;

-- Who may do what, said in one place and said again by every `migrate`: Supabase's
-- default privileges hand every new object to the public, and a grant made by hand in
-- the dashboard should not outlive the next deploy.
create or replace function sora_worker.assert_privileges() returns void
language plpgsql set search_path = '' as $$
begin
    revoke all on schema sora_worker from public, anon, authenticated;
    revoke all on all tables in schema sora_worker from public, anon, authenticated;
    revoke all on all sequences in schema sora_worker from public, anon, authenticated;
    revoke all on all functions in schema sora_worker from public, anon, authenticated;

    if not (select relrowsecurity from pg_catalog.pg_class where oid = 'public.videos'::regclass) then
        alter table public.videos enable row level security;
    end if;
    -- Table-wide revokes take column grants with them; then exactly these.
    revoke all on public.videos from public, anon, authenticated;
    grant select on public.videos to authenticated;
    grant insert (prompt, image1_url, image2_url, model, size, seconds)
        on public.videos to authenticated;
    grant all on public.videos to service_role;

    revoke all on public.videos_public from public, anon, authenticated;
    grant select on public.videos_public to anon, authenticated, service_role;
end
$$;

select sora_worker.assert_privileges();
