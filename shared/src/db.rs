//! PostgreSQL: the connection pool, the embedded migrations and partition upkeep.

use crate::settings::SecretUrl;
use anyhow::Context;
use chrono::{Days, NaiveDate, Utc};
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use std::{str::FromStr, time::Duration};

/// The migrations in the repository's `migrations/` folder, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connection options from a URL, with statement logging turned down to debug
/// (COPY batches would flood the log otherwise) and JIT compilation off:
/// Auditline's queries take milliseconds, and a plan whose estimate crosses
/// `jit_above_cost` spent ~465 ms compiling to run a 12 ms search.
pub fn connect_options(url: &SecretUrl) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url.expose())
        .with_context(|| format!("invalid database URL {url}"))?
        .application_name("auditline")
        .options([("jit", "off")])
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5));
    Ok(options)
}

/// A pool for request-style work (admin queries, partition upkeep).
pub fn pool(url: &SecretUrl, max_connections: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(connect_options(url)?))
}

/// One dedicated connection (the writer's COPY path).
pub async fn connect(url: &SecretUrl) -> anyhow::Result<PgConnection> {
    let mut conn = PgConnection::connect_with(&connect_options(url)?)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut conn)
        .await
        .context("cannot set the session time zone")?;
    Ok(conn)
}

/// A read-only `REPEATABLE READ` transaction: every query in it sees one
/// snapshot (an export's chunks; a search's index and its rows). Dropped
/// without commit, it rolls back.
pub async fn snapshot(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Runs every pending migration. Idempotent.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("migrations failed")?;
    Ok(())
}

/// Creates the daily partition holding `day` if it does not exist yet.
/// Returns whether it was created. Safe to call from several writers at once.
pub async fn ensure_partition<'c, E>(executor: E, day: NaiveDate) -> sqlx::Result<bool>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query_scalar("SELECT auditline.ensure_partition($1)")
        .bind(day)
        .fetch_one(executor)
        .await
}

/// The name of `day`'s partition of `auditline.events` (schema left out).
pub fn partition_name(day: NaiveDate) -> String {
    format!("events_{}", day.format("%Y%m%d"))
}

/// Whether `day`'s partition exists.
pub async fn partition_exists(pool: &PgPool, day: NaiveDate) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("auditline.{}", partition_name(day)))
        .fetch_one(pool)
        .await
}

/// Makes sure partitions exist from yesterday (UTC) to `ahead_days` days ahead.
/// Returns how many were created.
pub async fn ensure_runway(pool: &PgPool, ahead_days: u32) -> sqlx::Result<u32> {
    let today = Utc::now().date_naive();
    let mut created = 0;
    let first = today.checked_sub_days(Days::new(1)).unwrap_or(today);
    for offset in 0..=u64::from(ahead_days) + 1 {
        let Some(day) = first.checked_add_days(Days::new(offset)) else {
            break;
        };
        if ensure_partition(pool, day).await? {
            created += 1;
        }
    }
    Ok(created)
}

/// Days ahead of today (UTC) covered by consecutive existing partitions.
pub async fn runway_days(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT auditline.partition_runway_days()::bigint")
        .fetch_one(pool)
        .await
}
