-- How long each model's jobs take, learnt from the table's own history (issue 27).
--
-- A finished video waits for the poll that sees it, and that wait is most of what a
-- person waits between the provider finishing and the row holding its permanent URL.
-- A host that reports no progress (Veo, most of Replicate) leaves a worker only two
-- facts to time its polls by: how long the job has run, and how long the model's
-- jobs usually take. The second is here: generated_at is when the provider finished
-- the job (its own word where it gives one, else when a poll or webhook saw it), so
-- generated_at - submitted_at is the job's duration. The worker reads the last
-- durations of each provider and model now and then (service/database/durations.py)
-- and polls a running job as it nears its likely end (service/core/polls.py).
--
-- progress_at is when a running job's progress was first seen at its current value:
-- its recent pace, which tells an uneven progress curve better than its pace since
-- submission.
alter table public.videos add column if not exists generated_at timestamptz;
alter table public.videos add column if not exists progress_at timestamptz;

-- The durations read: per provider and model, the most recent first. Partial, so
-- rows never generated (requests, failures) cost nothing here.
create index if not exists videos_generated_idx
    on public.videos (provider, model, generated_at desc)
    where generated_at is not null and submitted_at is not null
      and provider is not null and model is not null;
