//! `GET /admin/audit/metrics`: real-time audit metrics as JSON, from the
//! minute rollups (so the cost does not grow with the event rate).

use actix_web::{HttpRequest, HttpResponse, web};
use auditline_shared::rollup::{Grain, merge, quantile};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::{error::ApiError, extract::Reader, query::params::Params, state::State};

/// Activity over one trailing window.
#[derive(Debug, Serialize, ToSchema)]
pub struct WindowStats {
    /// 1, 5 or 15.
    pub minutes: i64,
    pub events: i64,
    pub failures: i64,
    pub events_per_second: f64,
    /// failures / events (0 without events)
    pub failure_rate: f64,
    /// Upper bounds of the histogram buckets (≤ 19% above the exact value).
    pub p50_response_time_ms: Option<f64>,
    pub p95_response_time_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ranked {
    pub name: String,
    pub events: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsSnapshot {
    pub as_of: DateTime<Utc>,
    /// The windows end now and start at the beginning of the minute that
    /// lies 0, 4 and 14 minutes back, so the current minute always counts;
    /// rates divide by the time actually elapsed.
    pub windows: Vec<WindowStats>,
    /// The ten most active users of the current and the previous hour
    /// (from the hourly rollups: minutes are not kept per user).
    pub top_users: Vec<Ranked>,
    /// The ten most frequent action types of the 15-minute window.
    pub top_action_types: Vec<Ranked>,
}

/// Real-time metrics over the last 1, 5 and 15 minutes.
#[utoipa::path(
    get,
    path = "/admin/audit/metrics",
    tag = "metrics",
    responses(
        (status = 200, description = "The current figures", body = MetricsSnapshot),
        crate::error::ReadErrors,
    )
)]
pub async fn metrics(
    req: HttpRequest,
    _reader: Reader,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let now = Utc::now();
    let current = Grain::Minute.floor(now);
    let start = current - TimeDelta::minutes(14);

    // Per minute: (events, failures) and the histogram over everyone.
    let counts: Vec<(DateTime<Utc>, i64, i64)> = sqlx::query_as(
        "SELECT bucket, sum(events)::int8, sum(failures)::int8 FROM auditline.rollups \
         WHERE grain = 'm' AND bucket >= $1 GROUP BY bucket",
    )
    .bind(start)
    .fetch_all(&state.pool)
    .await?;
    let hists: Vec<(DateTime<Utc>, i32, Vec<i32>)> = sqlx::query_as(concat!(
        "SELECT bucket, ",
        auditline_shared::hist_columns!(),
        " FROM auditline.rollup_latency WHERE grain = 'm' AND user_id IS NULL AND bucket >= $1"
    ))
    .bind(start)
    .fetch_all(&state.pool)
    .await?;
    let by_minute: BTreeMap<DateTime<Utc>, (i64, i64)> =
        counts.into_iter().map(|(m, e, f)| (m, (e, f))).collect();

    let windows = [1i64, 5, 15]
        .into_iter()
        .map(|minutes| {
            let begin = current - TimeDelta::minutes(minutes - 1);
            let (events, failures) = by_minute
                .range(begin..)
                .fold((0, 0), |(e, f), (_, (de, df))| (e + de, f + df));
            let mut hist = Vec::new();
            for (_, first, counts) in hists.iter().filter(|(m, _, _)| *m >= begin) {
                merge(&mut hist, *first, counts);
            }
            let elapsed = (now - begin).as_seconds_f64().max(1.0);
            WindowStats {
                minutes,
                events,
                failures,
                events_per_second: events as f64 / elapsed,
                failure_rate: if events > 0 {
                    failures as f64 / events as f64
                } else {
                    0.0
                },
                p50_response_time_ms: quantile(&hist, 0.5),
                p95_response_time_ms: quantile(&hist, 0.95),
            }
        })
        .collect();

    let top_users = ranked(
        &state.pool,
        "SELECT user_id, sum(events)::int8 AS n FROM auditline.rollups \
         WHERE grain = 'h' AND bucket >= $1 AND user_id IS NOT NULL \
         GROUP BY 1 ORDER BY n DESC, 1 LIMIT 10",
        Grain::Hour.floor(now) - TimeDelta::hours(1),
    )
    .await?;
    let top_action_types = ranked(
        &state.pool,
        "SELECT action_type, sum(events)::int8 AS n FROM auditline.rollups \
         WHERE grain = 'm' AND bucket >= $1 GROUP BY 1 ORDER BY n DESC, 1 LIMIT 10",
        start,
    )
    .await?;
    Ok(HttpResponse::Ok().json(MetricsSnapshot {
        as_of: now,
        windows,
        top_users,
        top_action_types,
    }))
}

/// `(name, count)` rows of a ranking query whose one parameter is its start.
async fn ranked(
    pool: &sqlx::PgPool,
    sql: &'static str,
    since: DateTime<Utc>,
) -> Result<Vec<Ranked>, ApiError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql).bind(since).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(name, events)| Ranked { name, events })
        .collect())
}

/// Registers `/admin/audit/metrics` (inside the `/admin/audit` scope).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use super::get;
    use actix_web::web;
    cfg.service(get("/metrics", web::get().to(metrics)));
}
