//! The export job runner (the HTTP side is [`crate::routes::jobs`]).
//!
//! Jobs live in `auditline.export_jobs`. Every admin instance runs a
//! [`Runner`] that claims queued jobs with `FOR UPDATE SKIP LOCKED`, so
//! instances share the work and never take the same job. A running job sends
//! a heartbeat (with its progress) every second; one whose heartbeat is older
//! than `exports.claim_timeout_secs` belongs to an instance presumed dead and
//! is claimed again and started over. The file is written under a temporary
//! name, fsync'd and renamed only when whole, with its manifest beside it, so
//! no partial file is ever offered as complete. Finished files expire after
//! `exports.retention_hours`.

use auditline_shared::{db, settings::ExportSettings};
use chrono::{DateTime, Utc};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::query::{
    export::{Compression, Encoder, Export, Format, ReadAhead},
    filters::Filters,
};
use auditline_integrity::storage::{Storage, Upload};

/// The states a job goes through.
pub const STATES: [&str; 6] = [
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "expired",
];

/// An export job as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct ExportJob {
    pub id: Uuid,
    /// `queued`, `running`, `done`, `failed`, `cancelled` or `expired`.
    pub state: String,
    /// The search filters, with the window and order as given (the
    /// window the job covers is `window_from`/`window_to`).
    /// (Read as JSON and checked when the job runs: a row that no longer
    /// reads as [`Filters`] fails its own job, not every listing.)
    #[schema(value_type = Filters)]
    pub filters: sqlx::types::Json<serde_json::Value>,
    pub format: Format,
    pub compression: Compression,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    pub requested_by: String,
    /// The schedule that fired this job, if one did.
    pub schedule_id: Option<Uuid>,
    /// The id of the token the job belongs to (`null`: created before jobs
    /// had owners; only admin tokens see those).
    pub owner_token_id: Option<String>,
    /// Where the file lands: `local` (the export directory) or a configured bucket.
    pub destination: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    /// Rows written so far (the total once `done`).
    pub rows: i64,
    /// Bytes written so far (the file's size once `done`).
    pub bytes: i64,
    /// How far through the window the job is, 0 to 1.
    pub progress: f64,
    pub sha256: Option<String>,
    pub error: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Where to download the file, once `done`.
    #[sqlx(skip)]
    pub download: Option<String>,
    #[serde(skip)]
    pub file_name: Option<String>,
}

/// The columns of an [`ExportJob`].
macro_rules! job_columns {
    () => {
        "id, state, filters, format, compression, window_from, window_to, requested_by, \
         schedule_id, owner_token_id, destination, created_at, started_at, finished_at, attempts, rows_written AS rows, \
         bytes_written AS bytes, progress, sha256, error, expires_at, file_name"
    };
}
pub(crate) use job_columns;

impl sqlx::Type<sqlx::Postgres> for Format {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Format {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Format::parse(text).ok_or_else(|| format!("unknown export format {text:?}").into())
    }
}

impl sqlx::Type<sqlx::Postgres> for Compression {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Compression {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Compression::parse(text).ok_or_else(|| format!("unknown compression {text:?}").into())
    }
}

impl ExportJob {
    /// Fills the fields derived from the stored ones.
    pub(crate) fn complete(mut self) -> Self {
        if self.state == "done" {
            self.download = Some(format!("/admin/audit/exports/{}/download", self.id));
        }
        self
    }

    /// The export this job runs: its filters over its fixed window.
    pub(crate) fn export(&self) -> Result<Export, crate::error::ApiError> {
        let filters = Filters::from_json(self.filters.0.clone())?;
        Ok(Export {
            descending: filters.descending_or(false),
            filters,
            from: self.window_from,
            to: self.window_to,
            format: self.format,
            compression: self.compression,
        })
    }
}

/// The runner's metrics.
#[derive(Clone, Debug)]
pub struct JobMetrics {
    jobs: IntGaugeVec,
    finished: IntCounterVec,
    rows: IntCounter,
    bytes: IntCounter,
    duration: Histogram,
}

