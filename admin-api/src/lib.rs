//! The Auditline admin service (not built yet: the admin issue brings it).
//!
//! It will own, on `admin_listen`, behind bearer tokens with scopes:
//! - `GET /admin/audit/logs[/{event_id}]`: filtered search with keyset cursors;
//! - `GET /admin/audit/users[/{user_id}]`: per-user summaries from rollups;
//! - `GET /admin/audit/metrics`: real-time audit metrics as JSON;
//! - `GET /admin/audit/export`, `/exports`, `/export-schedules`: streamed and
//!   asynchronous exports (CSV / JSON / NDJSON, zstd) into storage;
//! - `GET /admin/audit/stream`: the websocket live stream;
//! - `GET /admin/`: the dashboard; `/metrics`, `/healthz`, `/readyz`.
//!
//! Until then this crate is empty on purpose, so that `auditline all` runs
//! only what exists.
