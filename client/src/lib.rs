//! Publishing audit events into Auditline, for applications: what an app
//! links to emit events, without the database, the server settings or an
//! HTTP server.
//!
//! - [`config`]: [`ClientConfig`] (the broker URL, the namespace, the
//!   publisher's batching and retries) and the password-hiding [`SecretUrl`].
//! - [`amqp`]: the broker topology every part agrees on (`<ns>.events`,
//!   `<ns>.writer`, `<ns>.dead`), connections and message bodies (zstd).
//! - [`publisher`]: [`Publisher`], confirmed, reconnecting, pipelined.
//! - [`batcher`]: the batching publisher the middleware and the gateway
//!   share: many producers' NDJSON gathered into compressed messages, four
//!   publishes awaiting confirms, a memory budget.
//! - [`spool`]: the durable, fsync'd local spool used while the broker is away.
//! - `middleware` (feature `actix`, default): `AuditMiddleware`, auditing
//!   every request of an actix-web app.
//!
//! Feature `metrics` (default) exports the publisher's counters to a
//! Prometheus registry. `cargo tree -p auditline-client --no-default-features`
//! has no actix-web, prometheus, sqlx or figment.

pub mod amqp;
pub mod batcher;
pub mod config;
#[cfg(feature = "actix")]
pub mod middleware;
pub mod publisher;
pub mod spool;

pub use config::{ClientConfig, PublisherSettings, SecretUrl};
#[cfg(feature = "actix")]
pub use middleware::{AuditConfig, AuditMetadata, AuditMiddleware, AuditResources, AuditUser};
pub use publisher::{PublishError, Publisher};
