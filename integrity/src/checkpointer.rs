//! The checkpointer: before signing the next checkpoint it checks the
//! database against the newest one (see [`crate::checkpoint`] for the format
//! and the forward-only rule) and refuses a regression; the admin service
//! runs it every `integrity.checkpoint_interval_secs`, `auditline
//! checkpoint` once.

use crate::checkpoint::{
    Body, Checkpoint, Keys, LATEST, PREFIX, Stored, VERSION, file_hash, parse,
};
use crate::storage::Storage;
use crate::verify::{self, Report};
use anyhow::Context;
use chrono::Utc;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The advisory lock checkpointers take turns with.
const LOCK: i64 = 0x6175_6469_7463_6b70;

/// Why no checkpoint was written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The database no longer holds what the previous checkpoint anchored,
    /// or a new seal does not verify: refused, never signed.
    #[error("integrity violation, checkpoint refused: {}", .0.join("; "))]
    Violation(Vec<String>),
    /// Another instance is writing a checkpoint right now.
    #[error("another instance is writing a checkpoint")]
    Busy,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Checks the database against the newest checkpoint, then builds, signs
/// and stores the next one (see the module doc).
#[tracing::instrument(skip_all, fields(%destination))]
pub async fn publish(
    pool: &PgPool,
    storage: &Storage,
    destination: &str,
    keys: &Keys,
) -> Result<(String, Checkpoint), PublishError> {
    // Held until the transaction ends, on this connection: one
    // checkpointer at a time across instances.
    let mut lock = pool.begin().await.context("cannot reach the database")?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK)
        .fetch_one(&mut *lock)
        .await
        .context("cannot take the checkpoint lock")?;
    if !locked {
        return Err(PublishError::Busy);
    }
    let previous = match storage.get(destination, LATEST).await? {
        None => None,
        Some(bytes) => match parse(&bytes, keys) {
            Ok(cp) => Some((file_hash(&bytes), cp)),
            Err(e) => {
                return Err(PublishError::Violation(vec![format!(
                    "{LATEST} is refused ({e}); it was replaced outside Auditline, or the \
                     checkpoint key changed (then move the old history aside deliberately)"
                )]));
            }
        },
    };
    let mut report = Report::new(None, None);
    let since: HashMap<String, i64> = previous
        .iter()
        .flat_map(|(_, cp)| cp.chains.iter().map(|a| (a.chain.clone(), a.seq)))
        .collect();
    let seals = verify::check_chains(pool, keys, &since, &mut report).await?;
    if let Some((_, cp)) = &previous {
        verify::check_anchors(
            std::slice::from_ref(&Stored {
                file: LATEST.into(),
                sha256: String::new(),
                checkpoint: cp.clone(),
            }),
            &seals,
            &mut report,
        );
    }
    if !report.ok {
        return Err(PublishError::Violation(
            report.findings.iter().map(|f| f.message.clone()).collect(),
        ));
    }
    let body = Body {
        version: VERSION,
        number: Some(previous.as_ref().and_then(|(_, cp)| cp.number).unwrap_or(0) + 1),
        created_at: Utc::now(),
        previous: previous.map(|(hash, _)| hash),
        chains: seals.tips(),
    };
    let signed = keys.sign(&serde_json::to_vec(&body).context("checkpoint JSON")?);
    let checkpoint = Checkpoint {
        body,
        public_key: signed.as_ref().map(|(k, _)| k.clone()),
        signature: signed.map(|(_, s)| s),
    };
    let json = serde_json::to_vec_pretty(&checkpoint).context("checkpoint JSON")?;
    let file = format!(
        "{PREFIX}{}.json",
        checkpoint.created_at.format("%Y%m%dT%H%M%S%.6fZ")
    );
    storage.put(destination, &file, json.clone()).await?;
    storage.put(destination, LATEST, json).await?;
    lock.rollback()
        .await
        .context("cannot release the checkpoint lock")?;
    Ok((file, checkpoint))
}

/// The checkpoint metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    seq: IntGaugeVec,
    published: IntGauge,
    failures: IntCounter,
    violations: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let seq = IntGaugeVec::new(
            Opts::new(
                "auditline_checkpoint_seal_seq",
                "Newest seal of each chain (writer pipeline) in the last checkpoint; chains with a seal in the last 24 h",
            ),
            &["chain"],
        )?;
        let published = IntGauge::new(
            "auditline_checkpoint_published_timestamp_seconds",
            "When the last checkpoint was written to storage (Unix time)",
        )?;
        let failures = IntCounter::new(
            "auditline_checkpoint_failures_total",
            "Checkpoints that could not be written (storage or database errors)",
        )?;
        let violations = IntCounter::new(
            "auditline_integrity_violations_total",
            "Checkpoints refused because the database no longer holds what the previous one anchored, or a new seal does not verify",
        )?;
        registry.register(Box::new(seq.clone()))?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(violations.clone()))?;
        Ok(Self {
            seq,
            published,
            failures,
            violations,
        })
    }

    fn observe(&self, cp: &Checkpoint) {
        self.seq.reset();
        let recent = cp.created_at - chrono::Duration::hours(24);
        for chain in cp.chains.iter().filter(|c| c.committed_at >= recent) {
            self.seq.with_label_values(&[&chain.chain]).set(chain.seq);
        }
        self.published.set(cp.created_at.timestamp());
    }

    /// Counts and logs a failed attempt.
    pub fn failed(&self, error: &PublishError) {
        match error {
            PublishError::Busy => {
                tracing::debug!("another instance is writing a checkpoint");
            }
            PublishError::Violation(problems) => {
                self.violations.inc();
                tracing::error!(
                    problems = %problems.join("; "),
                    "INTEGRITY VIOLATION: the database no longer holds what the last checkpoint \
                     anchored, or a seal does not verify; no checkpoint is signed until this is \
                     investigated (run `auditline verify`)"
                );
            }
            PublishError::Unexpected(e) => {
                self.failures.inc();
                tracing::warn!(error = %format!("{e:#}"), "cannot write a checkpoint");
            }
        }
    }
}

/// Publishes a checkpoint every `interval` until `stop` is cancelled; a
/// checkpoint being written when it is is finished first (its advisory lock
/// is released with it).
pub async fn run(
    pool: PgPool,
    storage: Storage,
    destination: String,
    keys: std::sync::Arc<Keys>,
    interval: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        match publish(&pool, &storage, &destination, &keys).await {
            Ok((file, cp)) => {
                metrics.observe(&cp);
                tracing::debug!(file, chains = cp.chains.len(), "checkpoint written");
            }
            Err(e) => metrics.failed(&e),
        }
    }
}
