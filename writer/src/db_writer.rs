//! The DB writer actor: stores a batch exactly once, dead-letters what cannot
//! be stored, and only then acknowledges.
//!
//! For each batch:
//! 1. publish its dead letters to `<ns>.dead` and await their confirms;
//! 2. make sure every day in the batch has a partition (the keeper creates it);
//! 3. in one transaction: COPY the rows into `auditline.events`, record the
//!    batch in `auditline.batches`, COMMIT. COPY has no `ON CONFLICT`, so when a
//!    batch may hold events already stored (a message the broker marks
//!    redelivered, or a COPY that hit the primary key because a publisher
//!    re-sent an event), the rows go through the dedup path instead: COPY into
//!    a session-local staging table, then `INSERT … SELECT … ON CONFLICT DO
//!    NOTHING` into `auditline.events`. The direct path measured 1.2–1.4× faster
//!    (BENCHMARKS.md) and the
//!    primary key keeps it exactly-once: a duplicate fails the whole COPY and
//!    the batch is written again through the dedup path;
//! 4. publish the events the commit stored (not the duplicates it absorbed)
//!    to the `<ns>.live` topic exchange, for the admin's live stream: one
//!    zstd NDJSON message per commit, transient, never awaited for long (the
//!    stream is a view; the table is the record);
//! 5. `basic.ack` with `multiple` up to the batch's highest delivery tag.
//!
//! A transient failure (connection lost, database restarting, renamed or
//! refusing connections, a partition missing) is retried with backoff,
//! without acking, for as long as it takes: the prefetch window fills and the
//! broker simply stops delivering. A failure caused by the data itself (SQLSTATE
//! classes 22 and 23) cannot succeed by retrying, so the batch is written
//! message by message and only the refused messages are dead-lettered.

mod days;

use crate::{
    batcher::Batch,
    consumer::{DeadLetter, Incoming},
    copy_row,
    metrics::WriterMetrics,
    partitions::{Forget, PartitionKeeper},
};
use actix::prelude::*;
use auditline_shared::AuditEvent;
use auditline_shared::{amqp::REASON_HEADER, db, seal, settings::SecretUrl, signing::SigningKey};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicAckOptions, BasicPublishOptions},
    types::{AMQPValue, FieldTable},
};
use sqlx::{Connection, PgConnection};
use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use uuid::Uuid;

/// Where a failed write leaves us.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The connection or the server's availability is the problem (I/O,
    /// SQLSTATE classes 08, 28, 3D, 40, 53, 57, 58): retry for as long as it takes.
    #[error("{0}")]
    Transient(String),
    /// The server refused the statement for a reason that may pass (a
    /// partition dropped or not yet visible, a lock, …): retried a few times,
    /// then handled like [`WriteError::Data`], so it cannot stall the queue.
    #[error("{0}")]
    Refused(String),
    /// A row has no partition (SQLSTATE 23514 without a constraint): create
    /// the partition again and retry; counts as a refusal.
    #[error("{0}")]
    MissingPartition(String),
    /// The database refuses these rows (SQLSTATE classes 22 and 23); retrying
    /// cannot help.
    #[error("{0}")]
    Data(String),
    /// The direct COPY met an event that is already stored.
    #[error("an event of the batch is already stored")]
    Duplicate,
}

/// Refusals of one batch (or message) before it is treated as refused for good.
const MAX_REFUSALS: u32 = 5;

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        let sqlx::Error::Database(db) = &e else {
            return Self::Transient(e.to_string());
        };
        let code = db.code().unwrap_or_default().into_owned();
        let message = format!("{} (SQLSTATE {code})", db.message());
        match code.get(..2).unwrap_or("") {
            // The only unique constraint COPY can meet is the events' primary
            // key (reported under the partition's name, events_YYYYMMDD_pkey).
            // Another process sealed on this chain (a writer id configured
            // twice): reload the chain's tip and try again.
            _ if code == "23505" && db.constraint() == Some("batches_chain_seq") => {
                Self::Transient(message)
            }
            _ if code == "23505" => Self::Duplicate,
            _ if code == "23514" && db.constraint().is_none() => Self::MissingPartition(message),
            "22" | "23" => Self::Data(message),
            "08" | "28" | "3D" | "40" | "53" | "57" | "58" => Self::Transient(message),
            _ => Self::Refused(message),
        }
    }
}

