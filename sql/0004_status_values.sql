-- A person or an app that writes a status the worker does not know gets the allowed
-- values back, not the name of an internal constraint. The CHECK constraints stay as
-- the guarantee; this trigger only answers first, and with words. Its name sorts
-- before videos_prepare_request, so it sees the status exactly as written.
create or replace function public.videos_check_status() returns trigger
language plpgsql as $$
begin
    if new.status is null
        or new.status not in ('queued', 'processing', 'completed', 'failed') then
        raise exception using
            errcode = 'check_violation',
            message = format('invalid status %L: use one of queued, processing, completed, failed',
                             new.status),
            hint = 'set status to queued to request (or retry) a video';
    end if;
    return new;
end
$$;

drop trigger if exists videos_check_status on public.videos;
create trigger videos_check_status before insert or update of status on public.videos
    for each row execute function public.videos_check_status();
