-- Supabase Storage: the worker's two public buckets, and no public writes in them.
-- The seed system let the public upload and delete in its buckets; here only the
-- service role (which bypasses RLS) writes. Public buckets are read through their
-- public URLs without any policy, so no read policy is needed either.
-- On plain PostgreSQL there is no storage schema: the whole block is skipped.
-- The bucket names are the defaults of SORA_VIDEO_BUCKET and SORA_IMAGE_BUCKET; the
-- types and limits match default_bucket_specs in service/storage/supabase.py.
do $$
declare
    ours constant text[] := array['hug-videos', 'hug-images'];
    offending record;
begin
    if to_regclass('storage.buckets') is null or to_regclass('storage.objects') is null then
        return;
    end if;

    -- Created public when missing; an existing bucket is the owner's and is left as it
    -- is (the worker's startup check says what to change if it cannot work).
    insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
    values ('hug-videos', 'hug-videos', true, null, array['video/mp4', 'image/webp']),
           ('hug-images', 'hug-images', true, null, array['image/jpeg', 'image/png', 'image/webp'])
    on conflict (id) do nothing;

    -- Drop every policy that lets the public (anon, authenticated, or PUBLIC itself)
    -- write in our buckets: those naming one of them, and those naming no bucket at all
    -- (which cover every bucket). Policies for other buckets are left alone.
    for offending in
        select policyname
        from pg_policies
        where schemaname = 'storage' and tablename = 'objects'
          and permissive = 'PERMISSIVE'
          and cmd in ('INSERT', 'UPDATE', 'DELETE', 'ALL')
          and roles && array['public', 'anon', 'authenticated']::name[]
          and ((coalesce(qual, '') || ' ' || coalesce(with_check, '')) ~ '(hug-videos|hug-images)'
               or (coalesce(qual, '') || ' ' || coalesce(with_check, '')) !~ 'bucket_id')
    loop
        raise notice 'dropping storage policy %: it let the public write in %',
            offending.policyname, array_to_string(ours, ', ');
        execute format('drop policy %I on storage.objects', offending.policyname);
    end loop;

    -- And refuse any that is added later: a restrictive policy is ANDed with every
    -- permissive one, so no policy can open our buckets to writers that RLS applies
    -- to. The service role bypasses RLS and keeps writing.
    drop policy if exists sora_worker_no_public_insert on storage.objects;
    drop policy if exists sora_worker_no_public_update on storage.objects;
    drop policy if exists sora_worker_no_public_delete on storage.objects;
    execute format(
        'create policy sora_worker_no_public_insert on storage.objects as restrictive '
        'for insert to public with check (bucket_id <> all (%L::text[]))', ours);
    execute format(
        'create policy sora_worker_no_public_update on storage.objects as restrictive '
        'for update to public using (bucket_id <> all (%L::text[])) '
        'with check (bucket_id <> all (%L::text[]))', ours, ours);
    execute format(
        'create policy sora_worker_no_public_delete on storage.objects as restrictive '
        'for delete to public using (bucket_id <> all (%L::text[]))', ours);
end
$$;
