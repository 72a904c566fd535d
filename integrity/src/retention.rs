//! Retention: a day's partition is archived to storage, the archive is read
//! back and verified against the seals, and only then is the partition
//! detached and dropped, leaving a signed record in `auditline.partition_drops`
//! so `verify` accepts the gap.
//!
//! Per day `D` (in `partitions.archive_destination`):
//! - `archive-events-D.ndjson.zst`: every row, all columns (the event's JSON
//!   with `received_at` and `batch_id`, `verify::Row`),
//!   ordered by `(occurred_at, event_id)`;
//! - `archive-events-D.manifest.json`: rows, the file's SHA-256, the seals
//!   that cover the day, the newest checkpoint, signed like checkpoints.
//!
//! Before archiving, the partition itself must verify: rows that were
//! tampered with are not archived as if they were genuine.

use crate::{
    checkpoint::{self, Keys},
    drops::{self, Dropped, drop_message},
    storage::Storage,
    verify::{self, Expected, ROW_COLUMNS, Report, StoredRow},
};
use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::{collections::HashMap, io::BufRead, time::Duration};
use tokio_util::sync::CancellationToken;

/// Compressed bytes collected before they are sent to storage.
const CHUNK: usize = 1 << 20;

/// A partition of `auditline.events`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Partition {
    pub table: String,
    /// PostgreSQL's estimate (exact after `ANALYZE`); None before the
    /// partition was first analyzed.
    pub rows_estimate: Option<i64>,
    pub bytes: i64,
}

/// The partitions that exist and the days that were dropped.
pub async fn list(pool: &PgPool) -> sqlx::Result<(Vec<Partition>, Vec<Dropped>)> {
    let partitions = sqlx::query_as(
        "SELECT c.relname::text AS table, CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END AS rows_estimate, \
                pg_total_relation_size(c.oid) AS bytes \
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'auditline.events'::regclass ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    Ok((partitions, drops::list(pool).await?))
}

fn table(day: NaiveDate) -> String {
    auditline_shared::db::partition_name(day)
}

fn bounds(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    (start, start + chrono::Duration::days(1))
}

/// A seal that covers the archived day.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct SealCover {
    pub chain: String,
    pub seq: i64,
    pub seal_hash: String,
    pub batch_id: uuid::Uuid,
}

/// What an archive's manifest says (the signed part).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestBody {
    pub kind: String,
    pub version: u32,
    pub day: NaiveDate,
    pub rows: u64,
    pub file: String,
    pub sha256: String,
    pub format: String,
    pub compression: String,
    pub seals: Vec<SealCover>,
    pub checkpoint: Option<checkpoint::Checkpoint>,
    pub created_at: DateTime<Utc>,
}

/// An archive's manifest file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub body: ManifestBody,
    pub public_key: Option<String>,
    pub signature: Option<String>,
}

/// A written and verified archive.
#[derive(Debug, Clone, Serialize)]
pub struct Archived {
    pub day: NaiveDate,
    pub file: String,
    pub manifest: String,
    pub rows: u64,
    pub sha256: String,
}

/// Archives one day's partition and verifies the archive.
#[tracing::instrument(skip_all, fields(%day, %destination))]
pub async fn archive(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    keys: &Keys,
    day: NaiveDate,
) -> anyhow::Result<Archived> {
    let today = Utc::now().date_naive();
    if day >= today {
        bail!("{day} is not over yet: only past days can be archived");
    }
    if !auditline_shared::db::partition_exists(pool, day).await? {
        bail!("there is no partition for {day}");
    }
    // Only drop records the keys accept excuse missing rows, as in verify.
    let dropped = verify::accepted_drops(pool, keys, None).await?;
    let file = format!("archive-events-{}.ndjson.zst", day.format("%Y%m%d"));
    let (count, sha256) = write_verified(pool, storage, destination, day, &file, &dropped).await?;
    let manifest_file = write_manifest(
        pool,
        storage,
        destination,
        keys,
        day,
        (&file, &sha256, count),
    )
    .await?;
    check_archive(
        pool,
        storage,
        destination,
        day,
        &file,
        &sha256,
        count,
        &dropped,
    )
    .await?;
    Ok(Archived {
        day,
        file,
        manifest: manifest_file,
        rows: count,
        sha256,
    })
}

