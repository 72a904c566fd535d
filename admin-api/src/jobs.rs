//! Export jobs: `POST/GET /admin/audit/exports[/{id}[/download]]`,
//! `DELETE /admin/audit/exports/{id}`, and the runner that does the work.
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
//!
//! A job belongs to the token that created it (a scheduled job to the
//! schedule's): an `export` token lists, shows, downloads and cancels only
//! its own, and another's id answers 404 as an unknown one does; an `admin`
//! token sees every job, including those from before owners were recorded.
//! Jobs a schedule fired (the scheduled archives) are deleted by `admin`
//! tokens only. A token may have `exports.max_queued_per_token` jobs queued
//! or running at once; one more is a 429 with `Retry-After`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{ContentDisposition, DispositionParam, DispositionType},
    web::{self, Bytes},
};
use auditline_shared::{db, settings::ExportSettings};
use chrono::{DateTime, Utc};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    app::{Exporter, JobViewer, State},
    error::ApiError,
    export::{self, Compression, Encoder, Export, Format, ReadAhead},
    params::Params,
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
    /// The search filters, as given.
    #[schema(value_type = Object)]
    #[sqlx(skip)]
    pub filters: Map<String, Value>,
    #[serde(skip)]
    pub query: String,
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
        "id, state, query, format, compression, window_from, window_to, requested_by, \
         schedule_id, owner_token_id, destination, created_at, started_at, finished_at, attempts, rows_written AS rows, \
         bytes_written AS bytes, progress, sha256, error, expires_at, file_name"
    };
}

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
    fn complete(mut self) -> Self {
        self.filters = query_filters(&self.query);
        if self.state == "done" {
            self.download = Some(format!("/admin/audit/exports/{}/download", self.id));
        }
        self
    }

    /// The export this job runs: its filters over its fixed window.
    fn export(&self) -> Result<Export, ApiError> {
        let params = Params::parse_from(&self.query, export::FILTER_PARAMS)?;
        let mut export = Export::parse(&params)?;
        export.from = self.window_from;
        export.to = self.window_to;
        export.format = self.format;
        export.compression = self.compression;
        Ok(export)
    }
}

/// A stored query string as a filters object (repeated names become arrays).
pub(crate) fn query_filters(query: &str) -> Map<String, Value> {
    let mut filters = Map::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = Value::String(value.into_owned());
        match filters.get_mut(name.as_ref()) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                filters.insert(name.into_owned(), value);
            }
        }
    }
    filters
}

/// The body of `POST /admin/audit/exports`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct NewExport {
    /// `csv` (default), `json` or `ndjson`.
    format: Option<Format>,
    /// `none` (default) or `zstd`.
    compression: Option<Compression>,
    /// The parameters of `GET /admin/audit/logs` (without `limit` and
    /// `cursor`): a string, number or boolean each, or an array for the
    /// repeatable ones.
    #[schema(value_type = Object, required = false)]
    filters: Option<Map<String, Value>>,
    /// `local` (the default: the export directory) or a configured S3-compatible destination.
    destination: Option<String>,
}

/// A filters object (the body field `field`) as a query string, for the
/// search's own parser.
pub(crate) fn filters_query(field: &str, filters: &Map<String, Value>) -> Result<String, ApiError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in filters {
        let field = format!("{field}.{name}");
        let scalar = |v: &Value| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(ApiError::body(
                &field,
                "must be a string, a number, a boolean or an array of them",
            )),
        };
        match value {
            Value::Array(values) => {
                for v in values {
                    query.append_pair(name, &scalar(v)?);
                }
            }
            v => {
                query.append_pair(name, &scalar(v)?);
            }
        }
    }
    Ok(query.finish())
}

/// Refuses a request body or frame with a duplicate key (which `serde_json`
/// would read as its last value), naming the key's path.
pub(crate) fn strict(body: &[u8]) -> Result<(), ApiError> {
    auditline_shared::strict_json::check(body, false)
        .map_err(|e| ApiError::body(&e.path_text(), e.message))
}

