-- Least privilege. Two group roles (NOLOGIN); an operator creates login
-- roles and grants membership, e.g.
--   CREATE ROLE writer1 LOGIN PASSWORD '…' IN ROLE auditline_writer;
--   CREATE ROLE admin1  LOGIN PASSWORD '…' IN ROLE auditline_reader;
-- and gives each service its own database_url. Migrations, `auditline token`
-- and retention (`auditline partitions`, or the admin service with
-- partitions.retention_days) keep running as the owner.
--
-- auditline_writer: stores events and seals. On the events it may INSERT
-- and SELECT only (never UPDATE, DELETE or TRUNCATE); it creates day
-- partitions through auditline.ensure_partition, which runs as the owner.
-- It keeps the rollups (counts, not evidence).
--
-- auditline_reader: the admin service. Reads events, seals, rollups, drops;
-- keeps its own bookkeeping (export jobs and schedules, stream tickets, the
-- cursor key); reads tokens.
--
-- Roles belong to the whole server: created once, shared by every database
-- (each test database re-runs this, hence the guards).
DO $$
BEGIN
    CREATE ROLE auditline_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE auditline_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT USAGE ON SCHEMA auditline TO auditline_writer, auditline_reader;

-- Through the partitioned parent, PostgreSQL checks the parent's privileges only.
GRANT INSERT, SELECT ON auditline.events TO auditline_writer;
GRANT INSERT, SELECT ON auditline.batches TO auditline_writer;
GRANT INSERT, SELECT, DELETE ON auditline.rollup_pending TO auditline_writer;
GRANT INSERT, SELECT, UPDATE, DELETE ON auditline.rollups, auditline.rollup_latency TO auditline_writer;
GRANT SELECT ON auditline.partition_drops TO auditline_writer;

ALTER FUNCTION auditline.ensure_partition(date) SECURITY DEFINER;
ALTER FUNCTION auditline.ensure_partition(date) SET search_path = pg_catalog, auditline;
REVOKE EXECUTE ON FUNCTION auditline.ensure_partition(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auditline.ensure_partition(date) TO auditline_writer;

GRANT SELECT ON auditline.events, auditline.batches, auditline.rollups, auditline.rollup_latency,
    auditline.rollup_pending, auditline.partition_drops, auditline.tokens TO auditline_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON auditline.export_jobs, auditline.export_schedules,
    auditline.stream_tickets TO auditline_reader;
GRANT SELECT, INSERT ON auditline.secrets TO auditline_reader;
