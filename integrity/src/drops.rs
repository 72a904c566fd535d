//! Drop records: one row of `auditline.partition_drops` for each day
//! retention archived and dropped, signed with the checkpoint key, so verify
//! stops expecting that day's rows only when the drop was genuine.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A day retention dropped.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Dropped {
    pub day: NaiveDate,
    pub dropped_at: DateTime<Utc>,
    pub rows: i64,
    pub archive: String,
    pub archive_sha256: String,
    pub signature: Option<String>,
}

/// The message a drop record's signature covers.
pub fn drop_message(day: NaiveDate, rows: i64, archive: &str, sha256: &str) -> Vec<u8> {
    format!("auditline.drop.v1\n{day}\n{rows}\n{archive}\n{sha256}").into_bytes()
}

/// Every drop record, oldest day first.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<Dropped>> {
    sqlx::query_as(
        "SELECT day, dropped_at, rows, archive, archive_sha256, signature \
         FROM auditline.partition_drops ORDER BY day",
    )
    .fetch_all(pool)
    .await
}
