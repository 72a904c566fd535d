//! Auditline's shared foundation: what every service agrees on.
//!
//! - [`event`] — the audit event's wire format, validation and JSON Schema.
//! - [`auth`] — API tokens and the `Caller` extractor.
//! - [`settings`] — layered configuration (defaults, TOML, `AUDITLINE_*`, flags).
//! - [`telemetry`] — logging.
//! - [`amqp`] — RabbitMQ topology and connections.
//! - [`db`] — PostgreSQL pool, migrations and partition upkeep.
//! - [`metrics`] — the Prometheus registry and `/metrics` handler.
//! - [`rollup`] — per-minute/hour/day aggregates behind summaries and metrics.
//! - [`seal`] — row digests and chained batch seals (tamper evidence).
//! - [`signing`] — Ed25519 keys that sign seals and checkpoints.
//! - [`text_index`] — the free-text search's per-block Bloom filters.
//! - [`error`] — the JSON error body every HTTP service answers with.
//! - [`strict_json`] — duplicate keys and inexact numbers refused at the boundaries.
//! - [`redact`] — credentials kept out of audit events, logs and error messages.

pub mod amqp;
pub mod auth;
pub mod db;
pub mod error;
pub mod event;
pub mod metrics;
pub mod redact;
pub mod rollup;
pub mod seal;
pub mod settings;
pub mod signing;
pub mod strict_json;
pub mod telemetry;
pub mod text_index;

pub use event::{AuditEvent, FieldError, ValidationError, WireEvent};
pub use settings::Settings;
