//! `GET /admin/audit/users` and `GET /admin/audit/users/{user_id}`: per-user
//! activity summaries, answered from the rollups the writer maintains
//! (`auditline.rollups`, `auditline.rollup_latency`), never by scanning events.
//!
//! Rollups are hourly and daily, so a range is widened to whole hours (`from`
//! rounded down, `to` up); the answer states the range it covers. Full days
//! are read from the daily rows and the partial days at either end from the
//! hourly rows. The p95 response time comes from a log-scale histogram and is
//! the upper bound of the bucket the true p95 falls in (at most 19% above it).

use actix_web::{HttpRequest, HttpResponse, web};
use auditline_shared::rollup::{Grain, merge, quantile};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};

use crate::{
    error::ApiError,
    extract::Reader,
    query::params::{Params, check_len, time_range},
    state::State,
};

/// A range split into the part covered by whole days and the hourly edges.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    days: Option<(DateTime<Utc>, DateTime<Utc>)>,
    hours: [(DateTime<Utc>, DateTime<Utc>); 2],
}

impl Span {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let from = Grain::Hour.floor(from);
        let to = {
            let floor = Grain::Hour.floor(to);
            if floor < to {
                floor + TimeDelta::hours(1)
            } else {
                floor
            }
        };
        let first_day = {
            let floor = Grain::Day.floor(from);
            if floor < from {
                floor + TimeDelta::days(1)
            } else {
                floor
            }
        };
        let last_day = Grain::Day.floor(to);
        if first_day < last_day {
            Self {
                from,
                to,
                days: Some((first_day, last_day)),
                hours: [(from, first_day), (last_day, to)],
            }
        } else {
            Self {
                from,
                to,
                days: None,
                hours: [(from, to), (to, to)],
            }
        }
    }

    /// ` AND (…)` selecting the rollup rows of the span.
    fn push(&self, qb: &mut QueryBuilder<Postgres>) {
        qb.push(" AND ((grain = 'h' AND ((bucket >= ")
            .push_bind(self.hours[0].0)
            .push(" AND bucket < ")
            .push_bind(self.hours[0].1)
            .push(") OR (bucket >= ")
            .push_bind(self.hours[1].0)
            .push(" AND bucket < ")
            .push_bind(self.hours[1].1)
            .push(")))");
        if let Some((first, last)) = self.days {
            qb.push(" OR (grain = 'd' AND bucket >= ")
                .push_bind(first)
                .push(" AND bucket < ")
                .push_bind(last)
                .push(")");
        }
        qb.push(")");
    }
}

/// How often one action type occurs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionCount {
    pub action_type: String,
    pub count: i64,
}

/// One user's activity over a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserSummary {
    pub user_id: String,
    pub total: i64,
    pub failures: i64,
    /// failures / total
    pub failure_rate: f64,
    /// Over the events that reported a response time; null when none did.
    pub avg_response_time_ms: Option<f64>,
    /// Upper bound of the histogram bucket holding the p95 (≤ 19% above it).
    pub p95_response_time_ms: Option<f64>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The most frequent action types, most frequent first (at most 5).
    pub top_action_types: Vec<ActionCount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsersPage {
    /// The range covered, widened to whole hours.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub users: Vec<UserSummary>,
    /// Pass as `offset` for the next page; null on the last page.
    pub next_offset: Option<i64>,
}

/// One hour of a user's timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct HourActivity {
    pub hour: DateTime<Utc>,
    pub total: i64,
    pub failures: i64,
    pub avg_response_time_ms: Option<f64>,
    pub p95_response_time_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserDetail {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub summary: UserSummary,
    /// Every hour of the range with activity, oldest first.
    pub timeline: Vec<HourActivity>,
}

/// Query parameters of `GET /admin/audit/users`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UsersParams {
    /// Start of the range; default `to` minus 24 hours; rounded down to the hour.
    from: Option<DateTime<Utc>>,
    /// End of the range; default now; rounded up to the hour.
    to: Option<DateTime<Utc>>,
    /// Sort key (default `total`).
    #[param(pattern = "^(total|failures|failure_rate|avg_response_time_ms|last_seen|user_id)$")]
    sort: Option<String>,
    /// `desc` (default) or `asc`.
    #[param(pattern = "^(asc|desc)$")]
    order: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    #[param(minimum = 0, maximum = 1000000)]
    offset: Option<i64>,
}

/// Query parameters of `GET /admin/audit/users/{user_id}`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct UserParams {
    /// Start of the range; default `to` minus 24 hours; rounded down to the hour.
    from: Option<DateTime<Utc>>,
    /// End of the range; default now; rounded up to the hour.
    to: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