/// Everything a pipeline's writer needs to reach the database and the broker.
#[derive(Debug)]
pub struct DbWriterConfig {
    pub database_url: SecretUrl,
    pub writer_id: String,
    /// The seal chain this pipeline extends (`<writer id>/<slot>`).
    pub chain: String,
    /// Signs each seal; `None`: seals are unsigned.
    pub seal_key: Option<Arc<SigningKey>>,
    pub dead_exchange: String,
    /// The consume channel: acks must go to the channel that delivered.
    pub ack_channel: Channel,
    /// A confirm-mode channel for dead letters.
    pub dead_channel: Channel,
    pub keeper: Addr<PartitionKeeper>,
    /// Where committed events are announced (`<ns>.live`), if anywhere.
    pub live: Option<Live>,
    /// Set when the pipeline is torn down: stop retrying, ack nothing.
    pub cancelled: Arc<AtomicBool>,
    pub metrics: WriterMetrics,
}

/// The channel and exchange committed events are published to.
#[derive(Debug, Clone)]
pub struct Live {
    pub channel: Channel,
    pub exchange: String,
}

/// The routing key of live messages (one per commit, all services).
pub const LIVE_ROUTING_KEY: &str = "events";
/// The longest a commit's live message may hold up the writer.
const LIVE_PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

struct Core {
    config: DbWriterConfig,
    conn: Option<PgConnection>,
    known_days: HashSet<NaiveDate>,
    direct_copy: String,
    staging_copy: String,
    buffer: String,
    entries: Vec<seal::Entry>,
    /// The chain's newest seal (sequence number and hash), once read.
    tip: Option<(i64, [u8; 32])>,
}

/// Writes one batch at a time (see the module doc).
pub struct DbWriter {
    core: Option<Core>,
}

impl std::fmt::Debug for DbWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbWriter").finish_non_exhaustive()
    }
}

impl DbWriter {
    pub fn new(config: DbWriterConfig) -> Self {
        Self {
            core: Some(Core {
                config,
                conn: None,
                known_days: HashSet::new(),
                direct_copy: format!("COPY auditline.events ({}) FROM STDIN", copy_row::COLUMNS),
                staging_copy: format!(
                    "COPY pg_temp.auditline_staging ({}) FROM STDIN",
                    copy_row::COLUMNS
                ),
                buffer: String::new(),
                entries: Vec::new(),
                tip: None,
            }),
        }
    }
}

impl Actor for DbWriter {
    type Context = Context<Self>;
}

impl Handler<Batch> for DbWriter {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, batch: Batch, ctx: &mut Self::Context) -> Self::Result {
        let Some(mut core) = self.core.take() else {
            // Cannot happen: AtomicResponse runs one batch at a time. Were it
            // to, the batch is not written and nothing of it is acked here, but
            // the next batch's `multiple` ack would cover it: stop the actor,
            // which stops the batcher and so rebuilds the pipeline.
            tracing::error!("DbWriter received a batch while busy; stopping the pipeline");
            ctx.stop();
            return AtomicResponse::new(Box::pin(async {}.into_actor(self)));
        };
        AtomicResponse::new(Box::pin(
            async move {
                core.process(batch).await;
                core
            }
            .into_actor(self)
            .map(|core, writer, _| writer.core = Some(core)),
        ))
    }
}

/// The newest seal of `chain` (sequence number and hash), or the genesis
/// when the chain has none yet.
async fn chain_tip(
    conn: &mut sqlx::PgConnection,
    chain: &str,
) -> Result<(i64, [u8; 32]), WriteError> {
    let tip: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, seal_hash FROM auditline.batches WHERE chain = $1 \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(chain)
    .fetch_optional(&mut *conn)
    .await?;
    match tip {
        Some((seq, hash)) => Ok((
            seq,
            hash.try_into().map_err(|_| {
                WriteError::Refused("the chain's newest seal hash is not 32 bytes".into())
            })?,
        )),
        None => Ok((0, seal::GENESIS)),
    }
}

