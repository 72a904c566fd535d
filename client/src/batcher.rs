//! The batching publisher: NDJSON parts handed in by many producers (the
//! middleware's worker threads, the gateway's requests) are gathered into
//! compressed messages and published with up to [`IN_FLIGHT`] publishes
//! awaiting their confirms, within a memory budget ([`HELD_KIB`]).
//!
//! What a part becomes is its [`Sink`]'s business: the middleware gives its
//! buffers back to the workers as soon as they are compressed and spools
//! the events of a message the broker did not confirm; the gateway keeps
//! each request's reply channel and tells the request how its message
//! fared (202 once confirmed; on failure the request spools its events
//! itself).
//!
//! The loop: take what is queued (after a linger, unless a message's worth
//! is already there), group it in order into messages of up to
//! `events_per_message` events and [`MAX_MESSAGE_BYTES`], compress them now
//! (what waits for the broker is small), put them in the outbox, and send
//! the outbox whenever a publish is free, merging the oldest batches up to
//! [`LAUNCH_BYTES`]. Over the budget the loop waits, the queue fills, and
//! producers see it full. At [`Batcher::shutdown`] it takes what is queued,
//! publishes it and ends; publishes still unconfirmed when the grace is over
//! give up ([`Sink::settled`] with an error).

use crate::publisher::{Prepared, PublishError, Publisher};
use std::{sync::Arc, time::Duration};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// The most events gathered into one batch.
pub const MAX_BATCH: usize = 5_000;
/// Publishes awaiting their confirms at once (each on a channel of its own).
pub const IN_FLIGHT: usize = 4;
/// The compressed bytes held, waiting to be published or confirmed, in KiB:
/// 16 MiB, some 500,000 events of ~30 bytes, seconds of a busy app's
/// events. A broker slow to confirm for a while (a busy 2-core machine has
/// shown pauses of over a second) is waited for in memory; the queue fills
/// only beyond it.
pub const HELD_KIB: usize = 16 * 1024;
/// The most compressed bytes one publish takes from the outbox (~35,000
/// events): a publish that fails gives back what it took, so neither its
/// decoding nor the duplicates of what it had sent grow with the backlog.
pub const LAUNCH_BYTES: usize = HELD_KIB * 1024 / (4 * IN_FLIGHT);
/// The most NDJSON bytes in one message (whole parts, so one large part may
/// exceed it alone): well under what the writer decodes (64 MiB), however
/// much metadata the app attaches.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// What a producer's parts are and what becomes of them.
pub trait Sink: Send + Sync + 'static {
    /// Whole NDJSON lines, one valid event each, with what the sink needs.
    type Part: Send + 'static;
    /// What is kept of a part once it is compressed into its message, until
    /// the message's fate is known.
    type Ticket: Send + 'static;

    fn events(part: &Self::Part) -> usize;
    fn body(part: &Self::Part) -> &[u8];
    /// The routing key of a message made of `parts`.
    fn routing_key(&self, parts: &[Self::Part]) -> String;
    /// A part is in its compressed message: its buffer is free.
    fn taken(&self, part: Self::Part) -> Self::Ticket;
    /// The messages of these tickets' parts were confirmed (`Ok`) or not.
    fn settled(
        &self,
        prepared: &Prepared,
        tickets: Vec<Self::Ticket>,
        outcome: Result<(), PublishError>,
    );
}

/// How a [`Batcher`] gathers.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// How long the loop gathers before it publishes (less when a message's
    /// worth is queued sooner): the delay it adds to an event in return for
    /// fewer, larger messages. Zero: publish whatever is queued at once
    /// (a producer that waits for the confirm, like the gateway; parts still
    /// share messages whenever they queue up behind busy publishes).
    pub linger: Duration,
    /// The most events in one message.
    pub events_per_message: usize,
    /// Parts the queue holds.
    pub queue_parts: usize,
    /// Parts taken from the queue at once.
    pub parts_per_take: usize,
}

/// Between the producers, [`Batcher::shutdown`] and the loop.
#[derive(Default)]
struct Signals {
    /// Set by shutdown: the loop takes what is queued, publishes it and ends.
    closing: watch::Sender<bool>,
    /// Set when shutdown's grace is over: publishes still unconfirmed give up.
    hurry: watch::Sender<bool>,
    /// Set by the loop once everything it took is settled.
    drained: watch::Sender<bool>,
    /// A message's worth of parts is queued: the loop stops lingering.
    batch_queued: tokio::sync::Notify,
}

