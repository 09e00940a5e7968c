-- What the seed asked for next: each archived video's facts (length, frame size), a
-- poster (a WebP of the first frame, stored beside the video; also the row's
-- thumbnail when the provider has none that is an image) and an optional smaller
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
