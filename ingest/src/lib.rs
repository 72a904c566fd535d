//! Publishing audit events into Auditline.
//!
//! - [`publisher`] — [`Publisher`], the confirmed, reconnecting publisher library
//!   for Rust applications (also used by `auditline loadgen`).
//!
//! - [`gateway`] — the HTTP ingest gateway (`auditline ingest`), `POST /v1/events`.
//!
//! The actix-web `AuditMiddleware` and the durable spool are still to come.

pub mod gateway;
pub mod publisher;

pub use publisher::{PublishError, Publisher};
