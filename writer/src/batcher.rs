//! The batcher actor: gathers parsed deliveries until `batch.max_events`,
//! `batch.max_bytes` or `batch.timeout_ms` is reached, then hands the batch to
//! the DB writer. One batch is in flight at a time; the next one fills
//! meanwhile (the prefetch count bounds how far), so commits and acks stay in
//! delivery order and an ack `multiple` never covers an unwritten message.

use crate::{
    consumer::{DeadLetter, Held, Incoming},
    db_writer::DbWriter,
};
use actix::prelude::*;
use auditline_shared::settings::BatchSettings;
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

/// What the DB writer stores, dead-letters and acks in one go: a run of
/// consecutive deliveries.
#[derive(Debug, Message, Default)]
#[rtype(result = "()")]
pub struct Batch {
    /// Highest delivery tag in the batch: acked with `multiple` after commit.
    pub ack_tag: u64,
    pub messages: Vec<Incoming>,
    pub events: usize,
}

impl Batch {
    /// The dead letters of every message in the batch.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.messages
            .iter()
            .flat_map(|m| m.dead.iter().cloned())
            .collect()
    }
}

/// Resolves once everything received so far is written and acked.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

#[derive(Debug)]
pub struct Batcher {
    settings: BatchSettings,
    writer: Addr<DbWriter>,
    /// Released as batches are written.
    held: std::sync::Arc<Held>,
    pending: VecDeque<Incoming>,
    pending_events: usize,
    pending_bytes: usize,
    first_at: Option<Instant>,
    timer: Option<SpawnHandle>,
    busy: bool,
    draining: bool,
    drained: Vec<oneshot::Sender<()>>,
}

impl Batcher {
    pub fn new(
        settings: BatchSettings,
        writer: Addr<DbWriter>,
        held: std::sync::Arc<Held>,
    ) -> Self {
        Self {
            settings,
            writer,
            held,
            pending: VecDeque::new(),
            pending_events: 0,
            pending_bytes: 0,
            first_at: None,
            timer: None,
            busy: false,
            draining: false,
            drained: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn is_full(&self) -> bool {
        self.pending_events >= self.settings.max_events
            || self.pending_bytes >= self.settings.max_bytes
    }

    fn is_due(&self) -> bool {
        self.first_at
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(self.settings.timeout_ms))
    }

    /// Flushes if there is something to flush, it is time, and the writer is free;
    /// otherwise makes sure a timer will look again.
    fn consider(&mut self, ctx: &mut Context<Self>) {
        if self.is_empty() {
            self.notify_drained();
            return;
        }
        if self.busy {
            return;
        }
        if self.is_full() || self.is_due() || self.draining {
            self.flush(ctx);
        } else if self.timer.is_none() {
            let waited = self.first_at.map(|t| t.elapsed()).unwrap_or_default();
            let left = Duration::from_millis(self.settings.timeout_ms).saturating_sub(waited);
            self.timer = Some(ctx.run_later(left, |batcher, ctx| {
                batcher.timer = None;
                batcher.consider(ctx);
            }));
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        // Take whole messages, oldest first, up to the limits: acking the last
        // one with `multiple` then covers exactly what was written.
        let mut batch = Batch::default();
        let mut bytes = 0;
        while let Some(message) = self.pending.pop_front() {
            batch.ack_tag = message.delivery_tag;
            batch.events += message.events.len();
            bytes += message.body.len();
            batch.messages.push(message);
            if batch.events >= self.settings.max_events || bytes >= self.settings.max_bytes {
                break;
            }
        }
        self.pending_events -= batch.events;
        self.pending_bytes -= bytes;
        // What is left waited already: it goes out as soon as the writer is free.
        if self.pending.is_empty() {
            self.first_at = None;
        }
        self.busy = true;
        let events = batch.events;
        ctx.spawn(
            self.writer
                .send(batch)
                .into_actor(self)
                .map(move |result, batcher, ctx| {
                    batcher.busy = false;
                    batcher.held.release(events, bytes);
                    if result.is_err() {
                        // The writer is gone (pipeline shutting down): nothing of this
                        // batch was acked, so the broker redelivers it.
                        ctx.stop();
                        return;
                    }
                    batcher.consider(ctx);
                }),
        );
    }

    fn notify_drained(&mut self) {
        if !self.busy {
            for waiter in self.drained.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;
}

impl Handler<Incoming> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: Incoming, ctx: &mut Self::Context) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        self.pending_events += msg.events.len();
        self.pending_bytes += msg.body.len();
        self.pending.push_back(msg);
        self.consider(ctx);
    }
}

impl Handler<Drain> for Batcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.consider(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
