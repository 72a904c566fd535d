//! Publishing audit events into Auditline.
//!
//! - [`publisher`] — [`Publisher`], the confirmed, reconnecting publisher library
//!   for Rust applications (also used by `auditline loadgen`).
//!
//! - [`gateway`] — the HTTP ingest gateway (`auditline ingest`), `POST /v1/events`.
//!
//! - [`spool`] — the durable, fsync'd local spool used while the broker is unreachable.
//! - [`middleware`] — `AuditMiddleware`, auditing every request of an actix-web app.

pub mod gateway;
pub mod middleware;
pub mod publisher;
pub mod spool;

pub use middleware::{AuditConfig, AuditMetadata, AuditMiddleware, AuditResources, AuditUser};
pub use publisher::{PublishError, Publisher};