/// A JSON object body, taken apart field by field with errors that name the field.
pub(crate) struct Body(Map<String, Value>);

impl Body {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        strict(body)?;
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::body("$", "must be a JSON object")),
            Err(e) => Err(ApiError::body("$", format!("malformed JSON: {e}"))),
        }
    }

    /// A string field (absent: `None`; null or another type: an error).
    pub(crate) fn text(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::body(name, "must be a string")),
        }
    }

    pub(crate) fn format(&mut self) -> Result<Format, ApiError> {
        match self.text("format")? {
            None => Ok(Format::Csv),
            Some(text) => Format::parse(&text).ok_or_else(|| {
                ApiError::body(
                    "format",
                    format!("{text:?} is not one of csv, json, ndjson"),
                )
            }),
        }
    }

    pub(crate) fn compression(&mut self) -> Result<Compression, ApiError> {
        match self.text("compression")? {
            None => Ok(Compression::None),
            Some(text) => Compression::parse(&text).ok_or_else(|| {
                ApiError::body("compression", format!("{text:?} is not one of none, zstd"))
            }),
        }
    }

    /// `destination`: `local` when absent, else a configured one.
    pub(crate) fn destination(&mut self, storage: &Storage) -> Result<String, ApiError> {
        let destination = self
            .text("destination")?
            .unwrap_or_else(|| auditline_integrity::storage::LOCAL.into());
        storage
            .check(&destination)
            .map_err(|message| ApiError::body("destination", message))?;
        Ok(destination)
    }

    /// The `filters` object as a query string.
    pub(crate) fn filters(&mut self) -> Result<String, ApiError> {
        match self.0.remove("filters") {
            None => Ok(String::new()),
            Some(Value::Object(filters)) => filters_query("filters", &filters),
            Some(_) => Err(ApiError::body("filters", "must be an object")),
        }
    }

    /// Refuses any field not taken.
    pub(crate) fn finish(self, known: &str) -> Result<(), ApiError> {
        match self.0.keys().next() {
            Some(unknown) => Err(ApiError::body(
                unknown,
                format!("unknown field; known: {known}"),
            )),
            None => Ok(()),
        }
    }
}

fn parse_new(body: &[u8], storage: &Storage) -> Result<(String, Export, String), ApiError> {
    let mut body = Body::parse(body)?;
    let format = body.format()?;
    let compression = body.compression()?;
    let query = body.filters()?;
    let destination = body.destination(storage)?;
    body.finish("format, compression, filters, destination")?;
    let params = Params::parse_from(&query, export::FILTER_PARAMS).map_err(in_field("filters"))?;
    let mut export = Export::parse(&params).map_err(in_field("filters"))?;
    export.format = format;
    export.compression = compression;
    Ok((query, export, destination))
}

/// Names a parameter error about a filters object as the body field
/// `field.<parameter>`.
pub(crate) fn in_field(field: &str) -> impl Fn(ApiError) -> ApiError + '_ {
    move |error| match error {
        ApiError::BadParam { param, message } => {
            ApiError::body(&format!("{field}.{param}"), message)
        }
        other => other,
    }
}

