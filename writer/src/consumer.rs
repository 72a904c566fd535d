//! The consumer actor: receives deliveries from `<ns>.writer`, parses and
//! validates them (the boundary), and hands them to the batcher in delivery
//! order. It never acks: acks follow commits (see [`crate::db_writer`]).

use crate::{batcher::Batcher, metrics::WriterMetrics};
use actix::prelude::*;
use auditline_shared::{
    AuditEvent, ValidationError,
    amqp::decode_body,
    event::{check_age, parse_ndjson},
};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// The events a pipeline has parsed and not yet written, with their bodies'
/// bytes, and how many it may hold: the consumer takes no further delivery
/// while either is at its limit (the broker's prefetch then waits in the
/// client, still encoded and compact). The prefetch counts messages, and a
/// message may hold one event or thousands, so without this the memory of
/// parsed events would follow whatever message size a publisher chose.
#[derive(Debug)]
pub struct Held {
    /// Events and bytes.
    held: watch::Sender<(usize, usize)>,
    limits: (usize, usize),
    /// Events, summed over the pipelines.
    gauge: prometheus::IntGauge,
}

impl Held {
    pub fn new(events: usize, bytes: usize, gauge: prometheus::IntGauge) -> Arc<Self> {
        Arc::new(Self {
            held: watch::Sender::new((0, 0)),
            limits: (events.max(1), bytes.max(1)),
            gauge,
        })
    }

    pub fn add(&self, events: usize, bytes: usize) {
        self.held.send_modify(|held| {
            held.0 += events;
            held.1 += bytes;
        });
        self.gauge.add(events as i64);
    }

    /// Written (or given up on with the pipeline).
    pub fn release(&self, events: usize, bytes: usize) {
        let mut released = 0;
        self.held.send_modify(|held| {
            released = events.min(held.0);
            held.0 -= released;
            held.1 = held.1.saturating_sub(bytes);
        });
        self.gauge.sub(released as i64);
    }

    /// Resolves once the pipeline holds fewer events and bytes than its
    /// limits. A message is taken whole even when it alone is over them:
    /// what is held stays under the limits plus one message.
    async fn room(&self) {
        let mut held = self.held.subscribe();
        let (events, bytes) = self.limits;
        let _ = held
            .wait_for(|held| held.0 < events && held.1 < bytes)
            .await;
    }
}

/// A pipeline torn down with events still held: they go back to the broker
/// (unacked), and out of the gauge.
impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.sub(self.held.borrow().0 as i64);
    }
}

/// Something that cannot be stored and goes to `<ns>.dead`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub content_type: String,
    /// Set when the body is kept as it arrived, still encoded (it could not
    /// be decoded).
    pub content_encoding: Option<String>,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub reason: String,
}

/// One delivery, parsed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Incoming {
    pub delivery_tag: u64,
    pub received_at: DateTime<Utc>,
    pub routing_key: String,
    pub content_type: String,
    pub message_id: Option<String>,
    /// The body (decoded), kept so the whole message can be dead-lettered if
    /// the database refuses its rows for good.
    pub body: Vec<u8>,
    pub events: Vec<AuditEvent>,
    pub dead: Vec<DeadLetter>,
    /// The broker delivered this message before: its events may be stored already.
    pub redelivered: bool,
}

