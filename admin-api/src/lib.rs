//! The admin HTTP service (`auditline admin`, also inside `auditline all`):
//! search over the stored audit events, per-user summaries, real-time
//! metrics, exports (streamed, jobs, schedules), the live stream, verify,
//! the dashboard and the OpenAPI document. Every request under
//! `/admin/audit` is itself audited (action type `admin`, the token's name as
//! user, the query in metadata) through `AuditMiddleware` and the pipeline.
//!
//! Layout, each layer using only those above it (no import cycle):
//! - [`error`] — `ApiError`, its JSON answers and their OpenAPI description.
//! - [`query`] — what a request asks for: query-string parameters, the one
//!   `Filters` type, signed cursors, the search and export queries, JSON bodies.
//! - [`workers`] — what runs in the background: the export job runner, the
//!   schedule firing, the live stream's consumer, hub and token watch.
//! - [`state`], [`extract`], [`audit`] — what handlers share, the extractors
//!   that authenticate and require a scope, the admin's own audit records.
//! - [`routes`] — the HTTP handlers, one module per resource, each with its
//!   `configure`.
//! - [`openapi`] — the OpenAPI 3 document, from the handlers' annotations.
//! - [`startup`] — [`Application`]: builds the state and workers, serves, stops.
//!
//! The proofs (verify, checkpoints, retention) and the storage exports share
//! with them are `auditline-integrity`.

pub mod audit;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod query;
pub mod routes;
pub mod startup;
pub mod state;
pub mod workers;

pub use startup::Application;
