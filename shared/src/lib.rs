//! Auditline's shared server foundation: what the writer, the gateway, the
//! admin service and the CLI agree on beyond the event itself.
//!
//! The event contract lives in `auditline-event` and is re-exported here
//! ([`event`], [`seal`], [`strict_json`], [`redact`], [`text_index`]), and
//! the broker topology lives in `auditline-client` ([`amqp`]), so server
//! code has one import root.
//!
//! - [`auth`] — API tokens and the `Caller` extractor.
//! - [`settings`] — layered configuration (defaults, TOML, `AUDITLINE_*`, flags).
//! - [`telemetry`] — logging.
//! - [`db`] — PostgreSQL pool, migrations and partition upkeep.
//! - [`metrics`] — the Prometheus registry and `/metrics` handler.
//! - [`rollup`] — the rollups' layout (grains, latency histograms) the writer folds into and the admin API reads.
//! - [`signing`] — Ed25519 keys that sign seals and checkpoints.
//! - [`stored`] — an event as stored, and the columns that select it.
//! - [`error`] — the JSON error body every HTTP service answers with.

pub mod auth;
pub mod db;
pub mod error;
pub mod metrics;
pub mod rollup;
pub mod settings;
pub mod signing;
pub mod stored;
pub mod telemetry;

pub use auditline_client::amqp;
pub use auditline_event::{
    AuditEvent, FieldError, ValidationError, WireEvent, event, redact, seal, strict_json,
    text_index,
};
pub use settings::Settings;
