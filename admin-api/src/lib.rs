//! The admin HTTP service (`auditline admin`, also inside `auditline all`):
//! search over the stored audit events, per-user summaries, real-time
//! metrics and the OpenAPI document. Every request under `/admin/audit` is
//! itself audited (action type `admin`, the token's name as user, the query
//! in metadata) through `AuditMiddleware` and the pipeline.
//!
//! - [`app`] — `Application` (routes, state, start and stop).
//! - [`dashboard`] — `GET /admin/`: the web dashboard, embedded, under a strict CSP.
//! - [`search`] — `GET /admin/audit/logs[/{event_id}]`, filters, signed keyset cursors.
//! - [`users`] — `GET /admin/audit/users[/{user_id}]` from the rollups.
//! - [`export`] — `GET /admin/audit/export`: streamed CSV / JSON / NDJSON, zstd.
//! - [`jobs`] — export jobs (`/admin/audit/exports`) and their runner.
//! - [`live`] — the live stream: tickets, the websocket, the fan-out from `<ns>.live`.
//! - [`schedules`] — export schedules (`/admin/audit/export-schedules`) and their firing.
//! - [`integrity`] — `GET /admin/audit/verify` (the proofs themselves are `auditline-integrity`).
//! - [`realtime`] — `GET /admin/audit/metrics` from the minute rollups.
//! - [`params`] — query-string parsing with errors that name the parameter.
//! - [`openapi`] — the OpenAPI 3 document of the admin and ingest APIs.
//! - [`error`] — `ApiError` and its JSON answers.

pub mod app;
pub mod dashboard;
pub mod error;
pub mod export;
pub mod integrity;
pub mod jobs;
pub mod live;
pub mod openapi;
pub mod params;
pub mod realtime;
pub mod schedules;
pub mod search;
pub mod users;

pub use app::Application;