struct Totals {
    user_id: String,
    total: i64,
    failures: i64,
    rt_count: i64,
    rt_sum: f64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

fn sort_expression(sort: &str) -> Option<&'static str> {
    Some(match sort {
        "total" => "total",
        "failures" => "failures",
        "failure_rate" => "sum(failures)::float8 / sum(events)",
        "avg_response_time_ms" => "sum(rt_sum) / nullif(sum(rt_count), 0)",
        "last_seen" => "last_seen",
        "user_id" => "user_id",
        _ => return None,
    })
}

async fn totals(
    pool: &PgPool,
    span: &Span,
    only: Option<&str>,
    order_by: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Totals>, ApiError> {
    let mut qb = QueryBuilder::new(
        "SELECT user_id, sum(events)::int8 AS total, sum(failures)::int8 AS failures, \
         sum(rt_count)::int8 AS rt_count, coalesce(sum(rt_sum), 0)::float8 AS rt_sum, \
         min(first_at) AS first_seen, max(last_at) AS last_seen \
         FROM auditline.rollups WHERE user_id IS NOT NULL",
    );
    if let Some(user) = only {
        qb.push(" AND user_id = ").push_bind(user.to_owned());
    }
    span.push(&mut qb);
    qb.push(" GROUP BY user_id ORDER BY ")
        .push(order_by)
        .push(", user_id LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    Ok(qb.build_query_as().fetch_all(pool).await?)
}

/// Top action types and the latency histogram of these users.
async fn details(
    pool: &PgPool,
    span: &Span,
    users: &[String],
) -> Result<(HashMap<String, Vec<ActionCount>>, HashMap<String, Vec<i64>>), ApiError> {
    let mut qb = QueryBuilder::new(
        "SELECT user_id, action_type, sum(events)::int8 FROM auditline.rollups WHERE user_id = ANY(",
    );
    qb.push_bind(users.to_vec()).push(")");
    span.push(&mut qb);
    qb.push(" GROUP BY user_id, action_type ORDER BY user_id, 3 DESC, action_type");
    let rows: Vec<(String, String, i64)> = qb.build_query_as().fetch_all(pool).await?;
    let mut actions: HashMap<String, Vec<ActionCount>> = HashMap::new();
    for (user, action_type, count) in rows {
        let top = actions.entry(user).or_default();
        if top.len() < 5 {
            top.push(ActionCount { action_type, count });
        }
    }
    let mut qb = QueryBuilder::new(concat!(
        "SELECT user_id, ",
        auditline_shared::hist_columns!(),
        " FROM auditline.rollup_latency WHERE user_id = ANY("
    ));
    qb.push_bind(users.to_vec()).push(")");
    span.push(&mut qb);
    let rows: Vec<(String, i32, Vec<i32>)> = qb.build_query_as().fetch_all(pool).await?;
    let mut hists: HashMap<String, Vec<i64>> = HashMap::new();
    for (user, first, counts) in rows {
        merge(hists.entry(user).or_default(), first, &counts);
    }
    Ok((actions, hists))
}

fn summary(
    t: Totals,
    actions: &mut HashMap<String, Vec<ActionCount>>,
    hists: &HashMap<String, Vec<i64>>,
) -> UserSummary {
    UserSummary {
        failure_rate: if t.total > 0 {
            t.failures as f64 / t.total as f64
        } else {
            0.0
        },
        avg_response_time_ms: (t.rt_count > 0).then(|| t.rt_sum / t.rt_count as f64),
        p95_response_time_ms: hists.get(&t.user_id).and_then(|h| quantile(h, 0.95)),
        top_action_types: actions.remove(&t.user_id).unwrap_or_default(),
        total: t.total,
        failures: t.failures,
        first_seen: t.first_seen,
        last_seen: t.last_seen,
        user_id: t.user_id,
    }
}

/// Per-user activity summaries over a time range.
#[utoipa::path(
    get,
    path = "/admin/audit/users",
    tag = "users",
    params(UsersParams),
    responses(
        (status = 200, description = "One page of user summaries", body = UsersPage),
        crate::error::ReadErrors,
    )
)]
pub async fn users(
    req: HttpRequest,
    _reader: Reader,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(
        req.query_string(),
        &["from", "to", "sort", "order", "limit", "offset"],
    )?;
    let (from, to) = time_range(&params, TimeDelta::hours(24))?;
    let sort = params.one("sort")?.unwrap_or("total");
    let expression = sort_expression(sort).ok_or_else(|| {
        ApiError::param(
            "sort",
            format!("{sort:?} is not one of total, failures, failure_rate, avg_response_time_ms, last_seen, user_id"),
        )
    })?;
    let direction = if params.descending("order")? {
        "DESC NULLS LAST"
    } else {
        "ASC NULLS LAST"
    };
    let limit = params.integer("limit", 1, 500)?.unwrap_or(50);
    let offset = params.integer("offset", 0, 1_000_000)?.unwrap_or(0);
    let span = Span::new(from, to);
    let order_by = format!("{expression} {direction}");
    let mut rows = totals(&state.pool, &span, None, &order_by, limit + 1, offset).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let ids: Vec<String> = rows.iter().map(|r| r.user_id.clone()).collect();
    let (mut actions, hists) = details(&state.pool, &span, &ids).await?;
    let users = rows
        .into_iter()
        .map(|t| summary(t, &mut actions, &hists))
        .collect();
    Ok(HttpResponse::Ok().json(UsersPage {
        from: span.from,
        to: span.to,
        users,
        next_offset: more.then_some(offset + limit),
    }))
}