impl Incoming {
    /// Parses a delivery. Nothing is dropped: every line or body that fails
    /// becomes a dead letter with the reason.
    /// Events older than `max_age` (`partitions.max_event_age_days`) are
    /// dead letters too.
    pub fn parse(delivery: Delivery, now: DateTime<Utc>, max_age: chrono::Duration) -> Self {
        let props = &delivery.properties;
        let content_type = props
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_else(|| "application/json".into());
        let message_id = props.message_id().as_ref().map(|m| m.as_str().to_owned());
        let routing_key = delivery.routing_key.as_str().to_owned();
        let redelivered = delivery.redelivered;
        let encoding = props
            .content_encoding()
            .as_ref()
            .map(|e| e.as_str().to_owned());
        let mut events = Vec::new();
        let mut dead = Vec::new();
        let dead_letter = |body: Vec<u8>, content_type: &str, reason: String| DeadLetter {
            body,
            content_type: content_type.to_owned(),
            content_encoding: None,
            routing_key: routing_key.clone(),
            message_id: message_id.clone(),
            reason,
        };
        let raw = delivery.data;
        let body = match decode_body(&raw, encoding.as_deref()) {
            Ok(None) => raw,
            Ok(Some(decoded)) => decoded,
            Err(reason) => {
                // Kept as it arrived, with its encoding, for whoever looks.
                dead.push(DeadLetter {
                    content_encoding: encoding.clone(),
                    ..dead_letter(raw, &content_type, reason)
                });
                Vec::new()
            }
        };
        let base_type = content_type.split(';').next().unwrap_or("").trim();
        let decoded = dead.is_empty();
        match base_type {
            _ if !decoded => {}
            "application/x-ndjson" => {
                let lines = parse_ndjson(&body, now);
                if lines.is_empty() {
                    dead.push(dead_letter(body.clone(), &content_type, "empty NDJSON message: no event in it".into()));
                }
                let line_bodies: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
                for line in lines {
                    let result = line.result.and_then(|event| {
                        check_age(event.occurred_at, now, max_age)
                            .map(|()| event)
                            .map_err(|e| ValidationError(vec![e]))
                    });
                    match result {
                        Ok(event) => events.push(event),
                        Err(err) => {
                            let raw = line_bodies.get(line.index).map(|l| l.to_vec()).unwrap_or_default();
                            dead.push(dead_letter(
                                raw,
                                "application/json",
                                format!("line {}: {err}", line.index + 1),
                            ));
                        }
                    }
                }
            }
            "application/json" | "" => match AuditEvent::parse_at(&body, now).and_then(|event| {
                check_age(event.occurred_at, now, max_age)
                    .map(|()| event)
                    .map_err(|e| ValidationError(vec![e]))
            }) {
                Ok(event) => events.push(event),
                Err(err) => dead.push(dead_letter(body.clone(), &content_type, err.to_string())),
            },
            other => dead.push(dead_letter(
                body.clone(),
                &content_type,
                format!("unsupported content type {other:?}: expected application/json or application/x-ndjson"),
            )),
        }
        Self {
            delivery_tag: delivery.delivery_tag,
            received_at: now,
            routing_key,
            content_type,
            message_id,
            body,
            events,
            dead,
            redelivered,
        }
    }
}

/// Consumes one channel.
pub struct Consumer {
    stream: Option<lapin::Consumer>,
    /// The stream's channel, watched while the pipeline is full.
    channel: lapin::Channel,
    batcher: Addr<Batcher>,
    held: Arc<Held>,
    metrics: WriterMetrics,
    down: Option<oneshot::Sender<String>>,
    reason: String,
    /// `partitions.max_event_age_days`.
    max_event_age: chrono::Duration,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

impl Consumer {
    /// `down` fires when the consumer stops (stream ended or failed), with why.
    pub fn new(
        stream: lapin::Consumer,
        channel: lapin::Channel,
        batcher: Addr<Batcher>,
        held: Arc<Held>,
        metrics: WriterMetrics,
        down: oneshot::Sender<String>,
        max_event_age: chrono::Duration,
    ) -> Self {
        Self {
            max_event_age,
            stream: Some(stream),
            channel,
            batcher,
            held,
            metrics,
            down: Some(down),
            reason: "consumer stream ended".into(),
        }
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(stream) = self.stream.take() {
            // The next delivery is taken only when the pipeline has room.
            // A full pipeline polls no delivery, so it would not see its
            // connection drop (or its batcher stop), which must end it to be
            // rebuilt: meanwhile it looks every second, and ends the stream.
            let (channel, batcher) = (self.channel.clone(), self.batcher.clone());
            let alive = move || channel.status().connected() && batcher.connected();
            let gated = futures_util::stream::unfold(
                (stream, self.held.clone(), alive),
                |(mut stream, held, alive)| async move {
                    loop {
                        tokio::select! {
                            () = held.room() => break,
                            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                                if !alive() {
                                    tracing::warn!("a full pipeline lost its channel or batcher; it is rebuilt");
                                    return None;
                                }
                            }
                        }
                    }
                    let item = stream.next().await?;
                    Some((item, (stream, held, alive)))
                },
            );
            ctx.add_stream(gated);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(down) = self.down.take() {
            let _ = down.send(std::mem::take(&mut self.reason));
        }
    }
}

impl StreamHandler<lapin::Result<Delivery>> for Consumer {
    fn handle(&mut self, item: lapin::Result<Delivery>, ctx: &mut Self::Context) {
        match item {
            Ok(delivery) => {
                let incoming = Incoming::parse(delivery, Utc::now(), self.max_event_age);
                self.metrics.messages_received.inc();
                self.metrics
                    .events_received
                    .inc_by(incoming.events.len() as u64);
                if !self.batcher.connected() {
                    // The batcher (or the writer behind it) stopped: end the
                    // pipeline so it is rebuilt; this delivery stays unacked.
                    self.reason = "the batcher stopped".into();
                    ctx.stop();
                    return;
                }
                self.held.add(incoming.events.len(), incoming.body.len());
                self.batcher.do_send(incoming);
            }
            Err(e) => {
                self.reason = format!("consumer failed: {e}");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