impl JobMetrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let jobs = IntGaugeVec::new(
            Opts::new(
                "auditline_export_jobs",
                "Export jobs by state (all instances)",
            ),
            &["state"],
        )?;
        let finished = IntCounterVec::new(
            Opts::new(
                "auditline_export_jobs_finished_total",
                "Export jobs this instance finished, by outcome",
            ),
            &["outcome"],
        )?;
        let rows = IntCounter::new(
            "auditline_export_rows_total",
            "Rows written to export files",
        )?;
        let bytes = IntCounter::new(
            "auditline_export_bytes_total",
            "Bytes written to export files",
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "auditline_export_duration_seconds",
                "How long export jobs took, from claim to finished file",
            )
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
        )?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(finished.clone()))?;
        registry.register(Box::new(rows.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            jobs,
            finished,
            rows,
            bytes,
            duration,
        })
    }
}

/// Claims and runs export jobs (one at a time per instance).
#[derive(Debug, Clone)]
pub struct Runner {
    pub pool: PgPool,
    pub storage: Storage,
    pub settings: ExportSettings,
    pub instance: String,
    pub metrics: JobMetrics,
    pub wake: Arc<tokio::sync::Notify>,
    /// Where the seal checkpoints are, so each manifest carries the newest.
    pub checkpoint_destination: String,
}

