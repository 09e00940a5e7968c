-- How a row asks for the worker, and how the worker hears it.

-- A new row, or a row a person sets back to status 'queued' (to retry a failed video or
-- remake a finished one), starts from a clean slate: stage pending, no error, no lease.
-- Inserting status 'processing' with a video_id adopts a job already paid for elsewhere.
create or replace function public.videos_prepare_request() returns trigger
language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        if new.status = 'processing' and new.video_id is not null then
            new.stage := 'generating';
            new.submitted_at := coalesce(new.submitted_at, now());
        elsif new.status in ('completed', 'failed') then
            new.stage := new.status;
        elsif new.status = 'processing' then
            -- Nothing to adopt: without a provider id it is a fresh request.
            new.status := 'queued';
            new.stage := 'pending';
        else
            -- 'queued', or a value the CHECK constraint will refuse with a clear error.
            new.stage := 'pending';
        end if;
    elsif new.status = 'queued' and old.status is distinct from 'queued' then
        new.stage := 'pending';
    else
        return new;
    end if;
    if new.stage = 'pending' then
        new.progress := 0;
        new.attempts := 0;
        new.error := null;
        new.next_attempt_at := now();
        new.locked_by := null;
        new.locked_until := null;
        new.submit_key := null;
        new.submitted_at := null;
        new.video_id := null;
        new.completed_at := null;
        -- A remake must not show the old video as if it were the new one.
        new.video_url := null;
        new.openai_url := null;
        new.openai_expires_at := null;
        new.video_bytes := null;
        new.video_sha256 := null;
        new.thumbnail_url := null;
    end if;
    return new;
end
$$;

drop trigger if exists videos_prepare_request on public.videos;
create trigger videos_prepare_request before insert or update of status on public.videos
    for each row execute function public.videos_prepare_request();

-- NOTIFY is only a wake-up hint (the worker's claim query decides what to do), so the
-- payload is just the row id. Sent on commit, so the worker never sees an uncommitted row.
-- No column list on the trigger: a re-queue changes stage inside the BEFORE trigger,
-- which "update of stage" would not see.
create or replace function public.videos_notify_worker() returns trigger
language plpgsql as $$
begin
    if new.stage = 'pending' and (tg_op = 'INSERT' or old.stage is distinct from 'pending') then
        perform pg_notify('sora_worker', new.id::text);
    end if;
    return null;
end
$$;

drop trigger if exists videos_notify_worker on public.videos;
create trigger videos_notify_worker after insert or update on public.videos
    for each row execute function public.videos_notify_worker();
