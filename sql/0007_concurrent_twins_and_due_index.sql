-- Identical requests no longer take turns: evidence settles which job is whose.
--
-- Until now at most one row per identical request (prompt, model, size, seconds) could
-- be in doubt, because the provider echoes only the request and two in-doubt twins
-- could not be told apart. A job made from a reference image starts from that image
-- (its first frame), so each row now records a small print of the reference it sent
-- (reference_print: 16x16 RGB, 768 bytes), and reconciliation gives a row a job only
-- when the job's first frame is clearly nearest to that row's print. Twins therefore
-- submit concurrently, and the unique index that made them wait goes.
alter table public.videos add column if not exists reference_print bytea;
drop index if exists public.videos_one_in_doubt_per_request;

-- Reconciliation asks for a request's twins in doubt: a small partial index (rows in
-- doubt are few) keyed like the old unique one, minus the uniqueness.
create index if not exists videos_in_doubt_idx
    on public.videos (md5(prompt), model, size, seconds)
    where stage = 'submitting' and submit_key is not null;

-- next_attempt_at now means "when any worker may next claim the row": a claim and a
-- heartbeat move it to the lease's end, so the next due row is the first entry of
-- videos_due_idx, read in one index probe instead of a scan of every active row.
-- Rows leased when this runs get the same meaning.
update public.videos set next_attempt_at = locked_until
where locked_until is not null and locked_until > next_attempt_at
  and stage in ('pending', 'submitting', 'generating', 'archiving');

-- New requests are claimed before due polls and retries (the claim reads this small
-- index first): under load, a row inserted now must not wait behind a backlog of polls.
create index if not exists videos_fresh_idx on public.videos (next_attempt_at)
    where stage = 'pending';
