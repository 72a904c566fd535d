-- Export jobs: asynchronous exports into storage, shared by every admin
-- instance. A job is claimed with FOR UPDATE SKIP LOCKED; a running job whose
-- instance stopped sending heartbeats is claimed again and started over.
CREATE TABLE auditline.export_jobs (
    id            uuid        PRIMARY KEY,
    state         text        NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled', 'expired')),
    -- The filters as a query string; the runner parses them as the search does.
    query         text        NOT NULL,
    format        text        NOT NULL CHECK (format IN ('csv', 'json', 'ndjson')),
    compression   text        NOT NULL CHECK (compression IN ('none', 'zstd')),
    -- The window, fixed when the job was requested ("the last 24 hours" then).
    window_from   timestamptz NOT NULL,
    window_to     timestamptz NOT NULL,
    requested_by  text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    heartbeat_at  timestamptz,
    claimed_by    text,
    attempts      integer     NOT NULL DEFAULT 0,
    rows_written  bigint      NOT NULL DEFAULT 0,
    bytes_written bigint      NOT NULL DEFAULT 0,
    progress      double precision NOT NULL DEFAULT 0,
    file_name     text,
    sha256        text,
    error         text,
    expires_at    timestamptz
);
CREATE INDEX export_jobs_claim_idx ON auditline.export_jobs (state, created_at);
