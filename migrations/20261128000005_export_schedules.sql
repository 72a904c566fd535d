-- Export schedules: a cron expression fires export jobs, each covering the
-- window that follows the previous one (no gap, no overlap). Missed fire
-- times (every admin instance was down) are caught up, one job each.
CREATE TABLE auditline.export_schedules (
    id             uuid        PRIMARY KEY,
    name           text        NOT NULL,
    cron           text        NOT NULL,
    window_unit    text        NOT NULL CHECK (window_unit IN ('minute', 'hour', 'day')),
    query          text        NOT NULL,
    format         text        NOT NULL CHECK (format IN ('csv', 'json', 'ndjson')),
    compression    text        NOT NULL CHECK (compression IN ('none', 'zstd')),
    destination    text        NOT NULL DEFAULT 'local',
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The next fire time not yet turned into a job.
    next_run_at    timestamptz NOT NULL,
    -- The end of the last window handed to a job: the next window starts here.
    last_window_to timestamptz,
    runs           bigint      NOT NULL DEFAULT 0
);
CREATE INDEX export_schedules_due_idx ON auditline.export_schedules (next_run_at);

-- The schedule a job was fired by (kept after the schedule is deleted).
ALTER TABLE auditline.export_jobs ADD COLUMN schedule_id uuid;
CREATE INDEX export_jobs_schedule_idx ON auditline.export_jobs (schedule_id, window_from);
