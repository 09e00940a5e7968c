-- A stored video is recorded the moment it is stored; its media come after (issue 28).
--
-- Until now the archive stored the video, then fetched the provider's thumbnail (up to
-- two minutes), probed the file and stored a poster, and only then wrote the row: a
-- crash or an expired link in that window lost track of a paid video that sat in the
-- bucket. Now `archiving` ends with the video's URL, size and checksum written, and a
-- new stage, `describing`, makes the thumbnail, poster, facts and rendition. It shows
-- status `completed` (the video is there: apps show it at once), it is still work the
-- worker owes (so it is in the claim index), and nothing in it can fail the row.
-- `Stage.status` in service/core/job.py is the one place in the code that pairs stages
-- with statuses; these constraints hold the database to the same pairs.

alter table public.videos drop constraint if exists videos_stage_known;
alter table public.videos add constraint videos_stage_known check (stage in (
    'pending', 'submitting', 'generating', 'archiving', 'describing', 'completed', 'failed'));

alter table public.videos drop constraint if exists videos_stage_matches_status;
alter table public.videos add constraint videos_stage_matches_status check (
    (stage = 'pending' and status = 'queued')
    or (stage in ('submitting', 'generating', 'archiving') and status = 'processing')
    or (stage in ('describing', 'completed') and status = 'completed')
    or (stage = 'failed' and status = 'failed'));

-- The claim index holds every row the worker still owes work; its predicate must be
-- the list the claim query writes out (ACTIVE_SQL in service/database/rows.py), or
-- the planner cannot use it.
drop index if exists public.videos_due_idx;
create index videos_due_idx on public.videos (next_attempt_at)
    where stage in ('pending', 'submitting', 'generating', 'archiving', 'describing');
