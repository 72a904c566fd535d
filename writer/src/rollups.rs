//! The rollup keeper: folds committed batches into the admin API's rollups
//! ([`crate::fold::fold_pending`]), off the writer's hot path.
//!
//! Every `INTERVAL` it takes pending batches, many at a time (so keys shared
//! by their events are upserted once), until none is left. Several writers
//! share the work through `FOR UPDATE SKIP LOCKED`; a failed pass leaves its
//! batches pending for the next one.

use crate::fold::{fold_pending, pending};
use crate::metrics::WriterMetrics;
use actix::prelude::*;
use sqlx::PgPool;
use std::time::Duration;

/// How often the keeper looks for pending batches: the usual delay between a
/// commit and its rollups.
const INTERVAL: Duration = Duration::from_secs(2);
/// Batches folded per transaction (at most 5,000 events each by default).
const MAX_BATCHES: i64 = 50;

#[derive(Debug)]
pub struct RollupKeeper {
    pool: PgPool,
    metrics: WriterMetrics,
    busy: bool,
}

impl RollupKeeper {
    pub fn new(pool: PgPool, metrics: WriterMetrics) -> Self {
        Self {
            pool,
            metrics,
            busy: false,
        }
    }
}

/// Folds until nothing is pending (or a pass fails), then updates the gauge.
async fn catch_up(pool: PgPool, metrics: WriterMetrics) {
    loop {
        match fold_pending(&pool, MAX_BATCHES).await {
            Ok(folded) => {
                metrics.rollup_batches.inc_by(folded.batches as u64);
                metrics.rollup_events.inc_by(folded.events);
                if (folded.batches as i64) < MAX_BATCHES {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "rollup pass failed; its batches stay pending");
                break;
            }
        }
    }
    if let Ok(n) = pending(&pool).await {
        metrics.rollup_pending.set(n);
    }
}

/// Stops a keeper: the writer's shutdown ends its background work with it
/// (an interval alone would keep the actor running in a shared system). A
/// fold cut short rolls back and stays pending.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for RollupKeeper {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Actor for RollupKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(INTERVAL, |keeper, ctx| {
            if keeper.busy {
                return;
            }
            keeper.busy = true;
            let work = catch_up(keeper.pool.clone(), keeper.metrics.clone());
            ctx.spawn(
                work.into_actor(keeper)
                    .map(|(), keeper, _| keeper.busy = false),
            );
        });
    }
}