/// The producers' side of a batching publisher (cheap to clone; clones share
/// the queue and the loop).
pub struct Batcher<S: Sink> {
    queue: mpsc::Sender<S::Part>,
    signals: Arc<Signals>,
    /// Queued parts that make a message (see [`Signals::batch_queued`]).
    batch_parts: usize,
}

impl<S: Sink> Clone for Batcher<S> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            signals: self.signals.clone(),
            batch_parts: self.batch_parts,
        }
    }
}

impl<S: Sink> std::fmt::Debug for Batcher<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field(
                "queued",
                &(self.queue.max_capacity() - self.queue.capacity()),
            )
            .finish()
    }
}

impl<S: Sink> Batcher<S> {
    /// Starts the loop; call inside a tokio runtime. `events_per_part` is
    /// what a part usually holds (for when to stop lingering).
    pub fn start(
        publisher: Publisher,
        sink: Arc<S>,
        settings: BatchSettings,
        events_per_part: usize,
    ) -> Self {
        let (queue, rx) = mpsc::channel(settings.queue_parts.max(1));
        let signals = Arc::<Signals>::default();
        // Half the queue at most, so that the rest takes what comes meanwhile.
        let batch_parts = (settings.events_per_message.min(MAX_BATCH) / events_per_part.max(1))
            .min(queue.max_capacity() / 2)
            .max(1);
        tokio::spawn(run(rx, publisher, sink, settings, signals.clone()));
        Self {
            queue,
            signals,
            batch_parts,
        }
    }

    /// Queues a part, or hands it back when the queue is full or closed.
    pub fn try_submit(&self, part: S::Part) -> Result<(), S::Part> {
        match self.queue.try_send(part) {
            Ok(()) => {
                self.queued();
                Ok(())
            }
            Err(
                mpsc::error::TrySendError::Full(part) | mpsc::error::TrySendError::Closed(part),
            ) => Err(part),
        }
    }

    /// Queues a part, waiting for room; hands it back when closed.
    pub async fn submit(&self, part: S::Part) -> Result<(), S::Part> {
        match self.queue.send(part).await {
            Ok(()) => {
                self.queued();
                Ok(())
            }
            Err(mpsc::error::SendError(part)) => Err(part),
        }
    }

    fn queued(&self) {
        if self.queue.max_capacity() - self.queue.capacity() >= self.batch_parts {
            self.signals.batch_queued.notify_one();
        }
    }

    /// Publishes what was taken and stops taking parts (later ones are
    /// handed back). Publishes unconfirmed at `deadline` give up; returns
    /// whether everything was settled by `last` (the sink's own work, such
    /// as spooling, may go on).
    pub async fn shutdown(
        &self,
        deadline: tokio::time::Instant,
        last: tokio::time::Instant,
    ) -> bool {
        let signals = &self.signals;
        signals.closing.send_replace(true);
        let mut drained = signals.drained.subscribe();
        if tokio::time::timeout_at(deadline, drained.wait_for(|d| *d))
            .await
            .is_err()
        {
            tracing::warn!("messages not confirmed in time give up");
            signals.hurry.send_replace(true);
        }
        tokio::time::timeout_at(last, drained.wait_for(|d| *d))
            .await
            .is_ok()
    }
}

/// Compressed batches not yet published, oldest first, each with its
/// parts' tickets and its share of [`HELD_KIB`].
struct Outbox<T> {
    batches: std::collections::VecDeque<(Prepared, Vec<T>, OwnedSemaphorePermit)>,
}

impl<T> Outbox<T> {
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The oldest batches, merged, up to [`LAUNCH_BYTES`] (one at least).
    fn take(&mut self) -> Option<(Prepared, Vec<T>, OwnedSemaphorePermit)> {
        let (mut messages, mut tickets, mut held) = self.batches.pop_front()?;
        while let Some((next, _, _)) = self.batches.front() {
            if messages.bytes() + next.bytes() > LAUNCH_BYTES {
                break;
            }
            let Some((next, more, share)) = self.batches.pop_front() else {
                break;
            };
            messages.append(next);
            tickets.extend(more);
            held.merge(share);
        }
        Some((messages, tickets, held))
    }
}

