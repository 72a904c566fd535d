-- Seal signatures: each writer signs its seal hash with an Ed25519 key kept
-- outside the database (see shared/src/seal.rs), so a database superuser
-- cannot forge a chain. NULL for seals written without a writer key.
ALTER TABLE auditline.batches
    ADD COLUMN seal_key       bytea,
    ADD COLUMN seal_signature bytea;

ALTER TABLE auditline.batches
    ADD CONSTRAINT batches_seal_signed CHECK (
        (seal_key IS NULL AND seal_signature IS NULL)
        OR (chain IS NOT NULL AND length(seal_key) = 32 AND length(seal_signature) = 64));
