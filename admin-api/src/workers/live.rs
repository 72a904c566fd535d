//! The live stream's background side: the consumer of `<ns>.live`, the
//! [`Hub`] that fans each commit out to the clients' queues, and the watch
//! that closes connections whose token was revoked or expired (see
//! [`crate::routes::live`]).
//!
//! The writers publish every commit's new events to `<ns>.live`. Each admin
//! instance binds its own bounded, auto-deleting queue there and hands every
//! commit's events to the [`Hub`], which applies each client's filter and
//! puts the matching events, as one entry, into that client's queue, bounded
//! at `stream.client_queue` events. A commit's events that do not fit are
//! dropped for that client only (the others are never delayed), and it is
//! told so: `{"type": "lagged", "dropped": N}` before its next events.

use auditline_shared::{
    amqp,
    settings::{SecretUrl, StreamSettings},
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    ExchangeKind,
    options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use prometheus::{IntCounter, IntGauge, Registry};
use sqlx::PgPool;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::query::filters::{Filters, matches};
use auditline_shared::stored::StoredEvent;

/// Live messages an instance's queue holds before the broker drops the oldest.
const LIVE_QUEUE_MESSAGES: i64 = 10_000;

/// The token a redeemed ticket admits.
#[derive(Debug)]
pub(crate) struct Redeemed {
    pub(crate) token_id: String,
    pub(crate) name: String,
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

/// The stream's metrics.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    clients: IntGauge,
    pub(crate) sent: IntCounter,
    dropped: IntCounter,
    received: IntCounter,
}

impl StreamMetrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let clients = IntGauge::new(
            "auditline_stream_clients",
            "Websocket clients connected to this instance",
        )?;
        let sent = IntCounter::new(
            "auditline_stream_events_sent_total",
            "Events sent to websocket clients",
        )?;
        let dropped = IntCounter::new(
            "auditline_stream_events_dropped_total",
            "Matching events dropped because a client fell behind (it is told `lagged`)",
        )?;
        let received = IntCounter::new(
            "auditline_stream_events_received_total",
            "Committed events received from the live exchange",
        )?;
        for metric in [&sent, &dropped, &received] {
            registry.register(Box::new(metric.clone()))?;
        }
        registry.register(Box::new(clients.clone()))?;
        Ok(Self {
            clients,
            sent,
            dropped,
            received,
        })
    }
}

/// The matching events of one commit.
pub(crate) type Entry = Vec<Arc<StoredEvent>>;

