-- The free-text search's index (shared/src/text_index.rs): a Bloom filter of
-- the 4-byte grams of lower(endpoint) and lower(metadata::text) for each
-- block of up to 1,024 rows within one hour. The rollup keeper writes a
-- batch's blocks in the transaction that takes it off rollup_pending, so a
-- row is always either pending or covered by a block.
CREATE TABLE auditline.search_blocks (
    first_at   timestamptz NOT NULL,
    last_at    timestamptz NOT NULL,
    row_count  integer     NOT NULL,
    bits       bytea       NOT NULL,
    CHECK (first_at <= last_at AND last_at - first_at <= interval '1 hour'),
    CHECK (length(bits) = 3968)
);
-- Inline, never compressed: get_bit then reads the page, not a detoasted copy.
ALTER TABLE auditline.search_blocks ALTER COLUMN bits SET STORAGE PLAIN;
CREATE INDEX search_blocks_time_idx ON auditline.search_blocks (first_at);

-- Rows stored before this table existed get one block per hour with every
-- bit set: the search reads them all, as it did before.
INSERT INTO auditline.search_blocks (first_at, last_at, row_count, bits)
SELECT min(occurred_at), max(occurred_at), count(*), decode(repeat('ff', 3968), 'hex')
FROM auditline.events
GROUP BY date_trunc('hour', occurred_at AT TIME ZONE 'UTC');

GRANT INSERT, SELECT ON auditline.search_blocks TO auditline_writer;
GRANT SELECT ON auditline.search_blocks TO auditline_reader;
