-- Auditline storage: append-only, daily-partitioned audit events.

CREATE SCHEMA IF NOT EXISTS auditline;

CREATE TABLE auditline.events (
    event_id          uuid             NOT NULL,
    occurred_at       timestamptz      NOT NULL,
    received_at       timestamptz      NOT NULL,
    batch_id          uuid             NOT NULL,
    service           text             NOT NULL,
    session_id        text             NOT NULL,
    user_id           text,
    client_ip         inet,
    action_type       text             NOT NULL,
    endpoint          text             NOT NULL,
    route             text,
    http_method       text             NOT NULL,
    request_size      bigint,
    response_size     bigint,
    response_time_ms  double precision,
    status_code       smallint,
    success           boolean          NOT NULL,
    resource_usage    jsonb,
    metadata          jsonb,
    -- The dedup key. A unique index on a partitioned table must contain the
    -- partition key, which is why occurred_at is part of it (and why it always
    -- comes from the producer, never from now()).
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- The admin search: time windows with keyset pagination, per user, per action
-- type and per session, each ordered by time.
CREATE INDEX events_time_idx    ON auditline.events (occurred_at, event_id);
CREATE INDEX events_user_idx    ON auditline.events (user_id, occurred_at);
CREATE INDEX events_action_idx  ON auditline.events (action_type, occurred_at);
CREATE INDEX events_session_idx ON auditline.events (session_id, occurred_at);

-- One row per committed writer batch.
CREATE TABLE auditline.batches (
    batch_id         uuid        PRIMARY KEY,
    writer_id        text        NOT NULL,
    message_count    integer     NOT NULL,
    event_count      integer     NOT NULL,
    inserted_count   integer     NOT NULL,
    first_event_id   uuid,
    last_event_id    uuid,
    committed_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX batches_committed_idx ON auditline.batches (committed_at);

-- Audit rows are append-only. The row trigger is cloned onto every partition,
-- so UPDATE or DELETE aimed at a partition directly is refused too; the
-- statement trigger refuses even a statement that matches no row.
CREATE FUNCTION auditline.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'auditline: % on % is refused: audit events are append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Only retention removes data, by archiving and dropping whole partitions.';
END
$$;

CREATE TRIGGER events_append_only_rows BEFORE UPDATE OR DELETE ON auditline.events
    FOR EACH ROW EXECUTE FUNCTION auditline.refuse_change();
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON auditline.events
    FOR EACH STATEMENT EXECUTE FUNCTION auditline.refuse_change();
CREATE TRIGGER batches_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON auditline.batches
    FOR EACH STATEMENT EXECUTE FUNCTION auditline.refuse_change();

-- Creates the partition for one UTC day unless it exists. Partition creation
-- takes a strong lock on the parent, so it is serialized by an advisory lock
-- and skipped cheaply when the partition is already there.
CREATE FUNCTION auditline.ensure_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'events_' || to_char(day, 'YYYYMMDD');
    lower_bound timestamptz := day::timestamp AT TIME ZONE 'UTC';
    upper_bound timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(format('auditline.%I', part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('auditline.ensure_partition'));
    IF to_regclass(format('auditline.%I', part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE auditline.%I PARTITION OF auditline.events FOR VALUES FROM (%L) TO (%L)',
                   part, lower_bound, upper_bound);
    -- Statement triggers are not cloned onto partitions; TRUNCATE of a single
    -- partition must be refused as well.
    EXECUTE format('CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON auditline.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION auditline.refuse_change()', part);
    RETURN true;
END
$$;

-- How many days after today (UTC) are covered by consecutive partitions.
CREATE FUNCTION auditline.partition_runway_days() RETURNS integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    n integer := 0;
BEGIN
    WHILE to_regclass(format('auditline.events_%s', to_char(today + n + 1, 'YYYYMMDD'))) IS NOT NULL LOOP
        n := n + 1;
    END LOOP;
    IF to_regclass(format('auditline.events_%s', to_char(today, 'YYYYMMDD'))) IS NULL THEN
        RETURN -1;
    END IF;
    RETURN n;
END
$$;
