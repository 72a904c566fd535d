-- Seals: each committed batch is chained to its writer pipeline's previous
-- batch (see shared/src/seal.rs). Batches committed before this migration
-- have no seal; `auditline verify` reports them as unsealed.
ALTER TABLE auditline.batches
    ADD COLUMN chain         text,
    ADD COLUMN seq           bigint,
    ADD COLUMN prev_hash     bytea,
    ADD COLUMN seal_hash     bytea,
    -- One 40-byte entry per stored row: event id, occurred_at (µs), digest.
    ADD COLUMN entries       bytea,
    ADD COLUMN occurred_min  timestamptz,
    ADD COLUMN occurred_max  timestamptz;

ALTER TABLE auditline.batches
    ADD CONSTRAINT batches_sealed CHECK (
        (chain IS NULL AND seq IS NULL AND prev_hash IS NULL AND seal_hash IS NULL AND entries IS NULL)
        OR (chain IS NOT NULL AND seq >= 1 AND length(prev_hash) = 32 AND length(seal_hash) = 32
            AND entries IS NOT NULL AND length(entries) = 40 * inserted_count));

CREATE UNIQUE INDEX batches_chain_seq ON auditline.batches (chain, seq);

-- Partitions retention removed: the archive that holds their rows, and the
-- seals' entries verify no longer expects to find.
CREATE TABLE auditline.partition_drops (
    day            date        PRIMARY KEY,
    dropped_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    rows           bigint      NOT NULL,
    archive        text        NOT NULL,
    archive_sha256 text        NOT NULL,
    -- Ed25519 signature (hex) over the drop record, when a signing key is configured.
    signature      text
);
CREATE TRIGGER partition_drops_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON auditline.partition_drops
    FOR EACH STATEMENT EXECUTE FUNCTION auditline.refuse_change();
