-- A remade row (status set back to 'queued', by hand or by `sora-worker retry`) starts
-- afresh: sql/0002's trigger clears the old video's columns, and this clears the ones
-- added since (0007's reference print, 0008's media facts and pruned_at), so a remake
-- never shows the old poster or length, nor counts as pruned. The trigger's name sorts
-- after videos_prepare_request, so it sees the stage that trigger chose.
create or replace function public.videos_remake_clears_media() returns trigger
language plpgsql as $$
begin
    if new.stage = 'pending' and (tg_op = 'INSERT' or old.stage is distinct from 'pending') then
        new.reference_print := null;
        new.duration_seconds := null;
        new.width := null;
        new.height := null;
        new.poster_url := null;
        new.rendition_url := null;
        new.pruned_at := null;
    end if;
    return new;
end
$$;

drop trigger if exists videos_remake_clears_media on public.videos;
create trigger videos_remake_clears_media before insert or update on public.videos
    for each row execute function public.videos_remake_clears_media();

-- Front ends read the media through the public view too (new columns go last).
create or replace view public.videos_public with (security_invoker = true) as
select id, prompt, image1_url, image2_url, status, video_id, video_url, openai_url,
       model, seconds, size, progress, error, video_bytes, video_sha256, thumbnail_url,
       created_at, updated_at, completed_at, error_kind,
       duration_seconds, width, height, poster_url, rendition_url, pruned_at
from public.videos;
