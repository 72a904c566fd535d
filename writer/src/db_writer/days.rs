//! The partitions a batch's days need, and the per-hour cap on creating
//! them on demand (events of refused days are dead-lettered).

use super::{Core, WriteError};
use crate::{
    batcher::Batch,
    consumer::{DeadLetter, Incoming},
    partitions::EnsureDays,
};
use auditline_shared::AuditEvent;
use chrono::NaiveDate;
use std::collections::HashSet;

impl Core {
    pub(super) async fn ensure_partitions(
        &mut self,
        messages: &[Incoming],
    ) -> Result<(), WriteError> {
        let refused = self.ensure_days(messages).await?;
        if refused.is_empty() {
            Ok(())
        } else {
            // `refuse_capped_days` took such events out; the cap was reached
            // since: the next attempt takes them out.
            Err(WriteError::Transient(
                "on-demand partition creation capped meanwhile".into(),
            ))
        }
    }

    /// Asks the keeper for the partitions of the events' days not known to
    /// exist; returns the days refused by the per-hour cap.
    async fn ensure_days(&mut self, messages: &[Incoming]) -> Result<Vec<NaiveDate>, WriteError> {
        let days: HashSet<NaiveDate> = messages
            .iter()
            .flat_map(|m| m.events.iter())
            .map(|e| e.occurred_at.date_naive())
            .filter(|d| !self.known_days.contains(d))
            .collect();
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let days: Vec<NaiveDate> = days.into_iter().collect();
        let refused = self
            .config
            .keeper
            .send(EnsureDays(days.clone()))
            .await
            .map_err(|e| WriteError::Transient(format!("partition keeper unavailable: {e}")))?
            .map_err(WriteError::Transient)?;
        self.known_days
            .extend(days.into_iter().filter(|d| !refused.contains(d)));
        Ok(refused)
    }

    /// Takes the events of days whose partition the per-hour cap refused
    /// out of `batch` and dead-letters them (one NDJSON letter per message,
    /// with the reason); the rest of the batch is written as usual. A
    /// keeper or database failure here is left to the write's own retries.
    pub(super) async fn refuse_capped_days(&mut self, batch: &mut Batch) -> Result<(), String> {
        let Ok(refused) = self.ensure_days(&batch.messages).await else {
            return Ok(());
        };
        if refused.is_empty() {
            return Ok(());
        }
        let refused: HashSet<NaiveDate> = refused.into_iter().collect();
        let on_refused_day = |e: &AuditEvent| refused.contains(&e.occurred_at.date_naive());
        let mut letters = Vec::new();
        for message in &batch.messages {
            let gone: Vec<AuditEvent> = message
                .events
                .iter()
                .filter(|e| on_refused_day(e))
                .cloned()
                .collect();
            if gone.is_empty() {
                continue;
            }
            let mut days: Vec<String> = gone
                .iter()
                .map(|e| e.occurred_at.date_naive().to_string())
                .collect();
            days.sort_unstable();
            days.dedup();
            letters.push(DeadLetter {
                body: auditline_shared::event::to_ndjson(&gone),
                content_type: "application/x-ndjson".into(),
                content_encoding: None,
                routing_key: message.routing_key.clone(),
                message_id: None,
                reason: format!(
                    "occurred_at: no partition for {} and on-demand partition creation is capped \
                     (partitions.max_created_per_hour); republish later or raise the cap",
                    days.join(", ")
                ),
            });
        }
        // Only once the dead letters are confirmed do their events leave
        // the batch: nothing is lost if publishing fails.
        self.publish_dead(&letters).await?;
        for message in &mut batch.messages {
            let before = message.events.len();
            message.events.retain(|e| !on_refused_day(e));
            batch.events -= (before - message.events.len()).min(batch.events);
        }
        Ok(())
    }
}
