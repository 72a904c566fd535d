//! Export schedules over HTTP: `POST/GET /admin/audit/export-schedules`,
//! `GET/DELETE /admin/audit/export-schedules/{id}` (their firing is
//! [`crate::workers::scheduler`]).
//!
//! A schedule belongs to the token that created it, and so do the jobs it
//! fires: an `export` token lists, shows and deletes only its own schedules
//! (another's id is a 404), an `admin` token every one.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, TimeDelta, Utc};
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    error::ApiError,
    extract::{Exporter, JobViewer},
    query::{
        body::{self, in_field},
        export::{Compression, Format},
        filters::{Filters, UNWINDOWED_NAMES},
        params::Params,
    },
    state::State,
    workers::scheduler::{Schedule, next_fire, parse_cron, schedule_columns},
};

/// The body of `POST /admin/audit/export-schedules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// A name for people (default: the cron expression).
    #[serde(default, deserialize_with = "body::present")]
    #[schema(nullable = false)]
    name: Option<String>,
    /// Five cron fields, UTC, e.g. `5 0 * * *` (00:05 every day).
    #[serde(default, deserialize_with = "body::present")]
    #[schema(nullable = false, required = true)]
    cron: Option<String>,
    /// `previous_minute`, `previous_hour` or `previous_day`.
    #[serde(default, deserialize_with = "body::present")]
    #[schema(
        nullable = false,
        required = true,
        pattern = "^previous_(minute|hour|day)$"
    )]
    window: Option<String>,
    /// `csv` (default), `json` or `ndjson`.
    #[serde(default, deserialize_with = "body::present")]
    #[schema(nullable = false)]
    format: Option<Format>,
    /// `none` (default) or `zstd`.
    #[serde(default, deserialize_with = "body::present")]
    #[schema(nullable = false)]
    compression: Option<Compression>,
    /// The search filters, with `order` but without `from`/`to` (each run's
    /// window is the schedule's).
    #[serde(default, deserialize_with = "body::present")]
    #[schema(value_type = Filters, required = false)]
    filters: Option<Map<String, Value>>,
    /// `local` (the default: the export directory) or a configured S3-compatible destination.
    #[serde(default, deserialize_with = "body::present")]
    #[schema(nullable = false)]
    destination: Option<String>,
}

/// Create a schedule.
#[utoipa::path(
    post,
    path = "/admin/audit/export-schedules",
    tag = "export",
    request_body(content = NewSchedule, content_type = "application/json"),
    responses(
        (status = 201, description = "The schedule", body = Schedule),
        (status = 400, description = "The body or a filter is invalid; the error names it", body = crate::error::ErrorEnvelope),
        (status = 401, description = "Missing, unknown, expired or revoked token", body = crate::error::ErrorEnvelope),
        (status = 403, description = "The token lacks the `export` scope", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn create(
    req: HttpRequest,
    exporter: Exporter,
    body: web::Bytes,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let new: NewSchedule = body::read(&body)?;
    let cron_text = new
        .cron
        .ok_or_else(|| ApiError::body("cron", "is required, e.g. \"5 0 * * *\""))?;
    let cron = parse_cron(&cron_text).map_err(|e| ApiError::body("cron", e))?;
    let unit = window_unit(new.window)?;
    let name = new.name.unwrap_or_else(|| cron_text.clone());
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::body(
            "name",
            "must be 1-200 characters without control characters",
        ));
    }
    let destination = new
        .destination
        .unwrap_or_else(|| auditline_integrity::storage::LOCAL.into());
    state
        .storage
        .check(&destination)
        .map_err(|message| ApiError::body("destination", message))?;
    let format = new.format.unwrap_or(Format::Csv);
    let compression = new.compression.unwrap_or(Compression::None);
    let filters = Filters::from_object(&new.filters.unwrap_or_default(), &[UNWINDOWED_NAMES])
        .map_err(in_field("filters"))?;
    let next_run_at = first_fire(&cron, Utc::now())?;
    let schedule: Schedule = sqlx::query_as(concat!(
        "INSERT INTO auditline.export_schedules \
         (id, name, cron, window_unit, filters, format, compression, destination, created_by, \
          next_run_at, owner_token_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ",
        schedule_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(&cron_text)
    .bind(unit)
    .bind(sqlx::types::Json(&filters))
    .bind(format.as_str())
    .bind(compression.as_str())
    .bind(destination)
    .bind(&exporter.0.name)
    .bind(next_run_at)
    .bind(&exporter.0.token_id)
    .fetch_one(&state.pool)
    .await?;
    Ok(HttpResponse::Created().json(schedule.complete()))
}

/// The unit of a `window` (`previous_minute` → `minute`).
fn window_unit(window: Option<String>) -> Result<&'static str, ApiError> {
    let window = window.ok_or_else(|| {
        ApiError::body(
            "window",
            "is required: previous_minute, previous_hour or previous_day",
        )
    })?;
    match window.as_str() {
        "previous_minute" => Ok("minute"),
        "previous_hour" => Ok("hour"),
        "previous_day" => Ok("day"),
        other => Err(ApiError::body(
            "window",
            format!("{other:?} is not one of previous_minute, previous_hour, previous_day"),
        )),
    }
}

/// The first fire time after `now`. Every fire queues a job and writes a
/// file: a cron firing more than once a minute (within its next 120 fires)
/// would flood storage for windows too short to hold anything, and is
/// refused.
fn first_fire(cron: &Cron, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let first = next_fire(cron, now).ok_or_else(|| ApiError::body("cron", "never fires"))?;
    let mut fire = first;
    for _ in 0..120 {
        let Some(next) = next_fire(cron, fire) else {
            break;
        };
        if next - fire < TimeDelta::minutes(1) {
            return Err(ApiError::body(
                "cron",
                "fires more often than once a minute; the shortest interval is one minute",
            ));
        }
        fire = next;
    }
    Ok(first)
}

/// The schedules.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// List schedules.
#[utoipa::path(
    get,
    path = "/admin/audit/export-schedules",
    tag = "export",
    responses(
        (status = 200, description = "The schedules, oldest first", body = ScheduleList),
        crate::error::ReadErrors,
    )
)]
pub async fn list(
    req: HttpRequest,
    viewer: JobViewer,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let schedules: Vec<Schedule> = sqlx::query_as(concat!(
        "SELECT ",
        schedule_columns!(),
        " FROM auditline.export_schedules WHERE ($1::text IS NULL OR owner_token_id = $1) \
         ORDER BY created_at, id"
    ))
    .bind(viewer.owner())
    .fetch_all(&state.pool)
    .await?;
    Ok(HttpResponse::Ok().json(ScheduleList {
        schedules: schedules.into_iter().map(Schedule::complete).collect(),
    }))
}