/// The events a commit stored, with the time their message was received;
/// `stored`, on the dedup path, names the events that were new (taking each
/// out also skips a second copy of the same event within the batch).
fn new_events(
    messages: &[Incoming],
    mut stored: Option<HashSet<Uuid>>,
) -> Vec<(&AuditEvent, DateTime<Utc>)> {
    messages
        .iter()
        .flat_map(|m| m.events.iter().map(move |e| (e, m.received_at)))
        .filter(|(e, _)| match stored.as_mut() {
            Some(ids) => ids.remove(&e.event_id),
            None => true,
        })
        .collect()
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        wait
    }
}

impl Core {
    fn cancelled(&self) -> bool {
        self.config.cancelled.load(Ordering::Relaxed)
    }

    /// Counts and logs a transient failure, waits, and says whether to go on.
    async fn pause(&mut self, stage: &str, error: &str, backoff: &mut Backoff) -> bool {
        if self.cancelled() {
            return false;
        }
        self.config
            .metrics
            .retries
            .with_label_values(&[stage])
            .inc();
        let wait = backoff.next();
        tracing::warn!(
            stage,
            error,
            retry_in_ms = wait.as_millis() as u64,
            "writer retrying; nothing acked meanwhile"
        );
        tokio::time::sleep(wait).await;
        !self.cancelled()
    }