/// How a run ended without finishing the file.
#[derive(Debug)]
enum Stopped {
    /// Cancelled, or taken over by another instance.
    Lost,
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Stopped {
    fn from(e: E) -> Self {
        Self::Failed(e.into())
    }
}

impl Runner {
    /// Runs until `stop` is cancelled. A job running then is handed back
    /// (queued again), so another instance takes it at once rather than
    /// after `exports.claim_timeout_secs`.
    pub async fn run(self, stop: CancellationToken) {
        let mut last_upkeep = Instant::now() - Duration::from_secs(3600);
        while !stop.is_cancelled() {
            if last_upkeep.elapsed() >= Duration::from_secs(30) {
                last_upkeep = Instant::now();
                if let Err(e) = self.upkeep().await {
                    tracing::warn!(error = %format!("{e:#}"), "export upkeep failed");
                }
            }
            match crate::workers::scheduler::fire_due(&self.pool, chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "scheduled exports queued"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot fire export schedules"),
            }
            match self.claim().await {
                Ok(Some(job)) => {
                    let id = job.id;
                    tokio::select! {
                        () = self.run_job(job) => {}
                        () = stop.cancelled() => self.hand_back(id).await,
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()) => {}
                        () = stop.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot claim export jobs");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Queues a job this instance was running again (it is stopping).
    async fn hand_back(&self, id: Uuid) {
        let handed = sqlx::query(
            "UPDATE auditline.export_jobs SET state = 'queued', claimed_by = NULL \
             WHERE id = $1 AND claimed_by = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(&self.instance)
        .execute(&self.pool)
        .await;
        match handed {
            Ok(_) => tracing::info!(job = %id, "export job handed back: this instance is stopping"),
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot hand an export job back; another instance takes it over once its heartbeat is old")
            }
        }
    }

    /// Expires old files and refreshes the state gauge.
    async fn upkeep(&self) -> anyhow::Result<()> {
        let expired: Vec<(Option<String>, String)> = sqlx::query_as(
            "UPDATE auditline.export_jobs SET state = 'expired' \
             WHERE state = 'done' AND expires_at < now() RETURNING file_name, destination",
        )
        .fetch_all(&self.pool)
        .await?;
        for (file, destination) in expired {
            if let Some(file) = file {
                remove_files(&self.storage, &destination, &file).await;
            }
        }
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM auditline.export_jobs GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        for state in STATES {
            let n = counts
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.metrics.jobs.with_label_values(&[state]).set(n);
        }
        Ok(())
    }

    async fn claim(&self) -> Result<Option<ExportJob>, sqlx::Error> {
        let job: Option<ExportJob> = sqlx::query_as(concat!(
            "UPDATE auditline.export_jobs SET state = 'running', claimed_by = $1, \
             heartbeat_at = now(), started_at = now(), attempts = attempts + 1, \
             rows_written = 0, bytes_written = 0, progress = 0, error = NULL \
             WHERE id = (SELECT id FROM auditline.export_jobs \
                         WHERE state = 'queued' OR (state = 'running' \
                               AND heartbeat_at < now() - make_interval(secs => $2)) \
                         ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1) \
             RETURNING ",
            job_columns!()
        ))
        .bind(&self.instance)
        .bind(self.settings.claim_timeout_secs as f64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(job.map(ExportJob::complete))
    }

    #[tracing::instrument(skip_all, fields(job = %job.id, format = job.format.as_str()))]
    async fn run_job(&self, job: ExportJob) {
        let started = Instant::now();
        let file = format!(
            "export-{}.{}{}",
            job.id,
            job.format.as_str(),
            if job.compression == Compression::Zstd {
                ".zst"
            } else {
                ""
            }
        );
        tracing::info!(job = %job.id, attempt = job.attempts, destination = %job.destination, "export job started");
        let outcome = self.write_file(&job, &file).await;
        match outcome {
            Ok(()) => {
                self.metrics.finished.with_label_values(&["done"]).inc();
                self.metrics
                    .duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(job = %job.id, seconds = started.elapsed().as_secs_f64(), "export job done");
            }
            Err(Stopped::Lost) => {
                self.metrics
                    .finished
                    .with_label_values(&["cancelled"])
                    .inc();
                tracing::info!(job = %job.id, "export job cancelled or taken over; stopped");
            }
            Err(Stopped::Failed(e)) => {
                self.metrics.finished.with_label_values(&["failed"]).inc();
                tracing::error!(job = %job.id, error = %format!("{e:#}"), "export job failed");
                // A scheduled window must not be left out: its job is
                // queued again, up to three attempts, before it fails.
                let _ = sqlx::query(
                    "UPDATE auditline.export_jobs SET error = $3, \
                     state = CASE WHEN schedule_id IS NOT NULL AND attempts < 3 \
                                  THEN 'queued' ELSE 'failed' END, \
                     finished_at = CASE WHEN schedule_id IS NOT NULL AND attempts < 3 \
                                        THEN NULL ELSE now() END \
                     WHERE id = $1 AND claimed_by = $2 AND state = 'running'",
                )
                .bind(job.id)
                .bind(&self.instance)
                .bind(format!("{e:#}"))
                .execute(&self.pool)
                .await;
            }
        }
    }

    /// Records progress; `Err(Lost)` when the job is no longer this instance's to run.
    async fn heartbeat(
        &self,
        job: &ExportJob,
        rows: u64,
        bytes: u64,
        progress: f64,
    ) -> Result<(), Stopped> {
        let still_ours = sqlx::query(
            "UPDATE auditline.export_jobs SET heartbeat_at = now(), rows_written = $3, \
             bytes_written = $4, progress = $5 \
             WHERE id = $1 AND claimed_by = $2 AND state = 'running'",
        )
        .bind(job.id)
        .bind(&self.instance)
        .bind(rows as i64)
        .bind(bytes as i64)
        .bind(progress)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if still_ours {
            Ok(())
        } else {
            Err(Stopped::Lost)
        }
    }

    async fn write_file(&self, job: &ExportJob, file: &str) -> Result<(), Stopped> {
        let export = job
            .export()
            .map_err(|e| anyhow::anyhow!("the job's stored filters are unusable: {e}"))?;
        let mut upload = self
            .storage
            .create(&job.destination, file, job.attempts)
            .await?;
        let written = match self.fill(job, &export, &mut upload).await {
            // The last check before the file appears: still ours, not cancelled.
            Ok(written) => match self.heartbeat(job, written.rows, written.bytes, 1.0).await {
                Ok(()) => written,
                Err(stopped) => {
                    upload.abort().await;
                    return Err(stopped);
                }
            },
            Err(stopped) => {
                upload.abort().await;
                return Err(stopped);
            }
        };
        upload.complete().await?;
        let Written {
            rows: total_rows,
            bytes,
            sha256,
            first,
            last,
        } = written;
        // The newest checkpoint of the seal chains, as written: whoever checks
        // the export later can tie its rows to the sealed history.
        let checkpoint = match self
            .storage
            .get(
                &self.checkpoint_destination,
                auditline_integrity::checkpoint::LATEST,
            )
            .await
        {
            Ok(Some(bytes)) => serde_json::from_slice::<serde_json::Value>(&bytes).ok(),
            _ => None,
        };
        let manifest = json!({
            "id": job.id,
            "file": file,
            "destination": job.destination,
            "filters": job.filters,
            "window": {"from": export.from, "to": export.to},
            "order": if export.descending { "desc" } else { "asc" },
            "format": export.format,
            "compression": export.compression,
            "rows": total_rows,
            "bytes": bytes,
            "sha256": sha256,
            "first_event": first.map(|(id, at)| json!({"event_id": id, "occurred_at": at})),
            "last_event": last.map(|(id, at)| json!({"event_id": id, "occurred_at": at})),
            "requested_by": job.requested_by,
            "schedule_id": job.schedule_id,
            "created_at": Utc::now(),
            "checkpoint": checkpoint,
        });
        let manifest = serde_json::to_vec_pretty(&manifest)?;
        if let Err(e) = self
            .storage
            .put(&job.destination, &manifest_name(file), manifest)
            .await
        {
            // A file without its manifest is not offered.
            remove_files(&self.storage, &job.destination, file).await;
            return Err(e.into());
        }
        let done = sqlx::query(
            "UPDATE auditline.export_jobs SET state = 'done', finished_at = now(), \
             rows_written = $3, bytes_written = $4, progress = 1, sha256 = $5, file_name = $6, \
             expires_at = CASE WHEN schedule_id IS NULL \
                               THEN now() + make_interval(hours => $7) END \
             WHERE id = $1 AND claimed_by = $2 AND state = 'running'",
        )
        .bind(job.id)
        .bind(&self.instance)
        .bind(total_rows as i64)
        .bind(bytes as i64)
        .bind(&sha256)
        .bind(file)
        .bind(i32::try_from(self.settings.retention_hours).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if done == 0 {
            // Cancelled in the last instant: the file must not stay.
            remove_files(&self.storage, &job.destination, file).await;
            return Err(Stopped::Lost);
        }
        Ok(())
    }

    /// Streams the export's rows through the encoder into `upload`.
    async fn fill(
        &self,
        job: &ExportJob,
        export: &Export,
        upload: &mut Upload,
    ) -> Result<Written, Stopped> {
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let mut encoder = Encoder::new(export.format, export.compression)?;
        let snapshot = db::snapshot(&self.pool).await?;
        let mut reader = ReadAhead::start(export.clone(), snapshot);
        let mut first: Option<(Uuid, DateTime<Utc>)> = None;
        let mut last: Option<(Uuid, DateTime<Utc>)> = None;
        let mut beat = Instant::now();
        let read = async {
            while let Some(chunk) = reader.next().await? {
                let (Some(head), Some(tail)) = (chunk.first(), chunk.last()) else {
                    continue;
                };
                first.get_or_insert((head.event_id, head.occurred_at));
                last = Some((tail.event_id, tail.occurred_at));
                encoder.write_rows(&chunk)?;
                if encoder.ready() {
                    let data = encoder.take();
                    hash.update(&data);
                    bytes += data.len() as u64;
                    upload.write(&data).await?;
                    self.metrics.bytes.inc_by(data.len() as u64);
                }
                self.metrics.rows.inc_by(chunk.len() as u64);
                if beat.elapsed() >= Duration::from_secs(1) {
                    beat = Instant::now();
                    let progress = export.progress(tail.occurred_at);
                    self.heartbeat(job, encoder.rows(), bytes, progress).await?;
                }
            }
            Ok::<(), Stopped>(())
        }
        .await;
        drop(reader);
        read?;
        let rows = encoder.rows();
        let rest = encoder.finish()?;
        hash.update(&rest);
        bytes += rest.len() as u64;
        self.metrics.bytes.inc_by(rest.len() as u64);
        upload.write(&rest).await?;
        Ok(Written {
            rows,
            bytes,
            sha256: auditline_shared::auth::hex(&hash.finalize()),
            first,
            last,
        })
    }
}

/// What [`Runner::fill`] wrote.
#[derive(Debug)]
struct Written {
    rows: u64,
    bytes: u64,
    sha256: String,
    first: Option<(Uuid, DateTime<Utc>)>,
    last: Option<(Uuid, DateTime<Utc>)>,
}

/// The export's file and manifest names in the export directory.
pub(crate) fn manifest_name(file: &str) -> String {
    format!("{file}.manifest.json")
}

pub(crate) async fn remove_files(storage: &Storage, destination: &str, file: &str) {
    storage.remove(destination, file).await;
    storage.remove(destination, &manifest_name(file)).await;
}
