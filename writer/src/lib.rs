//! The Auditline writer: actix actors that consume audit events from the
//! `<ns>.writer` quorum queue and store each exactly once in the
//! daily-partitioned `auditline.events` table.
//!
//! Layout:
//! - [`consumer`] — the `Consumer` actor (manual acks, `prefetch_count`), parsing
//!   and validating each delivery; invalid ones become dead letters.
//! - [`batcher`] — the `Batcher` actor (`batch.max_events`, `batch.max_bytes`,
//!   `batch.timeout_ms`), one batch in flight at a time.
//! - [`db_writer`] — the `DbWriter` actor: dead letters, COPY straight into
//!   `auditline.events` (through staging and `INSERT … ON CONFLICT DO
//!   NOTHING` when a batch holds redeliveries or meets a stored key), the
//!   signed seal, COMMIT, then ack `multiple`.
//! - [`partitions`] — the `PartitionKeeper` actor, partitions ahead and on demand.
//! - [`rollups`] — the `RollupKeeper` actor, folding committed batches into the
//!   admin API's rollups off the hot path; [`fold`] — the fold itself (rollup
//!   rows, the free-text search's blocks).
//! - [`app`] — [`Application`], the service with its pipelines and `/metrics`.
//! - [`copy_row`] — the COPY text encoding; [`metrics`]: the writer's metrics;
//!   [`audit_metrics`]: what the audited users did, without user ids as labels.

pub mod app;
pub mod audit_metrics;
pub mod batcher;
pub mod consumer;
pub mod copy_row;
pub mod db_writer;
pub mod fold;
pub mod metrics;
pub mod partitions;
pub mod rollups;

pub use app::Application;
