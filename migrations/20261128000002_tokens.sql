-- API tokens: only a hash of each secret is stored. A token reads
-- `alt_<token_id>_<secret>`: the id finds the row, the secret's SHA-256 is
-- compared in constant time.
CREATE TABLE auditline.tokens (
    token_id     text        PRIMARY KEY,
    secret_hash  bytea       NOT NULL,
    name         text        NOT NULL,
    scopes       text[]      NOT NULL,
    service      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT tokens_scopes_known CHECK (
        cardinality(scopes) > 0 AND scopes <@ ARRAY['publish', 'read', 'export', 'admin']::text[]),
    CONSTRAINT tokens_publish_has_service CHECK (
        NOT ('publish' = ANY (scopes)) OR service IS NOT NULL)
);