/// Streams the day's rows into `file` (NDJSON, zstd) while checking each
/// against its seal; the upload is abandoned unless every row verified.
/// Answers the rows written and the file's SHA-256.
async fn write_verified(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    day: NaiveDate,
    file: &str,
    dropped: &HashMap<NaiveDate, DateTime<Utc>>,
) -> anyhow::Result<(u64, String)> {
    let (from, to) = bounds(day);
    // The partition must verify before its rows are archived as genuine.
    let mut report = Report::new(Some(from), Some(to));
    let mut expected = Expected::load(pool, Some(from), Some(to), dropped).await?;
    let mut rows = sqlx::query_as::<_, StoredRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {ROW_COLUMNS} FROM auditline.{} ORDER BY occurred_at, event_id",
        table(day)
    )))
    .fetch(pool);
    let mut upload = storage.create(destination, file, 1).await?;
    let mut encoder = zstd::stream::write::Encoder::new(Vec::with_capacity(2 * CHUNK), 3)?;
    let mut hash = Sha256::new();
    let mut count = 0u64;
    let mut line = Vec::with_capacity(1024);
    let written: anyhow::Result<()> = async {
        while let Some(stored) = rows.try_next().await? {
            let row = stored.into_row();
            if let Ok(row) = &row {
                line.clear();
                row.write_json(&mut line);
                line.push(b'\n');
                std::io::Write::write_all(&mut encoder, &line)?;
                count += 1;
            }
            expected.check(row, &mut report);
            if encoder.get_ref().len() >= CHUNK {
                let chunk = std::mem::take(encoder.get_mut());
                hash.update(&chunk);
                upload.write(&chunk).await?;
            }
        }
        Ok(())
    }
    .await;
    drop(rows);
    expected.finish(&mut report);
    if let Err(e) = written {
        upload.abort().await;
        return Err(e);
    }
    if !report.ok {
        upload.abort().await;
        bail!(
            "the partition of {day} does not verify ({} findings, first: {}); \
             run `auditline verify --from {from} --to {to}` and investigate before archiving it",
            report.total(),
            report
                .findings
                .first()
                .map(|f| f.message.as_str())
                .unwrap_or("")
        );
    }
    let last = encoder.finish()?;
    hash.update(&last);
    upload.write(&last).await?;
    upload.complete().await?;
    let sha256 = auditline_shared::auth::hex(&hash.finalize());

    Ok((count, sha256))
}

/// Writes the signed manifest of an archive: its rows, hash, the seals that
/// cover the day and the newest checkpoint. Answers the manifest's name.
async fn write_manifest(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    keys: &Keys,
    day: NaiveDate,
    (file, sha256, count): (&str, &str, u64),
) -> anyhow::Result<String> {
    let (from, to) = bounds(day);
    let seals: Vec<SealCover> = sqlx::query_as(
        "SELECT chain, seq, encode(seal_hash, 'hex') AS seal_hash, batch_id FROM auditline.batches \
         WHERE chain IS NOT NULL AND inserted_count > 0 AND occurred_max >= $1 AND occurred_min < $2 \
         ORDER BY chain, seq",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let body = ManifestBody {
        kind: "auditline.partition-archive".into(),
        version: 1,
        day,
        rows: count,
        file: file.to_owned(),
        sha256: sha256.to_owned(),
        format: "ndjson".into(),
        compression: "zstd".into(),
        seals,
        checkpoint: checkpoint::latest(storage, destination, keys)
            .await
            .and_then(Result::ok)
            .map(|(_, cp)| cp),
        created_at: Utc::now(),
    };
    let signed = keys.sign(&serde_json::to_vec(&body)?);
    let manifest = Manifest {
        body,
        public_key: signed.as_ref().map(|(k, _)| k.clone()),
        signature: signed.map(|(_, s)| s),
    };
    let manifest_file = format!("archive-events-{}.manifest.json", day.format("%Y%m%d"));
    storage
        .put(
            destination,
            &manifest_file,
            serde_json::to_vec_pretty(&manifest)?,
        )
        .await?;

    Ok(manifest_file)
}

/// Reads an archive back from storage: its SHA-256 must match and every
/// line must be a row its seal lists, none missing.
#[allow(clippy::too_many_arguments)]
async fn check_archive(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    day: NaiveDate,
    file: &str,
    sha256: &str,
    rows: u64,
    dropped: &HashMap<NaiveDate, DateTime<Utc>>,
) -> anyhow::Result<()> {
    let (_, mut body) = storage.read(destination, file).await?;
    let mut compressed = Vec::new();
    let mut hash = Sha256::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("cannot read the archive back")?;
        hash.update(&chunk);
        compressed.extend_from_slice(&chunk);
    }
    let read_hash = auditline_shared::auth::hex(&hash.finalize());
    if read_hash != sha256 {
        bail!("the archive {file} read back has SHA-256 {read_hash}, not {sha256}");
    }
    let (from, to) = bounds(day);
    let mut expected = Expected::load(pool, Some(from), Some(to), dropped).await?;
    let mut report = Report::new(Some(from), Some(to));
    let decoder = std::io::BufReader::new(zstd::stream::read::Decoder::new(&compressed[..])?);
    for line in decoder.lines() {
        let line = line.context("the archive does not decompress")?;
        let row = verify::Row::parse_json(line.as_bytes())
            .map_err(|e| anyhow::anyhow!("the archive holds a line that is not a row: {e}"))?;
        expected.check(Ok(row), &mut report);
    }
    expected.finish(&mut report);
    if !report.ok || report.rows != rows {
        bail!(
            "the archive {file} does not verify: {} rows read back of {rows}, {} findings",
            report.rows,
            report.total()
        );
    }
    Ok(())
}

