-- Rollups for the admin API: per-user summaries and real-time metrics that
-- stay fast however large auditline.events grows.
--
-- They are kept off the write path: the writer's transaction only records
-- its batch in auditline.rollup_pending; the writer's rollup keeper then
-- takes pending batches (FOR UPDATE SKIP LOCKED, so several writers share
-- the work), reads their rows by batch_id, upserts the rollups and deletes
-- the pending rows in one transaction: every stored row is counted exactly
-- once, and many batches are folded per upsert, where their keys collapse.

-- A batch's rows (the rows it actually inserted: duplicates keep the batch_id
-- of the batch that stored them first). Every row of a batch shares the key,
-- so the index stays small and is appended at its right edge.
CREATE INDEX events_batch_idx ON auditline.events (batch_id);

-- Batches committed but not yet folded into the rollups.
CREATE TABLE auditline.rollup_pending (
    batch_id      uuid        PRIMARY KEY,
    committed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Both rollup tables are updated in place all day long: half-empty pages let
-- those updates stay on their page (HOT) without touching the indexes.

-- Counts per grain ('m' minute, 'h' hour, 'd' day, all UTC), bucket start,
-- user and action type. Outcome is folded into the failures column. Hours and
-- days are per user (NULL: events without a user); minutes are over everyone
-- (user_id always NULL) and only feed the real-time metrics.
CREATE TABLE auditline.rollups (
    grain        "char"           NOT NULL CHECK (grain IN ('m', 'h', 'd')),
    bucket       timestamptz      NOT NULL,
    user_id      text,
    action_type  text             NOT NULL,
    events       bigint           NOT NULL,
    failures     bigint           NOT NULL,
    -- Response-time sum and count over the events that reported one.
    rt_count     bigint           NOT NULL,
    rt_sum       double precision NOT NULL,
    first_at     timestamptz      NOT NULL,
    last_at      timestamptz      NOT NULL,
    CONSTRAINT rollups_key UNIQUE NULLS NOT DISTINCT (grain, bucket, user_id, action_type)
) WITH (fillfactor = 50);
-- One user's timeline.
CREATE INDEX rollups_user_idx ON auditline.rollups (grain, user_id, bucket);

-- Response-time histograms. Bucket 0 is [0, 1] ms and bucket b > 0 is
-- (2^((b-1)/4), 2^(b/4)] ms, the last (95) open-ended; hist[b + 1] counts
-- bucket b. Arrays are trimmed to their first and last non-zero bucket (their
-- lower bound says where they start): most user-hours hold a handful of
-- events, and 96 mostly-zero integers per row would dominate the upserts.
-- Grains 'h' and 'd' hold one row per user (events without a user are not
-- summarized per user); grain 'm' holds one row per minute over all events
-- (user_id NULL), for the real-time metrics. Readers take
-- `array_lower(hist, 1) - 1` (the first bucket) and the 1-based slice
-- `hist[array_lower(hist, 1):array_upper(hist, 1)]`.
CREATE TABLE auditline.rollup_latency (
    grain    "char"      NOT NULL CHECK (grain IN ('m', 'h', 'd')),
    bucket   timestamptz NOT NULL,
    user_id  text,
    hist     integer[]   NOT NULL,
    CONSTRAINT rollup_latency_key UNIQUE NULLS NOT DISTINCT (grain, bucket, user_id)
) WITH (fillfactor = 50);
CREATE INDEX rollup_latency_user_idx ON auditline.rollup_latency (grain, user_id, bucket);

-- Element-wise sum of two trimmed histograms, over the union of their ranges.
CREATE FUNCTION auditline.hist_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    lo integer := least(array_lower(a, 1), array_lower(b, 1));
    hi integer := greatest(array_upper(a, 1), array_upper(b, 1));
    sum integer[] := array_fill(0, ARRAY[hi - lo + 1], ARRAY[lo]);
BEGIN
    FOR i IN lo..hi LOOP
        sum[i] := coalesce(a[i], 0) + coalesce(b[i], 0);
    END LOOP;
    RETURN sum;
END
$$;

-- Installation-wide secrets shared by every admin instance (e.g. the key that
-- signs search cursors), created on first use.
CREATE TABLE auditline.secrets (
    name        text        PRIMARY KEY,
    value       bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- ensure_partition() checked for the partition again after taking its
-- advisory lock, but a catalog snapshot taken before the lock could miss a
-- partition another session had just created, and CREATE TABLE then failed
-- (the writer retried and succeeded, after a warning). A duplicate is now
-- simply "already there".
CREATE OR REPLACE FUNCTION auditline.ensure_partition(day date) RETURNS boolean
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
    BEGIN
        EXECUTE format('CREATE TABLE auditline.%I PARTITION OF auditline.events FOR VALUES FROM (%L) TO (%L)',
                       part, lower_bound, upper_bound);
    EXCEPTION WHEN duplicate_table THEN
        RETURN false;
    END;
    -- Statement triggers are not cloned onto partitions; TRUNCATE of a single
    -- partition must be refused as well.
    EXECUTE format('CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON auditline.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION auditline.refuse_change()', part);
    RETURN true;
END
$$;