/// Start an export job.
#[utoipa::path(
    post,
    path = "/admin/audit/exports",
    tag = "export",
    request_body(content = NewExport, content_type = "application/json"),
    responses(
        (status = 202, description = "The job, queued", body = ExportJob),
        (status = 400, description = "The body or a filter is invalid; the error names it", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "Missing, unknown, expired or revoked token", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "The token lacks the `export` scope", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "The token has `exports.max_queued_per_token` jobs queued or running; retry after `Retry-After` seconds", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn create(
    req: HttpRequest,
    exporter: Exporter,
    body: Bytes,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let (query, export, destination) = parse_new(&body, &state.storage)?;
    let owner = &exporter.0.token_id;
    let mut tx = state.pool.begin().await?;
    // One token's requests are counted one at a time (on every instance),
    // so concurrent requests cannot slip past the quota together.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('auditline.export_jobs/' || $1, 0))",
    )
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM auditline.export_jobs \
         WHERE owner_token_id = $1 AND schedule_id IS NULL AND state IN ('queued', 'running')",
    )
    .bind(owner)
    .fetch_one(&mut *tx)
    .await?;
    let max = i64::from(state.exports.max_queued_per_token);
    if active >= max {
        return Err(ApiError::TooMany {
            code: "too_many_jobs",
            message: format!(
                "this token has {active} export jobs queued or running, as many as it may \
                 (exports.max_queued_per_token = {max}); wait for one to finish or cancel one"
            ),
            retry_after: QUOTA_RETRY_SECS,
        });
    }
    let job: ExportJob = sqlx::query_as(concat!(
        "INSERT INTO auditline.export_jobs \
         (id, query, format, compression, window_from, window_to, requested_by, destination, \
          owner_token_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
        job_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(query)
    .bind(export.format.as_str())
    .bind(export.compression.as_str())
    .bind(export.from)
    .bind(export.to)
    .bind(&exporter.0.name)
    .bind(destination)
    .bind(owner)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    state.jobs_waiting.notify_one();
    Ok(HttpResponse::Accepted().json(job.complete()))
}

/// What a refused job request is told to wait: about what a small job takes.
const QUOTA_RETRY_SECS: u64 = 10;

/// The jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<ExportJob>,
}

/// List export jobs, newest first: the token's own (every job for an
/// `admin` token).
#[utoipa::path(
    get,
    path = "/admin/audit/exports",
    tag = "export",
    params(
        ("state" = Option<String>, Query, description = "Only jobs in this state",
            pattern = "^(queued|running|done|failed|cancelled|expired)$"),
        ("limit" = Option<i64>, Query, description = "At most this many (default 100)",
            minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "The jobs", body = JobList),
        crate::openapi::ReadErrors,
    )
)]
pub async fn list(
    req: HttpRequest,
    viewer: JobViewer,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(req.query_string(), &["state", "limit"])?;
    let limit = params.integer("limit", 1, 1000)?.unwrap_or(100);
    let wanted = params.one("state")?;
    if let Some(wanted) = wanted
        && !STATES.contains(&wanted)
    {
        return Err(ApiError::param(
            "state",
            format!("{wanted:?} is not one of {}", STATES.join(", ")),
        ));
    }
    let jobs: Vec<ExportJob> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM auditline.export_jobs WHERE ($1::text IS NULL OR state = $1) \
         AND ($3::text IS NULL OR owner_token_id = $3) \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    ))
    .bind(wanted)
    .bind(limit)
    .bind(viewer.owner())
    .fetch_all(&state.pool)
    .await?;
    Ok(HttpResponse::Ok().json(JobList {
        jobs: jobs.into_iter().map(ExportJob::complete).collect(),
    }))
}

fn job_id(path: &str) -> Result<Uuid, ApiError> {
    crate::params::path_uuid("id", path)
}

/// The job `id` if `viewer` may see it; another token's job is a 404 like
/// an unknown one, so ids are not confirmed.
async fn load(pool: &PgPool, id: Uuid, viewer: &JobViewer) -> Result<ExportJob, ApiError> {
    let job: Option<ExportJob> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM auditline.export_jobs WHERE id = $1 AND ($2::text IS NULL OR owner_token_id = $2)"
    ))
    .bind(id)
    .bind(viewer.owner())
    .fetch_optional(pool)
    .await?;
    job.map(ExportJob::complete)
        .ok_or_else(|| ApiError::NotFound(format!("no export job {id}")))
}

