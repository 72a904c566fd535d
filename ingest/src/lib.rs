//! The HTTP ingest gateway (`auditline ingest`): `POST /v1/events` with a
//! publish token, published through `auditline-client`'s [`Publisher`] and
//! spooled (group commit) while the broker is away.
//!
//! - [`gateway`]: the routes, validation, the spool hand-off and metrics.
//!
//! The client library (the publisher, the spool and `AuditMiddleware`) is
//! `auditline-client`; it is re-exported here for the binaries that use both.

pub mod gateway;

pub use auditline_client::{
    AuditConfig, AuditMetadata, AuditMiddleware, AuditResources, AuditUser, PublishError,
    Publisher, middleware, publisher, spool,
};
