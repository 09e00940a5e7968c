-- A photo's host failing is the photo's outcome, not the provider's: `photo_unavailable`
-- (the host does not resolve, does not answer in time, or answers that it will not
-- deliver the photo). Before, such a row was tried SORA_MAX_ATTEMPTS times and failed
-- as `provider_error`, although no provider had been called. Rows that failed so keep
-- what they were given (their `error` says which photo failed).
--
-- The CHECK of sql/0006 names every outcome; it is replaced by one that adds this one.
-- Dropping and adding in one statement validates the table once, under one lock.
alter table public.videos
    drop constraint if exists videos_error_kind_known,
    add constraint videos_error_kind_known check (error_kind is null or error_kind in (
        'invalid_request', 'photo_unavailable', 'safety_filtered', 'model_retired',
        'provider_error', 'in_doubt', 'expired'));
