-- What the seed asked for next: each archived video's facts (length, frame size), a
-- poster (a JPEG of the first frame, stored beside the video) and an optional smaller
-- rendition (SORA_RENDITION_BITRATE); and `pruned_at`, set by `sora-worker prune` when
-- it deleted a row's stored files (the row stays, with its history).
-- All nullable: rows archived before this migration, and rows whose poster or
-- rendition failed (that never fails a row), simply have none.

alter table public.videos
    add column if not exists duration_seconds double precision,
    add column if not exists width            integer,
    add column if not exists height           integer,
    add column if not exists poster_url       text,
    add column if not exists rendition_url    text,
    add column if not exists pruned_at        timestamptz;

-- Finished, unpruned rows by age: what `prune --older-than` scans.
create index if not exists videos_prunable_idx on public.videos (completed_at)
    where stage = 'completed' and pruned_at is null;

-- Supabase: posters are JPEG, so the worker's video bucket (as sql/0005 created it,
-- restricted to MP4 and WebP) must accept image/jpeg too. Skipped on plain PostgreSQL
-- and for a bucket that accepts any type (null list).
do $$
begin
    if to_regclass('storage.buckets') is null then
        return;
    end if;
    update storage.buckets
    set allowed_mime_types = array_append(allowed_mime_types, 'image/jpeg')
    where id = 'hug-videos'
      and allowed_mime_types is not null
      and not ('image/jpeg' = any (allowed_mime_types));
end
$$;