/// Archives `day`, verifies the archive, then detaches and drops the partition
/// and records the drop (signed). Refused while another instance is at it.
#[tracing::instrument(skip_all, fields(%day, %destination))]
pub async fn drop_day(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    keys: &Keys,
    day: NaiveDate,
) -> anyhow::Result<Dropped> {
    let mut lock = pool.acquire().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('auditline.retention'))")
            .fetch_one(&mut *lock)
            .await?;
    if !locked {
        bail!("another process is archiving or dropping partitions; try again later");
    }
    let outcome = async {
        let archived = archive(pool, storage, destination, keys, day).await?;
        let rows = i64::try_from(archived.rows)?;
        let signature = keys
            .sign(&drop_message(day, rows, &archived.file, &archived.sha256))
            .map(|(_, s)| s);
        let mut tx = pool.begin().await?;
        let table = table(day);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE auditline.{table} IN ACCESS EXCLUSIVE MODE"
        )))
        .execute(&mut *tx)
        .await?;
        let now: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM auditline.{table}"
        )))
        .fetch_one(&mut *tx)
        .await?;
        if now != rows {
            bail!(
                "{} rows arrived for {day} while it was archived; nothing was dropped, archive it again",
                now - rows
            );
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE auditline.events DETACH PARTITION auditline.{table}"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE auditline.{table}")))
            .execute(&mut *tx)
            .await?;
        // The free-text index of the day's rows goes with them. Blocks that
        // reach into another day stay: they cover its rows too.
        let (from, to) = bounds(day);
        sqlx::query("DELETE FROM auditline.search_blocks WHERE first_at >= $1 AND last_at < $2")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        let dropped: Dropped = sqlx::query_as(
            "INSERT INTO auditline.partition_drops (day, rows, archive, archive_sha256, signature) \
             VALUES ($1, $2, $3, $4, $5) \
             RETURNING day, dropped_at, rows, archive, archive_sha256, signature",
        )
        .bind(day)
        .bind(rows)
        .bind(&archived.file)
        .bind(&archived.sha256)
        .bind(signature)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(dropped)
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('auditline.retention'))")
        .execute(&mut *lock)
        .await;
    outcome
}

/// Days whose partition is older than `retention_days`.
pub async fn expired(pool: &PgPool, retention_days: u32) -> anyhow::Result<Vec<NaiveDate>> {
    let cutoff = Utc::now().date_naive() - chrono::Duration::days(i64::from(retention_days));
    let (partitions, _) = list(pool).await?;
    Ok(partitions
        .iter()
        .filter_map(|p| NaiveDate::parse_from_str(p.table.strip_prefix("events_")?, "%Y%m%d").ok())
        .filter(|day| *day < cutoff)
        .collect())
}

/// Drops expired partitions every `interval` (the admin service runs it when
/// `partitions.retention_days` is set) until `stop` is cancelled; a day being
/// archived and dropped when it is is finished first, so its advisory lock
/// never goes back to the pool held.
pub async fn run(
    pool: PgPool,
    storage: Storage,
    destination: String,
    keys: std::sync::Arc<Keys>,
    retention_days: u32,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let days = match expired(&pool, retention_days).await {
            Ok(days) => days,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "retention cannot list partitions");
                continue;
            }
        };
        for day in days {
            if stop.is_cancelled() {
                return;
            }
            match drop_day(&pool, &storage, &destination, &keys, day).await {
                Ok(d) => {
                    tracing::info!(%day, rows = d.rows, archive = %d.archive, "partition archived and dropped")
                }
                Err(e) => {
                    tracing::warn!(%day, error = %format!("{e:#}"), "retention could not drop the partition")
                }
            }
        }
    }
}
