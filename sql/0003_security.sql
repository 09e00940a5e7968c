-- Least privilege. The public (anon, authenticated) may read videos; only the service
-- role (and the table owner the worker connects as) may write. On plain PostgreSQL the
-- Supabase roles do not exist, so create them (NOLOGIN: nobody logs in as them here).
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
end
$$;

alter table public.videos enable row level security;

-- Supabase's default privileges grant everything on new tables to anon and
-- authenticated; take writes back so RLS is not the only wall.
revoke all on public.videos from anon, authenticated;
grant select on public.videos to anon, authenticated;
grant all on public.videos to service_role;

drop policy if exists videos_public_read on public.videos;
create policy videos_public_read on public.videos for select to anon, authenticated using (true);

-- What a front end needs, without the worker's bookkeeping (leases, idempotency keys).
create or replace view public.videos_public with (security_invoker = true) as
select id, prompt, image1_url, image2_url, status, video_id, video_url, openai_url,
       model, seconds, size, progress, error, video_bytes, video_sha256, thumbnail_url,
       created_at, updated_at, completed_at
from public.videos;

revoke all on public.videos_public from anon, authenticated;
grant select on public.videos_public to anon, authenticated, service_role;

-- Supabase Realtime: let front ends subscribe to their row's progress.
do $$
begin
    if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
       and not exists (select 1 from pg_publication_tables
                       where pubname = 'supabase_realtime'
                         and schemaname = 'public' and tablename = 'videos') then
        alter publication supabase_realtime add table public.videos;
    end if;
end
$$;
