-- Single-use tickets for the live stream's websocket (browsers cannot send an
-- Authorization header there). Only a SHA-256 of each ticket is stored; any
-- admin instance can redeem it, once, before it expires.
CREATE TABLE auditline.stream_tickets (
    ticket_hash text        PRIMARY KEY,
    token_name  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX stream_tickets_expiry_idx ON auditline.stream_tickets (expires_at);
