//! Export jobs over HTTP: `POST/GET /admin/audit/exports[/{id}[/download]]`,
//! `DELETE /admin/audit/exports/{id}` (the work is [`crate::workers::jobs`]).
//!
//! A job belongs to the token that created it (a scheduled job to the
//! schedule's): an `export` token lists, shows, downloads and cancels only
//! its own, and another's id answers 404 as an unknown one does; an `admin`
//! token sees every job, including those from before owners were recorded.
//! Jobs a schedule fired (the scheduled archives) are deleted by `admin`
//! tokens only. A token may have `exports.max_queued_per_token` jobs queued
//! or running at once; one more is a 429 with `Retry-After`.

use actix_web::{
    HttpRequest, HttpResponse,
    http::header::{ContentDisposition, DispositionParam, DispositionType},
    web::{self, Bytes},
};
use auditline_integrity::storage::Storage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    error::ApiError,
    extract::{Exporter, JobViewer},
    query::{
        body::{self, in_field},
        export::{Compression, Export, Format},
        filters::{FILTER_NAMES, Filters},
        params::Params,
    },
    state::State,
    workers::jobs::{ExportJob, STATES, job_columns, remove_files},
};

/// The body of `POST /admin/audit/exports`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExport {
    /// `csv` (default), `json` or `ndjson`.
    #[serde(default, deserialize_with = "body::present")]
    #[schema(nullable = false)]
    format: Option<Format>,
    /// `none` (default) or `zstd`.
    #[serde(default, deserialize_with = "body::present")]
    #[schema(nullable = false)]
    compression: Option<Compression>,
    /// The search filters, with the window (`from`, `to`) and `order`.
    #[serde(default, deserialize_with = "body::present")]
    #[schema(value_type = Filters, required = false)]
    filters: Option<Map<String, Value>>,
    /// `local` (the default: the export directory) or a configured S3-compatible destination.
    #[serde(default, deserialize_with = "body::present")]
    #[schema(nullable = false)]
    destination: Option<String>,
}

fn parse_new(body: &[u8], storage: &Storage) -> Result<(Export, String), ApiError> {
    let new: NewExport = body::read(body)?;
    let destination = new
        .destination
        .unwrap_or_else(|| auditline_integrity::storage::LOCAL.into());
    storage
        .check(&destination)
        .map_err(|message| ApiError::body("destination", message))?;
    let export = Filters::from_object(&new.filters.unwrap_or_default(), FILTER_NAMES)
        .and_then(|filters| {
            Export::new(
                filters,
                new.format.unwrap_or(Format::Csv),
                new.compression.unwrap_or(Compression::None),
            )
        })
        .map_err(in_field("filters"))?;
    Ok((export, destination))
}

/// Start an export job.
#[utoipa::path(
    post,
    path = "/admin/audit/exports",
    tag = "export",
    request_body(content = NewExport, content_type = "application/json"),
    responses(
        (status = 202, description = "The job, queued", body = ExportJob),
        (status = 400, description = "The body or a filter is invalid; the error names it", body = crate::error::ErrorEnvelope),
        (status = 401, description = "Missing, unknown, expired or revoked token", body = crate::error::ErrorEnvelope),
        (status = 403, description = "The token lacks the `export` scope", body = crate::error::ErrorEnvelope),
        (status = 429, description = "The token has `exports.max_queued_per_token` jobs queued or running; retry after `Retry-After` seconds", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn create(
    req: HttpRequest,
    exporter: Exporter,
    body: Bytes,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let (export, destination) = parse_new(&body, &state.storage)?;
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
         (id, filters, format, compression, window_from, window_to, requested_by, destination, \
          owner_token_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
        job_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(sqlx::types::Json(&export.filters))
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
        crate::error::ReadErrors,
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
    crate::query::params::path_uuid("id", path)
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
        crate::error::ReadErrors,
        (status = 404, description = "No such job", body = crate::error::ErrorEnvelope),
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
        crate::error::ReadErrors,
        (status = 404, description = "No such job (or another token's)", body = crate::error::ErrorEnvelope),
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
            (Vec<auditline_shared::stored::StoredEvent> = "application/json"),
            (String = "application/x-ndjson"),
            (String = "application/zstd"),
        )),
        crate::error::ReadErrors,
        (status = 404, description = "No such job (or another token's)", body = crate::error::ErrorEnvelope),
        (status = 409, description = "The job is not `done`", body = crate::error::ErrorEnvelope),
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

/// Registers `/admin/audit/exports[/{id}[/download]]` (inside the `/admin/audit` scope).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use super::get;
    use actix_web::web;
    use auditline_shared::error::methods;
    cfg.service(methods(
        "/exports",
        "GET, POST",
        vec![web::get().to(list), web::post().to(create)],
    ))
    .service(methods(
        "/exports/{id}",
        "GET, DELETE",
        vec![web::get().to(show), web::delete().to(cancel)],
    ))
    .service(get("/exports/{id}/download", web::get().to(download)));
}
