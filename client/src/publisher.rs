//! The confirmed publisher: the library Rust applications use to emit audit events.
//!
//! A call resolves `Ok` only after RabbitMQ confirmed every message it sent
//! (publisher confirms, `mandatory`, persistent). Confirms are pipelined: a
//! batch publishes all its messages before awaiting any confirm, and
//! concurrent callers share one connection, each on a confirm channel of its
//! own, so many confirms are in flight at once.
//!
//! Connection loss is retried with exponential backoff until
//! `publisher.publish_timeout_ms` runs out. Re-sending a message the broker may
//! already hold is safe because storage is exactly-once on
//! (`event_id`, `occurred_at`). A nack (e.g. the queue is full) or an unroutable
//! message is returned to the caller as an error at once, never as a success.

use crate::{
    amqp::{self, Topology},
    config::{ClientConfig, PublisherSettings, SecretUrl},
};
use auditline_event::{AuditEvent, event::to_ndjson};
use futures_util::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Why a publish did not succeed. None of these means "maybe stored": the
/// caller should treat every event of the call as not accepted (re-publishing
/// them is safe).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (nack); the queue may be full")]
    Nacked,
    #[error("the message could not be routed to any queue: {0}")]
    Unroutable(String),
    #[error("the broker could not be reached within {timeout_ms} ms: {last_error}")]
    Unavailable { timeout_ms: u64, last_error: String },
}

/// One AMQP message to publish.
struct Message {
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
}

/// NDJSON messages ready to publish ([`Publisher::prepare_ndjson`]).
pub struct Prepared(Vec<Message>);

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("messages", &self.0.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Prepared {
    /// `other`'s messages after these.
    pub fn append(&mut self, mut other: Prepared) {
        self.0.append(&mut other.0);
    }

    /// The bodies' bytes, as they go to the broker.
    pub fn bytes(&self) -> usize {
        self.0.iter().map(|m| m.body.len()).sum()
    }

    /// Each message's NDJSON, decoded again (to spool what the broker did
    /// not confirm).
    pub fn ndjson(&self) -> Vec<Result<Vec<u8>, String>> {
        self.0
            .iter()
            .map(|m| {
                let encoding = m.properties.content_encoding().as_ref().map(|e| e.as_str());
                Ok(amqp::decode_body(&m.body, encoding)?.unwrap_or_else(|| m.body.clone()))
            })
            .collect()
    }
}

/// The live connection, with the generation it was made in so that only the
/// first of several failing callers replaces it, and its idle confirm-mode
/// channels. Each call publishes on a channel of its own: RabbitMQ confirms
/// with `multiple` and lapin attributes a returned (unroutable) message to
/// whichever pending confirm it meets first, so callers sharing a channel could
/// be told about each other's messages.
#[derive(Clone)]
struct Link {
    generation: u64,
    connection: Arc<Connection>,
    idle: Arc<std::sync::Mutex<Vec<Channel>>>,
}

impl Link {
    async fn take_channel(&self) -> lapin::Result<Channel> {
        let idle = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        if let Some(channel) = idle
            && channel.status().connected()
        {
            return Ok(channel);
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
    }

    fn give_back(&self, channel: Channel) {
        if channel.status().connected()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(channel);
        }
    }
}

struct Inner {
    url: SecretUrl,
    topology: Topology,
    settings: PublisherSettings,
    link: Mutex<Option<Link>>,
    generation: AtomicU64,
    name: String,
    metrics: PublisherMetrics,
}

/// Messages sent, and what the broker answered (labelled with the
/// publisher's name; see [`Publisher::register_metrics`], feature `metrics`).
#[derive(Clone)]
struct PublisherMetrics {
    published: Counter,
    confirmed: Counter,
    nacked: Counter,
    returned: Counter,
}

/// A Prometheus counter with the `metrics` feature.
#[cfg(feature = "metrics")]
type Counter = prometheus::IntCounter;

/// Without the `metrics` feature: the same counts, kept but not exported.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

#[cfg(not(feature = "metrics"))]
impl Counter {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl PublisherMetrics {
    #[cfg(feature = "metrics")]
    fn new(name: &str) -> Self {
        // Only a malformed metric or label name fails here, and these are
        // constants (a label's value, the publisher's name, may be anything).
        #[allow(clippy::expect_used)]
        let counter = |metric: &str, help: &str| {
            prometheus::IntCounter::with_opts(
                prometheus::Opts::new(metric, help).const_label("publisher", name),
            )
            .expect("constant metric and label names are valid")
        };
        Self {
            published: counter(
                "auditline_publisher_messages_published_total",
                "Messages sent to the events exchange",
            ),
            confirmed: counter(
                "auditline_publisher_messages_confirmed_total",
                "Messages the broker confirmed (stored in the queue)",
            ),
            nacked: counter(
                "auditline_publisher_messages_nacked_total",
                "Messages the broker refused (nack; e.g. the queue is full)",
            ),
            returned: counter(
                "auditline_publisher_messages_returned_total",
                "Messages the broker returned as unroutable",
            ),
        }
    }

    #[cfg(not(feature = "metrics"))]
    fn new(_name: &str) -> Self {
        Self {
            published: Counter::default(),
            confirmed: Counter::default(),
            nacked: Counter::default(),
            returned: Counter::default(),
        }
    }
}

/// Publishes validated audit events to `<ns>.events`. Cheap to clone; clones
/// share one connection (and its pool of confirm channels).
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("url", &self.inner.url)
            .field("exchange", &self.inner.topology.events_exchange)
            .finish()
    }
}

