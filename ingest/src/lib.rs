//! Publishing audit events into Auditline.
//!
//! - [`publisher`] — [`Publisher`], the confirmed, reconnecting publisher library
//!   for Rust applications (also used by `auditline loadgen`).
//!
//! The HTTP ingest gateway, the actix-web `AuditMiddleware` and the durable
//! spool arrive with the ingest issue and will live here too.

pub mod publisher;

pub use publisher::{PublishError, Publisher};