    async fn process(&mut self, batch: Batch) {
        if self.cancelled() {
            // The pipeline is gone: its deliveries return to the queue unacked.
            return;
        }
        let started = Instant::now();
        let mut backoff = Backoff::new();
        let dead = batch.dead_letters();
        while !dead.is_empty() {
            match self.publish_dead(&dead).await {
                Ok(()) => break,
                Err(e) => {
                    if !self.config.dead_channel.status().connected() {
                        self.abandon("the dead-letter channel was closed").await;
                        return;
                    }
                    if !self.pause("dead_letter", &e, &mut backoff).await {
                        return;
                    }
                }
            }
        }
        let mut batch = batch;
        if batch.events > 0 {
            let mut backoff = Backoff::new();
            let mut refusals = 0;
            loop {
                if let Err(e) = self.refuse_capped_days(&mut batch).await {
                    if !self.pause("dead_letter", &e, &mut backoff).await {
                        return;
                    }
                    continue;
                }
                if batch.events == 0 {
                    // Every event was on a refused day and is dead-lettered:
                    // nothing left to store (no empty batch row or seal).
                    break;
                }
                let error = match self.write(&batch.messages).await {
                    Ok(_) => break,
                    Err(e) => e,
                };
                let for_good = match &error {
                    WriteError::Data(_) => true,
                    WriteError::Refused(_) | WriteError::MissingPartition(_) => {
                        refusals += 1;
                        refusals >= MAX_REFUSALS
                    }
                    WriteError::Transient(_) | WriteError::Duplicate => false,
                };
                if for_good {
                    tracing::warn!(%error, "batch refused by the database; writing it message by message");
                    if !self.write_one_by_one(&batch.messages).await {
                        return;
                    }
                    break;
                }
                if !self
                    .pause("database", &error.to_string(), &mut backoff)
                    .await
                {
                    return;
                }
            }
        }
        if self.cancelled() {
            return;
        }
        let ack = self
            .config
            .ack_channel
            .basic_ack(batch.ack_tag, BasicAckOptions { multiple: true })
            .await;
        if let Err(e) = ack {
            // The rows are committed; the broker will redeliver the messages and
            // the dedup key absorbs them.
            self.config.metrics.ack_failures.inc();
            tracing::warn!(error = %e, "ack after commit failed; messages will be redelivered and deduplicated");
        }
        self.config
            .metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Fallback for a batch the database refused: each message in its own
    /// transaction; a message refused on its own is dead-lettered whole.
    async fn write_one_by_one(&mut self, messages: &[Incoming]) -> bool {
        for message in messages.iter().filter(|m| !m.events.is_empty()) {
            let mut backoff = Backoff::new();
            let mut refusals = 0;
            let reason = loop {
                let error = match self.write(std::slice::from_ref(message)).await {
                    Ok(_) => break None,
                    Err(e) => e,
                };
                match &error {
                    WriteError::Data(e) => break Some(e.clone()),
                    WriteError::Refused(e) | WriteError::MissingPartition(e) => {
                        refusals += 1;
                        if refusals >= MAX_REFUSALS {
                            break Some(e.clone());
                        }
                    }
                    WriteError::Transient(_) | WriteError::Duplicate => {}
                }
                if !self
                    .pause("database", &error.to_string(), &mut backoff)
                    .await
                {
                    return false;
                }
            };
            let Some(reason) = reason else { continue };
            let dead = DeadLetter {
                body: message.body.clone(),
                content_type: message.content_type.clone(),
                content_encoding: None,
                routing_key: message.routing_key.clone(),
                message_id: message.message_id.clone(),
                reason: format!("refused by the database: {reason}"),
            };
            loop {
                match self.publish_dead(std::slice::from_ref(&dead)).await {
                    Ok(()) => break,
                    Err(e) => {
                        if !self.config.dead_channel.status().connected() {
                            self.abandon("the dead-letter channel was closed").await;
                            return false;
                        }
                        if !self.pause("dead_letter", &e, &mut backoff).await {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// Gives the pipeline up: nothing more is acked, and closing the consume
    /// channel ends the consumer, so the pipeline is rebuilt and the broker
    /// redelivers what was not acked.
    async fn abandon(&mut self, why: &str) {
        tracing::warn!(why, "abandoning the consume pipeline; it will be rebuilt");
        self.config.cancelled.store(true, Ordering::Relaxed);
        let _ = self.config.ack_channel.close(200, why.into()).await;
    }

    /// Stores the events of `messages` in one transaction. Returns the rows inserted.
    async fn write(&mut self, messages: &[Incoming]) -> Result<u64, WriteError> {
        self.ensure_partitions(messages).await?;
        let redelivered = messages.iter().any(|m| m.redelivered);
        let mut result = self.write_transaction(messages, redelivered).await;
        if matches!(result, Err(WriteError::Duplicate)) {
            result = self.write_transaction(messages, true).await;
        }
        if let Err(e) = &result {
            // A failed COPY or transaction can leave the session in an
            // unknown state: start the next attempt on a fresh connection,
            // and read the seal chain's tip again.
            self.conn = None;
            self.tip = None;
            if matches!(e, WriteError::MissingPartition(_)) {
                self.known_days.clear();
                self.config.keeper.do_send(Forget);
            }
        }
        result.map_err(|e| match e {
            WriteError::Duplicate => {
                WriteError::Transient("duplicate key on the dedup path".into())
            }
            other => other,
        })
    }

    async fn write_transaction(
        &mut self,
        messages: &[Incoming],
        dedup: bool,
    ) -> Result<u64, WriteError> {
        let batch_id = Uuid::now_v7();
        self.encode(messages, batch_id);
        let events = self.entries.len();
        let first = messages
            .iter()
            .flat_map(|m| m.events.first())
            .next()
            .map(|e| e.event_id);
        let last = messages
            .iter()
            .rev()
            .flat_map(|m| m.events.last())
            .next()
            .map(|e| e.event_id);

        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(WriteError::Transient("no database connection".into()));
        };
        let mut tx = conn.begin().await?;
        let (prev_seq, prev_hash) = match self.tip {
            Some(tip) => tip,
            None => chain_tip(&mut tx, &self.config.chain).await?,
        };
        let statement = if dedup {
            &self.staging_copy
        } else {
            &self.direct_copy
        };
        let mut copy = tx.copy_in_raw(statement).await?;
        if let Err(e) = copy.send(self.buffer.as_bytes()).await {
            let _ = copy.abort("send failed").await;
            return Err(e.into());
        }
        let copied = copy.finish().await?;
        // On the dedup path, which events were new (the live stream must not
        // show an absorbed duplicate again).
        let (inserted, stored) = if dedup {
            self.config.metrics.dedup_batches.inc();
            let keys: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
                "INSERT INTO auditline.events SELECT * FROM pg_temp.auditline_staging \
                 ON CONFLICT DO NOTHING RETURNING event_id, occurred_at",
            )
            .fetch_all(&mut *tx)
            .await?;
            // Only the rows this commit stored belong to its seal: the
            // first copy of each new key, in staging order.
            let mut new: HashSet<(Uuid, i64)> = keys
                .iter()
                .map(|(id, at)| (*id, at.timestamp_micros()))
                .collect();
            self.entries
                .retain(|e| new.remove(&(e.event_id, e.occurred_micros)));
            (
                keys.len() as u64,
                Some(
                    keys.into_iter()
                        .map(|(id, _)| id)
                        .collect::<HashSet<Uuid>>(),
                ),
            )
        } else {
            (copied, None)
        };
        // The batch row with its seal, and (when it stored anything) the
        // note that the rollup keeper has to fold it in: one round trip.
        // Sorted by occurred_at first: the ends are the batch's time range.
        let entries = seal::encode_entries(&mut self.entries);
        let micros = |e: Option<&seal::Entry>| {
            e.and_then(|e| DateTime::<Utc>::from_timestamp_micros(e.occurred_micros))
        };
        let (occurred_min, occurred_max) =
            (micros(self.entries.first()), micros(self.entries.last()));
        let seq = prev_seq + 1;
        let seal_hash = seal::seal_hash(&seal::SealInput {
            chain: &self.config.chain,
            seq,
            prev_hash: &prev_hash,
            batch_id,
            entry_count: self.entries.len() as i64,
            entries_hash: &seal::sha256(&entries),
        });
        let signature = self
            .config
            .seal_key
            .as_ref()
            .map(|key| (key.public(), key.sign(&seal::signed_message(&seal_hash))));
        sqlx::query(
            "WITH batch AS (INSERT INTO auditline.batches \
             (batch_id, writer_id, message_count, event_count, inserted_count, first_event_id, last_event_id, \
              chain, seq, prev_hash, seal_hash, entries, occurred_min, occurred_max, \
              seal_key, seal_signature) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             RETURNING batch_id, inserted_count) \
             INSERT INTO auditline.rollup_pending (batch_id) \
             SELECT batch_id FROM batch WHERE inserted_count > 0",
        )
        .bind(batch_id)
        .bind(&self.config.writer_id)
        .bind(i32::try_from(messages.len()).unwrap_or(i32::MAX))
        .bind(i32::try_from(events).unwrap_or(i32::MAX))
        .bind(i32::try_from(inserted).unwrap_or(i32::MAX))
        .bind(first)
        .bind(last)
        .bind(&self.config.chain)
        .bind(seq)
        .bind(&prev_hash[..])
        .bind(&seal_hash[..])
        .bind(&entries)
        .bind(occurred_min)
        .bind(occurred_max)
        .bind(signature.as_ref().map(|(key, _)| &key[..]))
        .bind(signature.as_ref().map(|(_, sig)| &sig[..]))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.tip = Some((seq, seal_hash));
        self.committed(messages, events, inserted, stored).await;
        Ok(inserted)
    }

    /// Encodes the batch's rows for COPY and their seal entries.
    fn encode(&mut self, messages: &[Incoming], batch_id: Uuid) {
        self.buffer.clear();
        self.entries.clear();
        for message in messages {
            for event in &message.events {
                copy_row::encode(&mut self.buffer, event, message.received_at, batch_id);
                self.entries
                    .push(seal::Entry::of(event, message.received_at, batch_id));
            }
        }
    }

    /// After a commit: the audit metrics and the live stream get the events
    /// it stored (`stored`: those of the dedup path; all, on the direct one),
    /// and the batch is counted.
    async fn committed(
        &mut self,
        messages: &[Incoming],
        events: usize,
        inserted: u64,
        stored: Option<HashSet<Uuid>>,
    ) {
        if inserted > 0 {
            let stored = new_events(messages, stored);
            self.config
                .metrics
                .audit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(stored.iter().map(|(event, _)| *event));
            self.publish_live(&stored).await;
        }
        let m = &self.config.metrics;
        m.batches.inc();
        m.batch_events.observe(events as f64);
        m.rows_written.inc_by(inserted);
        m.duplicates
            .inc_by(events as u64 - inserted.min(events as u64));
    }

    /// Announces committed events on `<ns>.live`: the stored events as
    /// NDJSON (each with its `received_at`), zstd-compressed. Failures are
    /// logged and counted, never retried: a live view that missed a commit is
    /// caught up by searching.
    async fn publish_live(&self, stored: &[(&AuditEvent, DateTime<Utc>)]) {
        let Some(live) = &self.config.live else {
            return;
        };
        if stored.is_empty() {
            return;
        }
        let events = stored.len() as u64;
        let mut body = Vec::with_capacity(512 * stored.len());
        for (event, received_at) in stored {
            let received_at = auditline_shared::event::rfc3339_text(*received_at);
            event.write_json_with(&mut body, &[("received_at", &received_at)]);
            body.push(b'\n');
        }
        let mut properties = BasicProperties::default()
            .with_content_type("application/x-ndjson".into())
            .with_delivery_mode(1);
        let (body, encoding) = auditline_shared::amqp::message_body(&[&body], true);
        if let Some(encoding) = encoding {
            properties = properties.with_content_encoding(encoding.into());
        }
        let publish = live.channel.basic_publish(
            live.exchange.as_str().into(),
            LIVE_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        );
        match tokio::time::timeout(LIVE_PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(_)) => self.config.metrics.live_events.inc_by(events),
            Ok(Err(e)) => {
                self.config.metrics.live_failures.inc();
                tracing::warn!(error = %e, events, "cannot publish committed events to the live exchange");
            }
            Err(_) => {
                self.config.metrics.live_failures.inc();
                tracing::warn!(events, "publishing to the live exchange timed out");
            }
        }
    }

    async fn connect(&self) -> Result<PgConnection, WriteError> {
        let mut conn = db::connect(&self.config.database_url)
            .await
            .map_err(|e| WriteError::Transient(format!("{e:#}")))?;
        sqlx::query(
            "CREATE TEMP TABLE IF NOT EXISTS auditline_staging (LIKE auditline.events) ON COMMIT DELETE ROWS",
        )
        .execute(&mut conn)
        .await?;
        Ok(conn)
    }

    async fn publish_dead(&self, dead: &[DeadLetter]) -> Result<(), String> {
        let channel = &self.config.dead_channel;
        let mut confirms = Vec::with_capacity(dead.len());
        for letter in dead {
            let mut headers = FieldTable::default();
            headers.insert(
                REASON_HEADER.into(),
                AMQPValue::LongString(letter.reason.as_str().into()),
            );
            headers.insert(
                "x-auditline-routing-key".into(),
                AMQPValue::LongString(letter.routing_key.as_str().into()),
            );
            headers.insert(
                "x-auditline-writer".into(),
                AMQPValue::LongString(self.config.writer_id.as_str().into()),
            );
            let mut properties = BasicProperties::default()
                .with_content_type(letter.content_type.as_str().into())
                .with_delivery_mode(2)
                .with_headers(headers);
            if let Some(encoding) = &letter.content_encoding {
                properties = properties.with_content_encoding(encoding.as_str().into());
            }
            if let Some(id) = &letter.message_id {
                properties = properties.with_message_id(id.as_str().into());
            }
            let confirm = channel
                .basic_publish(
                    self.config.dead_exchange.as_str().into(),
                    letter.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &letter.body,
                    properties,
                )
                .await
                .map_err(|e| format!("cannot publish a dead letter: {e}"))?;
            confirms.push(confirm);
        }
        for outcome in join_all(confirms).await {
            match outcome {
                Ok(Confirmation::Ack(None)) => {}
                Ok(other) => {
                    return Err(format!("dead letter not accepted by the broker: {other:?}"));
                }
                Err(e) => return Err(format!("dead letter not confirmed: {e}")),
            }
        }
        self.config.metrics.dead_lettered.inc_by(dead.len() as u64);
        for letter in dead {
            tracing::warn!(reason = %letter.reason, routing_key = %letter.routing_key, "message dead-lettered");
        }
        Ok(())
    }
}