/// One export job: state, rows, bytes, progress.
#[utoipa::path(
    get,
    path = "/admin/audit/exports/{id}",
    tag = "export",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = ExportJob),
        crate::openapi::ReadErrors,
        (status = 404, description = "No such job", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn show(
    req: HttpRequest,
    viewer: JobViewer,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let job = load(&state.pool, job_id(&path)?, &viewer).await?;
    Ok(HttpResponse::Ok().json(job))
}

/// Cancel a queued or running job, or delete a finished job's file.
#[utoipa::path(
    delete,
    path = "/admin/audit/exports/{id}",
    tag = "export",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, now `cancelled` (or `expired`: its file was deleted)", body = ExportJob),
        crate::openapi::ReadErrors,
        (status = 404, description = "No such job (or another token's)", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn cancel(
    req: HttpRequest,
    viewer: JobViewer,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let id = job_id(&path)?;
    let job = load(&state.pool, id, &viewer).await?;
    if job.schedule_id.is_some() && !viewer.sees_all() {
        return Err(ApiError::Refused {
            status: actix_web::http::StatusCode::FORBIDDEN,
            code: "forbidden",
            message: "a scheduled archive is cancelled or deleted by an `admin` token only".into(),
        });
    }
    let changed: Option<(String, Option<String>, String)> = sqlx::query_as(
        "UPDATE auditline.export_jobs \
         SET state = CASE WHEN state = 'done' THEN 'expired' ELSE 'cancelled' END, \
             finished_at = coalesce(finished_at, now()) \
         WHERE id = $1 AND state IN ('queued', 'running', 'done') \
           AND ($2::text IS NULL OR (owner_token_id = $2 AND schedule_id IS NULL)) \
         RETURNING state, file_name, destination",
    )
    .bind(id)
    .bind(viewer.owner())
    .fetch_optional(&state.pool)
    .await?;
    if let Some((new_state, Some(file), destination)) = changed
        && new_state == "expired"
    {
        remove_files(&state.storage, &destination, &file).await;
    }
    // A running job notices at its next heartbeat and stops.
    let job = load(&state.pool, id, &viewer).await?;
    Ok(HttpResponse::Ok().json(job))
}

/// Download a finished export.
#[utoipa::path(
    get,
    path = "/admin/audit/exports/{id}/download",
    tag = "export",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The export file", content(
            (String = "text/csv"),
            (Vec<crate::search::StoredEvent> = "application/json"),
            (String = "application/x-ndjson"),
            (String = "application/zstd"),
        )),
        crate::openapi::ReadErrors,
        (status = 404, description = "No such job (or another token's)", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "The job is not `done`", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn download(
    req: HttpRequest,
    viewer: JobViewer,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let job = load(&state.pool, job_id(&path)?, &viewer).await?;
    let (true, Some(file)) = (job.state == "done", job.file_name.as_deref()) else {
        return Err(ApiError::Conflict(format!(
            "export job {} is {}, not done; there is no file to download",
            job.id, job.state
        )));
    };
    let (size, body) = state.storage.read(&job.destination, file).await?;
    let export = job.export()?;
    Ok(HttpResponse::Ok()
        .content_type(export.content_type())
        .insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(export.file_name())],
        })
        .no_chunking(size)
        .streaming(body))
}

/// The export's file and manifest names in the export directory.
fn manifest_name(file: &str) -> String {
    format!("{file}.manifest.json")
}

async fn remove_files(storage: &Storage, destination: &str, file: &str) {
    storage.remove(destination, file).await;
    storage.remove(destination, &manifest_name(file)).await;
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
    /// Runs forever (abort the task to stop).
    pub async fn run(self) {
        let mut last_upkeep = Instant::now() - Duration::from_secs(3600);
        loop {
            if last_upkeep.elapsed() >= Duration::from_secs(30) {
                last_upkeep = Instant::now();
                if let Err(e) = self.upkeep().await {
                    tracing::warn!(error = %format!("{e:#}"), "export upkeep failed");
                }
            }
            match crate::schedules::fire_due(&self.pool, chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "scheduled exports queued"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot fire export schedules"),
            }
            match self.claim().await {
                Ok(Some(job)) => self.run_job(job).await,
                Ok(None) => {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot claim export jobs");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
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
        let export = job.export().map_err(|e| anyhow::anyhow!("{e}"))?;
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