/// One user's summary and hourly timeline.
#[utoipa::path(
    get,
    path = "/admin/audit/users/{user_id}",
    tag = "users",
    params(("user_id" = String, Path, description = "The user"), UserParams),
    responses(
        (status = 200, description = "The user's activity", body = UserDetail),
        crate::error::ReadErrors,
        (status = 404, description = "No activity of this user in the range", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn user(
    req: HttpRequest,
    _reader: Reader,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(req.query_string(), &["from", "to"])?;
    let user_id = path.into_inner();
    check_len("user_id", &user_id, 255)?;
    if user_id.contains('\0') {
        return Err(ApiError::param(
            "user_id",
            "must not contain NUL characters",
        ));
    }
    let (from, to) = time_range(&params, TimeDelta::hours(24))?;
    let span = Span::new(from, to);
    let Some(t) = totals(&state.pool, &span, Some(&user_id), "total", 1, 0)
        .await?
        .pop()
    else {
        return Err(ApiError::NotFound(format!(
            "no activity of user {user_id:?} from {} to {}",
            span.from, span.to
        )));
    };
    let (mut actions, hists) = details(&state.pool, &span, std::slice::from_ref(&user_id)).await?;
    let summary = summary(t, &mut actions, &hists);

    let hours: Vec<(DateTime<Utc>, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT bucket, sum(events)::int8, sum(failures)::int8, sum(rt_count)::int8, \
         coalesce(sum(rt_sum), 0)::float8 FROM auditline.rollups \
         WHERE grain = 'h' AND user_id = $1 AND bucket >= $2 AND bucket < $3 \
         GROUP BY bucket ORDER BY bucket",
    )
    .bind(&user_id)
    .bind(span.from)
    .bind(span.to)
    .fetch_all(&state.pool)
    .await?;
    let hists: HashMap<DateTime<Utc>, (i32, Vec<i32>)> =
        sqlx::query_as::<_, (DateTime<Utc>, i32, Vec<i32>)>(concat!(
            "SELECT bucket, ",
            auditline_shared::hist_columns!(),
            " FROM auditline.rollup_latency \
         WHERE grain = 'h' AND user_id = $1 AND bucket >= $2 AND bucket < $3"
        ))
        .bind(&user_id)
        .bind(span.from)
        .bind(span.to)
        .fetch_all(&state.pool)
        .await?
        .into_iter()
        .map(|(hour, first, counts)| (hour, (first, counts)))
        .collect();
    let timeline = hours
        .into_iter()
        .map(|(hour, total, failures, rt_count, rt_sum)| HourActivity {
            hour,
            total,
            failures,
            avg_response_time_ms: (rt_count > 0).then(|| rt_sum / rt_count as f64),
            p95_response_time_ms: hists.get(&hour).and_then(|(first, counts)| {
                let mut merged = Vec::new();
                merge(&mut merged, *first, counts);
                quantile(&merged, 0.95)
            }),
        })
        .collect();
    Ok(HttpResponse::Ok().json(UserDetail {
        from: span.from,
        to: span.to,
        summary,
        timeline,
    }))
}

/// Registers `/admin/audit/users[/{user_id}]` (inside the `/admin/audit` scope).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use super::get;
    use actix_web::web;
    cfg.service(get("/users", web::get().to(users)))
        .service(get("/users/{user_id}", web::get().to(user)));
}