/// Parts grouped, in order, into messages of up to `events_per_message`
/// events and [`MAX_MESSAGE_BYTES`] (a part is never split).
pub(crate) fn group<P>(
    parts: impl IntoIterator<Item = P>,
    events_per_message: usize,
    size: impl Fn(&P) -> (usize, usize),
) -> Vec<Vec<P>> {
    let mut messages: Vec<Vec<P>> = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    for part in parts {
        let (count, len) = size(&part);
        if messages.is_empty()
            || events + count > events_per_message
            || bytes + len > MAX_MESSAGE_BYTES
        {
            messages.push(Vec::new());
            (events, bytes) = (0, 0);
        }
        events += count;
        bytes += len;
        if let Some(last) = messages.last_mut() {
            last.push(part);
        }
    }
    messages
}

async fn run<S: Sink>(
    mut rx: mpsc::Receiver<S::Part>,
    publisher: Publisher,
    sink: Arc<S>,
    settings: BatchSettings,
    signals: Arc<Signals>,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let held = Arc::new(Semaphore::new(HELD_KIB));
    let mut outbox = Outbox {
        batches: std::collections::VecDeque::new(),
    };
    let mut parts = Vec::new();
    let mut closing = signals.closing.subscribe();
    let take = settings.parts_per_take.max(1);
    // Sends what the outbox holds on a publish of its own.
    let launch = |outbox: &mut Outbox<S::Ticket>, permit: OwnedSemaphorePermit| {
        let Some((messages, tickets, held)) = outbox.take() else {
            return;
        };
        let (publisher, sink) = (publisher.clone(), sink.clone());
        let mut hurry = signals.hurry.subscribe();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                published = publisher.send_prepared(&messages) => published,
                _ = hurry.wait_for(|h| *h) => Err(PublishError::Unavailable {
                    timeout_ms: 0,
                    last_error: "shutting down before the broker confirmed".into(),
                }),
            };
            sink.settled(&messages, tickets, outcome);
            drop((held, permit));
        });
    };
    loop {
        let closed = *closing.borrow_and_update();
        let taken = if closed {
            // Shutdown: what is queued is taken (parts from now on are
            // handed back), then the loop ends.
            rx.close();
            rx.recv_many(&mut parts, take).await
        } else {
            tokio::select! {
                taken = rx.recv_many(&mut parts, take) => taken,
                _ = closing.changed() => continue,
                // A publish has finished: the next one takes the outbox.
                Ok(permit) = in_flight.clone().acquire_owned(), if !outbox.is_empty() => {
                    launch(&mut outbox, permit);
                    continue;
                }
            }
        };
        if taken == 0 {
            break;
        }
        gather::<S>(
            &mut rx,
            &mut parts,
            &settings,
            &signals,
            &mut closing,
            closed,
        )
        .await;
        let (prepared, tickets) = prepare(&mut parts, &settings, &publisher, &*sink);
        // Over the budget, the loop waits (and the queue fills), sending the
        // outbox whenever a publish is free: its share is freed only then.
        let kib = (prepared.bytes() / 1024 + 1).min(HELD_KIB) as u32;
        let share = loop {
            tokio::select! {
                share = held.clone().acquire_many_owned(kib) => break share,
                Ok(permit) = in_flight.clone().acquire_owned(), if !outbox.is_empty() => {
                    launch(&mut outbox, permit);
                }
            }
        };
        let Ok(share) = share else {
            return;
        };
        outbox.batches.push_back((prepared, tickets, share));
        if let Ok(permit) = in_flight.clone().try_acquire_owned() {
            launch(&mut outbox, permit);
        }
    }
    while !outbox.is_empty() {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        launch(&mut outbox, permit);
    }
    // Every batch settled (shutdown then waits for the sink's own work).
    let _ = in_flight.acquire_many(IN_FLIGHT as u32).await;
    signals.drained.send_replace(true);
}