struct Slot {
    filter: Option<Arc<Filters>>,
    /// The token the connection's ticket was issued to, and its expiry.
    token_id: String,
    token_expires_at: Option<DateTime<Utc>>,
    /// Tells the connection to close, and why (its token was revoked or expired).
    close: oneshot::Sender<&'static str>,
    queue: mpsc::UnboundedSender<Entry>,
    /// Events in the queue (the bound is counted here).
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

/// Every client of this instance, and the fan-out to them.
#[derive(Debug)]
pub struct Hub {
    clients: Mutex<HashMap<u64, Slot>>,
    next: AtomicU64,
    pub(crate) settings: StreamSettings,
    pub(crate) metrics: StreamMetrics,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

/// A client's place in the hub: its queue and what it lost.
pub(crate) struct Joined {
    pub(crate) id: u64,
    pub(crate) closed: oneshot::Receiver<&'static str>,
    pub(crate) queue: mpsc::UnboundedReceiver<Entry>,
    pub(crate) queued: Arc<AtomicUsize>,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl Hub {
    pub fn new(settings: StreamSettings, metrics: StreamMetrics) -> Self {
        Self {
            clients: Mutex::default(),
            next: AtomicU64::new(1),
            settings,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new client of `token`, or `None` when the instance has as many as it takes.
    pub(crate) fn join(&self, token: &Redeemed) -> Option<Joined> {
        let mut clients = self.lock();
        if clients.len() >= self.settings.max_clients {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let (close, closed) = oneshot::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        clients.insert(
            id,
            Slot {
                filter: None,
                token_id: token.token_id.clone(),
                token_expires_at: token.expires_at,
                close,
                queue: tx,
                queued: queued.clone(),
                dropped: dropped.clone(),
            },
        );
        self.metrics.clients.set(clients.len() as i64);
        Some(Joined {
            id,
            closed,
            queue: rx,
            queued,
            dropped,
        })
    }

    pub(crate) fn leave(&self, id: u64) {
        let mut clients = self.lock();
        clients.remove(&id);
        self.metrics.clients.set(clients.len() as i64);
    }

    /// The tokens of the open connections.
    fn token_ids(&self) -> Vec<String> {
        let ids: std::collections::BTreeSet<String> =
            self.lock().values().map(|s| s.token_id.clone()).collect();
        ids.into_iter().collect()
    }

    /// Takes every connection for which `ended` (given its token id and
    /// expiry) names a reason out of the fan-out and tells it to close;
    /// returns how many.
    fn end_sessions(
        &self,
        ended: impl Fn(&str, Option<DateTime<Utc>>) -> Option<&'static str>,
    ) -> usize {
        let mut clients = self.lock();
        let gone: Vec<(u64, &'static str)> = clients
            .iter()
            .filter_map(|(id, slot)| {
                ended(&slot.token_id, slot.token_expires_at).map(|reason| (*id, reason))
            })
            .collect();
        for (id, reason) in &gone {
            if let Some(slot) = clients.remove(id) {
                let _ = slot.close.send(reason);
            }
        }
        self.metrics.clients.set(clients.len() as i64);
        gone.len()
    }

    pub(crate) fn set_filter(&self, id: u64, filter: Option<Arc<Filters>>) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.filter = filter;
        }
    }

    /// Whether no client has subscribed (live messages then need not be parsed).
    fn idle(&self) -> bool {
        self.lock().values().all(|slot| slot.filter.is_none())
    }

    /// Hands committed events to every client whose filter they match.
    pub fn publish(&self, events: &[Arc<StoredEvent>]) {
        self.metrics.received.inc_by(events.len() as u64);
        let clients = self.lock();
        for slot in clients.values() {
            let Some(filter) = &slot.filter else {
                continue;
            };
            let entry: Entry = events
                .iter()
                .filter(|e| matches(filter, e))
                .cloned()
                .collect();
            if entry.is_empty() {
                continue;
            }
            // Only this (locked) loop adds to `queued`: the check holds.
            let n = entry.len();
            if slot.queued.load(Ordering::Acquire) + n > self.settings.client_queue.max(1) {
                slot.dropped.fetch_add(n as u64, Ordering::Relaxed);
                self.metrics.dropped.inc_by(n as u64);
            } else {
                slot.queued.fetch_add(n, Ordering::AcqRel);
                let _ = slot.queue.send(entry);
            }
        }
    }
}

/// Consumes `<ns>.live` into the hub until `stop` is cancelled,
/// reconnecting after a failure.
pub async fn consume(url: SecretUrl, exchange: String, hub: Arc<Hub>, stop: CancellationToken) {
    loop {
        tokio::select! {
            result = consume_once(&url, &exchange, &hub) => if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "live stream consumer stopped; reconnecting");
            },
            () = stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn consume_once(url: &SecretUrl, exchange: &str, hub: &Hub) -> anyhow::Result<()> {
    let connection = amqp::connect(url, "auditline-admin-live").await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(LIVE_QUEUE_MESSAGES),
    );
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.name().clone(),
            "auditline-admin-live".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %queue.name(), "live stream consuming");
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let encoding = delivery
            .properties
            .content_encoding()
            .as_ref()
            .map(|e| e.to_string());
        let body = match amqp::decode_body(&delivery.data, encoding.as_deref()) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => delivery.data.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable live message skipped");
                continue;
            }
        };
        if hub.idle() {
            // Nobody to send to: counted, not parsed.
            let lines = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            hub.metrics.received.inc_by(lines as u64);
            continue;
        }
        let events: Vec<Arc<StoredEvent>> = body
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| serde_json::from_slice(line).ok().map(Arc::new))
            .collect();
        hub.publish(&events);
    }
    Ok(())
}

/// Why a token no longer admits a connection: revoked (or gone), or expired.
/// One query for any number of tokens; an empty answer means all are valid.
pub(crate) async fn ended_tokens(
    pool: &PgPool,
    token_ids: &[String],
) -> Result<HashMap<String, &'static str>, sqlx::Error> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT ids.token_id, t.token_id IS NULL OR t.revoked_at IS NOT NULL \
         FROM unnest($1::text[]) AS ids(token_id) \
         LEFT JOIN auditline.tokens t ON t.token_id = ids.token_id \
         WHERE t.token_id IS NULL OR t.revoked_at IS NOT NULL OR t.expires_at <= now()",
    )
    .bind(token_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, revoked)| (id, if revoked { REVOKED } else { EXPIRED }))
        .collect())
}

pub(crate) const REVOKED: &str = "token revoked";
pub(crate) const EXPIRED: &str = "token expired";

/// Closes the connections whose token was revoked or has expired, every
/// `stream.token_check_secs`, until `stop` is cancelled: one query
/// per check for all of this instance's connections. An expiry known from
/// the handshake is enforced even while the database is unreachable.
pub async fn watch_tokens(pool: PgPool, hub: Arc<Hub>, stop: CancellationToken) {
    let every = Duration::from_secs(hub.settings.token_check_secs.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = Utc::now();
        hub.end_sessions(|_, expires| expires.is_some_and(|at| at <= now).then_some(EXPIRED));
        let ids = hub.token_ids();
        if ids.is_empty() {
            continue;
        }
        match ended_tokens(&pool, &ids).await {
            Ok(ended) if ended.is_empty() => {}
            Ok(ended) => {
                let n = hub.end_sessions(|id, _| ended.get(id).copied());
                tracing::info!(
                    connections = n,
                    tokens = ended.len(),
                    "stream connections closed: token revoked or expired"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the tokens of stream connections; next check soon")
            }
        }
    }
}
