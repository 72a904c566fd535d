-- Export jobs and schedules belong to the token that created them (a job a
-- schedule fires belongs to the schedule's token). An `export` token sees,
-- downloads and cancels only its own; an `admin` token every one. Rows from
-- before this migration have no owner: only admin tokens see them.
ALTER TABLE auditline.export_jobs ADD COLUMN owner_token_id text;
ALTER TABLE auditline.export_schedules ADD COLUMN owner_token_id text;
-- The per-token quota counts a token's queued and running jobs.
CREATE INDEX export_jobs_owner_idx ON auditline.export_jobs (owner_token_id, state)
    WHERE owner_token_id IS NOT NULL;

-- A stream ticket names the token it was issued to, so that redeeming it
-- checks that token is still valid (tickets from before this migration
-- have none and are refused; they expired within a minute anyway).
ALTER TABLE auditline.stream_tickets ADD COLUMN token_id text;
