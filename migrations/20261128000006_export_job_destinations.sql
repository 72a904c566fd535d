-- Where a job's file lands: `local` (the export directory) or the name of an
-- S3-compatible destination from the settings (`exports.destinations`).
ALTER TABLE auditline.export_jobs ADD COLUMN destination text NOT NULL DEFAULT 'local';