impl Publisher {
    /// Adds this publisher's counters to `registry` (published, confirmed,
    /// nacked, returned; labelled `publisher="<name>"`).
    #[cfg(feature = "metrics")]
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        let m = &self.inner.metrics;
        for counter in [&m.published, &m.confirmed, &m.nacked, &m.returned] {
            registry.register(Box::new(counter.clone()))?;
        }
        Ok(())
    }

    /// Connects, declares the topology (idempotent) and enables confirms.
    pub async fn connect(config: &ClientConfig, name: &str) -> anyhow::Result<Self> {
        let publisher = Self::new(config, name);
        publisher.current_link().await?;
        Ok(publisher)
    }

    /// A publisher that connects on first use (a service can start while the
    /// broker is down).
    pub fn new(config: &ClientConfig, name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: config.amqp_url.clone(),
                topology: Topology::new(&config.namespace),
                settings: config.publisher.clone(),
                link: Mutex::new(None),
                generation: AtomicU64::new(0),
                name: name.to_owned(),
                metrics: PublisherMetrics::new(name),
            }),
        }
    }

    /// Whether the broker can be reached now (connecting if needed).
    pub async fn is_connected(&self) -> bool {
        self.current_link().await.is_ok()
    }

    /// Whether a connection is open now, without trying to open one or
    /// waiting for a connection attempt in progress (that counts as down).
    pub fn is_link_up(&self) -> bool {
        self.inner.link.try_lock().is_ok_and(|link| {
            link.as_ref()
                .is_some_and(|link| link.connection.status().connected())
        })
    }

    /// Publishes one event as one message; resolves once the broker confirmed it.
    pub async fn publish(&self, event: &AuditEvent) -> Result<Uuid, PublishError> {
        self.send(&[single_message(event)]).await?;
        Ok(event.event_id)
    }

    /// Publishes each event as its own message, all confirms in flight at once.
    pub async fn publish_each(&self, events: &[AuditEvent]) -> Result<Vec<Uuid>, PublishError> {
        let messages: Vec<Message> = events.iter().map(single_message).collect();
        self.send(&messages).await?;
        Ok(events.iter().map(|e| e.event_id).collect())
    }

    /// Publishes events as NDJSON messages of up to
    /// `publisher.events_per_message` events; resolves once every message was
    /// confirmed. The routing key is `<service>.<action_type>` when the chunk
    /// shares one, otherwise `<service>.mixed` (or `mixed.mixed`).
    pub async fn publish_batch(&self, events: &[AuditEvent]) -> Result<Vec<Uuid>, PublishError> {
        self.publish_batch_of(events, self.inner.settings.events_per_message)
            .await
    }

    /// [`Self::publish_batch`] with `per_message` events per message.
    pub async fn publish_batch_of(
        &self,
        events: &[AuditEvent],
        per_message: usize,
    ) -> Result<Vec<Uuid>, PublishError> {
        let compress = self.inner.settings.compress;
        let messages: Vec<Message> = events
            .chunks(per_message.max(1))
            .map(|chunk| batch_message(chunk, compress))
            .collect();
        self.send(&messages).await?;
        Ok(events.iter().map(|e| e.event_id).collect())
    }

    /// Messages of events already written as NDJSON (every line one valid
    /// event): a message per `(routing key, parts)`, its body the parts one
    /// after another, built (and compressed) now and sent later with
    /// [`Self::send_prepared`]; the caller may let go of the NDJSON meanwhile.
    pub fn prepare_ndjson(&self, messages: &[(String, Vec<&[u8]>)]) -> Prepared {
        let compress = self.inner.settings.compress;
        Prepared(
            messages
                .iter()
                .map(|(routing_key, parts)| ndjson_message(routing_key.clone(), parts, compress))
                .collect(),
        )
    }

    /// Publishes prepared messages; resolves once every one was confirmed.
    pub async fn send_prepared(&self, prepared: &Prepared) -> Result<(), PublishError> {
        self.send(&prepared.0).await
    }

    async fn send(&self, messages: &[Message]) -> Result<(), PublishError> {
        let timeout_ms = self.inner.settings.publish_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut pending: Vec<&Message> = messages.iter().collect();
        let mut backoff = Duration::from_millis(50);
        let unavailable = |last_error: String| PublishError::Unavailable {
            timeout_ms,
            last_error,
        };
        loop {
            let link = match self.current_link().await {
                Ok(link) => link,
                Err(e) => {
                    if Instant::now() + backoff > deadline {
                        return Err(unavailable(format!("{e:#}")));
                    }
                    tracing::warn!(error = %format!("{e:#}"), "publisher cannot connect; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let (retry, last_error) = match link.take_channel().await {
                Ok(channel) => {
                    let outcome = self.publish_on(&channel, &pending, deadline).await;
                    link.give_back(channel);
                    outcome?
                }
                Err(e) => (pending.clone(), e.to_string()),
            };
            if retry.is_empty() {
                return Ok(());
            }
            self.drop_link(link.generation).await;
            if Instant::now() + backoff > deadline {
                return Err(unavailable(last_error));
            }
            tracing::warn!(error = %last_error, messages = retry.len(), "publish interrupted; reconnecting");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            pending = retry;
        }
    }

    /// Publishes `messages` and awaits their confirms. Returns the messages to
    /// retry (transport failures) and the last transport error.
    async fn publish_on<'m>(
        &self,
        channel: &Channel,
        messages: &[&'m Message],
        deadline: Instant,
    ) -> Result<(Vec<&'m Message>, String), PublishError> {
        let exchange: ShortString = self.inner.topology.events_exchange.as_str().into();
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut confirms = Vec::with_capacity(messages.len());
        let mut retry = Vec::new();
        let mut last_error = String::new();
        for (i, message) in messages.iter().enumerate() {
            let sent = channel
                .basic_publish(
                    exchange.clone(),
                    message.routing_key.as_str().into(),
                    options,
                    &message.body,
                    message.properties.clone(),
                )
                .await;
            match sent {
                Ok(confirm) => {
                    self.inner.metrics.published.inc();
                    confirms.push((*message, confirm));
                }
                Err(e) => {
                    last_error = e.to_string();
                    retry.extend_from_slice(&messages[i..]);
                    break;
                }
            }
        }
        let confirmed = join_all(
            confirms
                .into_iter()
                .map(|(message, confirm)| async move { (message, confirm.await) }),
        );
        let Ok(outcomes) = tokio::time::timeout_at(deadline.into(), confirmed).await else {
            // Confirms still owed on this channel must not be credited to a
            // later call: close it (it is not given back).
            let _ = channel.close(200, "confirms timed out".into()).await;
            return Err(PublishError::Unavailable {
                timeout_ms: self.inner.settings.publish_timeout_ms,
                last_error: "the broker did not confirm in time".into(),
            });
        };
        let mut refusal = None;
        for (message, outcome) in outcomes {
            match outcome {
                Ok(Confirmation::Ack(None)) => self.inner.metrics.confirmed.inc(),
                Ok(Confirmation::Ack(Some(returned))) => {
                    self.inner.metrics.returned.inc();
                    refusal.get_or_insert(PublishError::Unroutable(format!(
                        "{} {} (routing key {})",
                        returned.reply_code, returned.reply_text, message.routing_key
                    )));
                }
                Ok(Confirmation::Nack(_)) => {
                    self.inner.metrics.nacked.inc();
                    refusal.get_or_insert(PublishError::Nacked);
                }
                Ok(Confirmation::NotRequested) => {
                    // Only possible if confirm mode got lost; the broker did not
                    // promise anything, so send again on a fresh channel.
                    last_error = "confirm mode was not active".into();
                    retry.push(message);
                }
                Err(e) => {
                    last_error = e.to_string();
                    retry.push(message);
                }
            }
        }
        match refusal {
            Some(refusal) => Err(refusal),
            None => Ok((retry, last_error)),
        }
    }

    async fn current_link(&self) -> anyhow::Result<Link> {
        let mut guard = self.inner.link.lock().await;
        if let Some(link) = guard.as_ref()
            && link.connection.status().connected()
        {
            return Ok(link.clone());
        }
        let link = self.open_link().await?;
        *guard = Some(link.clone());
        Ok(link)
    }

    async fn drop_link(&self, generation: u64) {
        let mut guard = self.inner.link.lock().await;
        if guard.as_ref().is_some_and(|l| l.generation == generation) {
            *guard = None;
        }
    }

    async fn open_link(&self) -> anyhow::Result<Link> {
        let connection = amqp::connect(&self.inner.url, &self.inner.name).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.inner.topology.declare(&channel).await?;
        Ok(Link {
            generation: self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1,
            connection: Arc::new(connection),
            idle: Arc::new(std::sync::Mutex::new(vec![channel])),
        })
    }
}

fn timestamp_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

fn single_message(event: &AuditEvent) -> Message {
    Message {
        routing_key: event.routing_key(),
        body: event.to_json(),
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event.event_id.to_string().as_str().into())
            .with_timestamp(timestamp_now()),
    }
}