/// Runs `sql` (the schedule's id as `$1`, the owner to match or null as
/// `$2`, the schedule's columns returned) and answers with the schedule, or
/// 404 (also for another token's).
async fn answer_one(
    req: &HttpRequest,
    path: &str,
    state: &State,
    viewer: &JobViewer,
    sql: &'static str,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let id = crate::query::params::path_uuid("id", path)?;
    let schedule: Option<Schedule> = sqlx::query_as(sql)
        .bind(id)
        .bind(viewer.owner())
        .fetch_optional(&state.pool)
        .await?;
    schedule
        .map(|s| HttpResponse::Ok().json(s.complete()))
        .ok_or_else(|| ApiError::NotFound(format!("no export schedule {id}")))
}

/// One schedule.
#[utoipa::path(
    get,
    path = "/admin/audit/export-schedules/{id}",
    tag = "export",
    params(("id" = Uuid, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        crate::error::ReadErrors,
        (status = 404, description = "No such schedule", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn show(
    req: HttpRequest,
    viewer: JobViewer,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let sql = concat!(
        "SELECT ",
        schedule_columns!(),
        " FROM auditline.export_schedules WHERE id = $1 \
         AND ($2::text IS NULL OR owner_token_id = $2)"
    );
    answer_one(&req, &path, &state, &viewer, sql).await
}

/// Delete a schedule (its jobs and files stay).
#[utoipa::path(
    delete,
    path = "/admin/audit/export-schedules/{id}",
    tag = "export",
    params(("id" = Uuid, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "The deleted schedule", body = Schedule),
        crate::error::ReadErrors,
        (status = 404, description = "No such schedule", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn delete(
    req: HttpRequest,
    viewer: JobViewer,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let sql = concat!(
        "DELETE FROM auditline.export_schedules WHERE id = $1 \
         AND ($2::text IS NULL OR owner_token_id = $2) RETURNING ",
        schedule_columns!()
    );
    answer_one(&req, &path, &state, &viewer, sql).await
}

/// Registers `/admin/audit/export-schedules[/{id}]` (inside the `/admin/audit` scope).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use actix_web::web;
    use auditline_shared::error::methods;
    cfg.service(methods(
        "/export-schedules",
        "GET, POST",
        vec![web::get().to(list), web::post().to(create)],
    ))
    .service(methods(
        "/export-schedules/{id}",
        "GET, DELETE",
        vec![web::get().to(show), web::delete().to(delete)],
    ));
}
