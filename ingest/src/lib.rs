//! The HTTP ingest gateway (`auditline ingest`): `POST /v1/events` with a
//! publish token, published through `auditline-client`'s `Publisher` and
//! spooled (group commit) while the broker is away.
//!
//! - [`gateway`]: the routes, validation, the spool hand-off and metrics.
//!
//! The client library (the publisher, the spool and `AuditMiddleware`) is
//! `auditline-client`.

pub mod gateway;
