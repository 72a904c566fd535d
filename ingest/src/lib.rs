//! Publishing audit events into Auditline.
//!
//! - [`publisher`] — [`Publisher`], the confirmed, reconnecting publisher library
//!   for Rust applications (also used by `auditline loadgen`).
//!
//! - [`gateway`] — the HTTP ingest gateway (`auditline ingest`), `POST /v1/events`.
//!
//! - [`spool`] — the durable, fsync'd local spool used while the broker is unreachable.
//!
//! The actix-web `AuditMiddleware` is still to come.

pub mod gateway;
pub mod publisher;
pub mod spool;

pub use publisher::{PublishError, Publisher};
