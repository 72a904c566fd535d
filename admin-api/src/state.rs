//! What every handler shares: the pool, keys, storage, the live hub, quotas.

use auditline_client::Publisher;
use sqlx::PgPool;
use std::sync::Arc;

use crate::{query::cursor::CursorKey, workers::live::Hub};

/// What every handler shares.
#[derive(Debug)]
pub struct State {
    pub pool: PgPool,
    pub cursor_key: CursorKey,
    /// Where export files are written (`local`, the `export_dir`, or a bucket).
    pub storage: auditline_integrity::storage::Storage,
    /// Wakes the export runner when a job is queued.
    pub jobs_waiting: Arc<tokio::sync::Notify>,
    /// The live stream's clients.
    pub hub: Arc<Hub>,
    /// Checkpoint signing and verification keys.
    pub keys: Arc<auditline_integrity::checkpoint::Keys>,
    pub integrity: auditline_shared::settings::IntegritySettings,
    /// Quotas and time-outs of exports.
    pub exports: auditline_shared::settings::ExportSettings,
    /// One permit per streamed export in progress (`exports.max_streams`).
    pub export_streams: Arc<tokio::sync::Semaphore>,
    /// Publishes the admin events that are not HTTP requests (stream
    /// subscriptions), confirmed before what they record is served.
    pub recorder: Publisher,
}
