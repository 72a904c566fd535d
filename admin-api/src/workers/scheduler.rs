//! Firing export schedules (the HTTP side is [`crate::routes::schedules`]).
//!
//! A schedule has a cron expression (five fields, UTC; a sixth, leading
//! seconds field is accepted, but no schedule fires more often than once a
//! minute) and a window unit: each fire time `t` queues
//! one export job over the window that ends at `t` truncated to the unit and
//! starts where the previous job's window ended, so consecutive files never
//! overlap and never leave a gap. Fire times missed while no admin instance
//! ran are caught up, one job each. The job is queued and the schedule
//! advanced in one transaction (the schedule row locked with `FOR UPDATE SKIP
//! LOCKED`), so each window is handed out once however many instances run.

use chrono::{DateTime, DurationRound, SubsecRound, TimeDelta, Utc};
use croner::{Cron, parser::CronParser};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::query::{
    export::{Compression, Format},
    filters::Filters,
};

/// The most fire times caught up in one pass (a schedule that was off for a
/// long time catches up over several passes, a second apart).
const CATCH_UP_PER_PASS: usize = 500;

/// A schedule as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Schedule {
    pub id: Uuid,
    pub name: String,
    /// Five cron fields (minute hour day-of-month month day-of-week), UTC.
    pub cron: String,
    /// `previous_minute`, `previous_hour` or `previous_day`.
    #[sqlx(skip)]
    pub window: String,
    #[serde(skip)]
    pub window_unit: String,
    /// The search filters and order (no `from`/`to`: each run's window is
    /// the schedule's).
    /// (Copied into each job as stored; checked when the job runs.)
    #[schema(value_type = Filters)]
    pub filters: sqlx::types::Json<serde_json::Value>,
    pub format: Format,
    pub compression: Compression,
    /// `local` (files land in `export_dir`) or a configured S3-compatible destination.
    pub destination: String,
    pub created_by: String,
    /// The id of the token the schedule (and the jobs it fires) belongs to.
    pub owner_token_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The next fire time.
    pub next_run_at: DateTime<Utc>,
    /// Where the last queued window ended (the next one starts here).
    pub last_window_to: Option<DateTime<Utc>>,
    /// Jobs queued so far.
    pub runs: i64,
}

macro_rules! schedule_columns {
    () => {
        "id, name, cron, window_unit, filters, format, compression, destination, created_by, \
         owner_token_id, created_at, next_run_at, last_window_to, runs"
    };
}
pub(crate) use schedule_columns;

impl Schedule {
    pub(crate) fn complete(mut self) -> Self {
        self.window = format!("previous_{}", self.window_unit);
        self
    }
}

pub(crate) fn parse_cron(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| e.to_string())
}

pub(crate) fn unit_delta(unit: &str) -> TimeDelta {
    match unit {
        "minute" => TimeDelta::minutes(1),
        "hour" => TimeDelta::hours(1),
        _ => TimeDelta::days(1),
    }
}

/// The next fire time strictly after `t`, on a whole second (croner keeps
/// the fraction of the time it starts from).
pub(crate) fn next_fire(cron: &Cron, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&t.trunc_subsecs(0), false).ok()
}

/// Queues a job for every fire time that has come by `now`; returns how
/// many. The clock is the caller's (the job runner passes `Utc::now()`), so
/// firing can be driven through any time line.
#[tracing::instrument(skip(pool))]
pub async fn fire_due(pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let due: Vec<Schedule> = sqlx::query_as(concat!(
        "SELECT ",
        schedule_columns!(),
        " FROM auditline.export_schedules WHERE next_run_at <= $1 \
         ORDER BY next_run_at FOR UPDATE SKIP LOCKED LIMIT 20"
    ))
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut queued = 0;
    for schedule in due {
        let cron = match parse_cron(&schedule.cron) {
            Ok(cron) => cron,
            Err(e) => {
                tracing::error!(schedule = %schedule.id, error = %e, "unparsable schedule skipped");
                continue;
            }
        };
        let step = unit_delta(&schedule.window_unit);
        let mut fire = Some(schedule.next_run_at);
        let mut last_to = schedule.last_window_to;
        let mut runs = 0i64;
        for _ in 0..CATCH_UP_PER_PASS {
            let Some(at) = fire.filter(|at| *at <= now) else {
                break;
            };
            let to = at.duration_trunc(step)?;
            let from = last_to.unwrap_or(to - step);
            if from < to {
                sqlx::query(
                    "INSERT INTO auditline.export_jobs (id, filters, format, compression, \
                     window_from, window_to, requested_by, schedule_id, destination, \
                     owner_token_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(Uuid::now_v7())
                .bind(&schedule.filters)
                .bind(schedule.format.as_str())
                .bind(schedule.compression.as_str())
                .bind(from)
                .bind(to)
                .bind(format!("schedule:{}", schedule.name))
                .bind(schedule.id)
                .bind(&schedule.destination)
                .bind(&schedule.owner_token_id)
                .execute(&mut *tx)
                .await?;
                last_to = Some(to);
                runs += 1;
            }
            fire = next_fire(&cron, at);
        }
        // A cron that never fires again parks the schedule far away.
        let next = fire.unwrap_or(DateTime::<Utc>::MAX_UTC);
        sqlx::query(
            "UPDATE auditline.export_schedules SET next_run_at = $2, last_window_to = $3, \
             runs = runs + $4 WHERE id = $1",
        )
        .bind(schedule.id)
        .bind(next)
        .bind(last_to)
        .bind(runs)
        .execute(&mut *tx)
        .await?;
        queued += runs as usize;
    }
    tx.commit().await?;
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_fire_where_operators_expect() {
        let cron = parse_cron("5 0 * * *").expect("daily at 00:05");
        let at: DateTime<Utc> = "2026-11-28T21:45:00Z".parse().expect("time");
        assert_eq!(
            next_fire(&cron, at),
            Some("2026-11-29T00:05:00Z".parse().expect("time"))
        );
        let every_minute = parse_cron("* * * * *").expect("every minute");
        let on_the_minute: DateTime<Utc> = "2026-11-28T21:45:00Z".parse().expect("time");
        assert_eq!(
            next_fire(&every_minute, on_the_minute),
            Some("2026-11-28T21:46:00Z".parse().expect("time")),
            "strictly after"
        );
        let between: DateTime<Utc> = "2026-11-28T21:45:34.603756Z".parse().expect("time");
        assert_eq!(
            next_fire(&every_minute, between),
            Some("2026-11-28T21:46:00Z".parse().expect("time")),
            "on the minute, not at the fraction of a second the schedule was created"
        );
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("not cron").is_err());
    }
}