/// After a first take: unless a message's worth is there, lingers (not at
/// shutdown) so that a busy app hands over hundreds of events per wake-up
/// and they leave in few messages, then takes what else is queued, up to
/// [`MAX_BATCH`] events.
async fn gather<S: Sink>(
    rx: &mut mpsc::Receiver<S::Part>,
    parts: &mut Vec<S::Part>,
    settings: &BatchSettings,
    signals: &Signals,
    closing: &mut watch::Receiver<bool>,
    closed: bool,
) {
    let mut count: usize = parts.iter().map(S::events).sum();
    if count >= settings.events_per_message {
        return;
    }
    if !closed && !settings.linger.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(settings.linger) => {}
            () = signals.batch_queued.notified() => {}
            _ = closing.changed() => {}
        }
    }
    while count < MAX_BATCH {
        match rx.try_recv() {
            Ok(part) => {
                count += S::events(&part);
                parts.push(part);
            }
            Err(_) => break,
        }
    }
}

/// Groups the parts into messages and compresses them now, so that what
/// waits for the broker is small and the parts' buffers go round again at
/// once.
fn prepare<S: Sink>(
    parts: &mut Vec<S::Part>,
    settings: &BatchSettings,
    publisher: &Publisher,
    sink: &S,
) -> (Prepared, Vec<S::Ticket>) {
    let messages = group(parts.drain(..), settings.events_per_message, |p| {
        (S::events(p), S::body(p).len())
    });
    let prepared = {
        let bodies: Vec<(String, Vec<&[u8]>)> = messages
            .iter()
            .map(|parts| {
                let key = sink.routing_key(parts);
                (key, parts.iter().map(|p| S::body(p)).collect())
            })
            .collect();
        publisher.prepare_ndjson(&bodies)
    };
    let tickets = messages
        .into_iter()
        .flatten()
        .map(|part| sink.taken(part))
        .collect();
    (prepared, tickets)
}

/// The routing key of a message whose parts have these keys: their own when
/// they share one, `<service>.mixed` when they share a service, else
/// `mixed.mixed`.
pub fn shared_routing_key<'k>(mut keys: impl Iterator<Item = &'k str>) -> String {
    let Some(first) = keys.next() else {
        return "mixed.mixed".into();
    };
    let service = |key: &'k str| key.split_once('.').map_or(key, |(s, _)| s);
    let (mut same_key, mut same_service) = (true, true);
    for key in keys {
        same_key &= key == first;
        same_service &= service(key) == service(first);
    }
    match (same_key, same_service) {
        (true, _) => first.to_owned(),
        (false, true) => format!("{}.mixed", service(first)),
        (false, false) => "mixed.mixed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stay_within_their_events_and_bytes() {
        let part = |count: usize, bytes: usize| (count, bytes);
        let size = |p: &(usize, usize)| *p;
        // Ordinary events: 5,000 a message, whole parts.
        let small: Vec<_> = (0..100).map(|_| part(64, 64 * 400)).collect();
        let counts: Vec<usize> = group(small, 5_000, size)
            .iter()
            .map(|m| m.iter().map(|p| p.0).sum())
            .collect();
        assert_eq!(counts, [4_992, 1_408]);
        // Every event with 32 KiB of metadata and resources: 2 MiB a part,
        // so four to a message, far below the writer's 64 MiB.
        let large: Vec<_> = (0..10).map(|_| part(64, 64 * 32 * 1024)).collect();
        let messages = group(large, 5_000, size);
        assert_eq!(messages.len(), 3);
        for message in &messages {
            let bytes: usize = message.iter().map(|p| p.1).sum();
            assert!(bytes <= MAX_MESSAGE_BYTES, "{bytes} bytes in one message");
        }
        assert_eq!(messages.iter().flatten().map(|p| p.0).sum::<usize>(), 640);
    }

    #[test]
    fn a_message_of_several_keys_is_routed_by_what_they_share() {
        let key = |keys: &[&str]| shared_routing_key(keys.iter().copied());
        assert_eq!(key(&["files.file", "files.file"]), "files.file");
        assert_eq!(key(&["files.file", "files.auth"]), "files.mixed");
        assert_eq!(key(&["files.file", "billing.file"]), "mixed.mixed");
        assert_eq!(key(&["files.mixed", "files.file"]), "files.mixed");
    }
}