fn batch_message(events: &[AuditEvent], compress: bool) -> Message {
    ndjson_message(batch_routing_key(events), &[&to_ndjson(events)], compress)
}

/// The routing key of a message of `events`: `<service>.<action_type>` when
/// they share one, `<service>.mixed` when they share a service, else
/// `mixed.mixed`.
pub fn batch_routing_key(events: &[AuditEvent]) -> String {
    let Some(first) = events.first() else {
        return "mixed.mixed".to_owned();
    };
    let same_service = events.iter().all(|e| e.service == first.service);
    let same_action = events.iter().all(|e| e.action_type == first.action_type);
    match (same_service, same_action) {
        (true, true) => first.routing_key(),
        (true, false) => format!("{}.mixed", first.service),
        _ => "mixed.mixed".to_owned(),
    }
}

fn ndjson_message(routing_key: String, parts: &[&[u8]], compress: bool) -> Message {
    let mut properties = BasicProperties::default()
        .with_content_type("application/x-ndjson".into())
        .with_delivery_mode(2)
        .with_message_id(Uuid::now_v7().to_string().as_str().into())
        .with_timestamp(timestamp_now());
    let (body, encoding) = amqp::message_body(parts, compress);
    if let Some(encoding) = encoding {
        properties = properties.with_content_encoding(encoding.into());
    }
    Message {
        routing_key,
        body,
        properties,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_publisher_name_makes_a_publisher() {
        for name in ["", "files-api", "odd \"name\"\nwith a newline", "ünïcödé"] {
            let publisher = Publisher::new(&ClientConfig::default(), name);
            assert!(!publisher.is_link_up(), "nothing connects before first use");
        }
    }
}
