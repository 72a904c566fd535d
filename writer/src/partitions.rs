//! The partition keeper: keeps daily partitions of `auditline.events` created
//! ahead of need, and creates the partition of any other day (late or
//! back-filled events) when a writer asks.
//!
//! Creating a partition takes a strong lock on the parent table, so the keeper
//! does it ahead of time, off the write path; on-demand creation for an old day
//! is a single short statement that never holds up the queue for long.

use crate::metrics::WriterMetrics;
use actix::prelude::*;
use auditline_shared::{db, settings::PartitionSettings};
use chrono::NaiveDate;
use sqlx::PgPool;
use std::{collections::HashSet, time::Duration};

/// Runs on start and then every `partitions.check_interval_secs`.
#[derive(Debug)]
pub struct PartitionKeeper {
    pool: PgPool,
    settings: PartitionSettings,
    metrics: WriterMetrics,
    known: HashSet<NaiveDate>,
    /// When each on-demand partition of the last hour was created.
    created: std::collections::VecDeque<std::time::Instant>,
}

impl PartitionKeeper {
    pub fn new(pool: PgPool, settings: PartitionSettings, metrics: WriterMetrics) -> Self {
        Self {
            pool,
            settings,
            metrics,
            known: HashSet::new(),
            created: std::collections::VecDeque::new(),
        }
    }

    /// Makes the runway exist now; used once before consuming starts.
    pub async fn ensure_runway(
        pool: &PgPool,
        settings: &PartitionSettings,
        metrics: &WriterMetrics,
    ) -> anyhow::Result<()> {
        let created = db::ensure_runway(pool, settings.ahead_days).await?;
        metrics.partitions_created.inc_by(u64::from(created));
        metrics.partitions_ahead.set(db::runway_days(pool).await?);
        if created > 0 {
            tracing::info!(created, "partitions created ahead");
        }
        prune_minute_rollups(pool).await?;
        Ok(())
    }
}

/// Minute rollups feed only the real-time metrics (the last 15 minutes); a
/// day's worth is kept for a look back, older rows are deleted.
async fn prune_minute_rollups(pool: &PgPool) -> anyhow::Result<()> {
    for statement in [
        "DELETE FROM auditline.rollups WHERE grain = 'm' AND bucket < now() - interval '1 day'",
        "DELETE FROM auditline.rollup_latency WHERE grain = 'm' AND bucket < now() - interval '1 day'",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

impl Actor for PartitionKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_secs(self.settings.check_interval_secs.max(1));
        ctx.run_interval(every, |keeper, ctx| {
            let (pool, settings, metrics) = (keeper.pool.clone(), keeper.settings.clone(), keeper.metrics.clone());
            ctx.spawn(
                async move {
                    if let Err(e) = PartitionKeeper::ensure_runway(&pool, &settings, &metrics).await {
                        tracing::error!(error = %format!("{e:#}"), "partition upkeep failed; will retry");
                    }
                }
                .into_actor(keeper),
            );
        });
    }
}

/// Make sure these days have partitions. Answers, once the others exist,
/// the days refused because `partitions.max_created_per_hour` on-demand
/// partitions were created in the last hour.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<NaiveDate>, String>")]
pub struct EnsureDays(pub Vec<NaiveDate>);

const HOUR: Duration = Duration::from_secs(3600);

impl Handler<EnsureDays> for PartitionKeeper {
    type Result = ResponseActFuture<Self, Result<Vec<NaiveDate>, String>>;

    fn handle(&mut self, msg: EnsureDays, _: &mut Self::Context) -> Self::Result {
        let mut missing: Vec<NaiveDate> = msg
            .0
            .into_iter()
            .filter(|d| !self.known.contains(d))
            .collect();
        missing.sort_unstable();
        while self.created.front().is_some_and(|t| t.elapsed() >= HOUR) {
            self.created.pop_front();
        }
        let allowed =
            (self.settings.max_created_per_hour as usize).saturating_sub(self.created.len());
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        Box::pin(
            async move {
                let (mut made, mut new, mut refused) = (Vec::new(), 0, Vec::new());
                for day in missing {
                    // Past the cap, a day whose partition exists is fine;
                    // one that would need creating is refused.
                    if new >= allowed && !db::partition_exists(&pool, day)
                        .await
                        .map_err(|e| format!("cannot look up the partition for {day}: {e}"))?
                    {
                        refused.push(day);
                        continue;
                    }
                    let created = db::ensure_partition(&pool, day)
                        .await
                        .map_err(|e| format!("cannot create the partition for {day}: {e}"))?;
                    if created {
                        new += 1;
                        metrics.partitions_created.inc();
                        tracing::info!(%day, "partition created on demand");
                    }
                    made.push(day);
                }
                Ok((made, new, refused))
            }
            .into_actor(self)
            .map(|result: Result<(Vec<NaiveDate>, usize, Vec<NaiveDate>), String>, keeper, _| {
                let (made, new, refused) = result?;
                keeper.known.extend(made);
                let now = std::time::Instant::now();
                keeper.created.extend(std::iter::repeat_n(now, new));
                if !refused.is_empty() {
                    tracing::warn!(
                        days = refused.len(),
                        cap = keeper.settings.max_created_per_hour,
                        "on-demand partition creation capped; those days' events are dead-lettered"
                    );
                }
                Ok(refused)
            }),
        )
    }
}

/// Forget what is known (after a partition was dropped by retention, or an
/// insert found a day missing).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Forget;

impl Handler<Forget> for PartitionKeeper {
    type Result = ();

    fn handle(&mut self, _: Forget, _: &mut Self::Context) {
        self.known.clear();
    }
}

impl Handler<crate::rollups::Stop> for PartitionKeeper {
    type Result = ();

    fn handle(&mut self, _: crate::rollups::Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
