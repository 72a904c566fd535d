//! The outbox and the publish loop: buffers gathered for a linger, grouped
//! into compressed messages, up to four publishes awaiting confirms, the
//! rest held in memory up to a budget, then spilled.

use super::*;

/// Events waiting for the spool, and whether a thread is writing them.
#[derive(Default)]
pub(super) struct Overflow {
    pub(super) waiting: Vec<Lines>,
    pub(super) flushing: bool,
}

/// The most events published in one batch.
pub(super) const MAX_BATCH: usize = 5_000;
/// Publishes awaiting their confirms at once (each on a channel of its own).
pub(super) const IN_FLIGHT: usize = 4;
/// The compressed bytes the publisher holds, waiting to be published or
/// confirmed, in KiB: 16 MiB, some 500,000 events of ~30 bytes, seconds of
/// a busy app's events. A broker slow to confirm for a while (a busy
/// 2-core machine has shown pauses of over a second) is waited for in
/// memory; the queue fills, and events go to the spool, only beyond it.
pub(super) const HELD_KIB: usize = 16 * 1024;

/// The most compressed bytes one publish takes from the outbox (~35,000
/// events): a publish that fails spools what it took, so neither its
/// decoding nor the duplicates of what it had sent grow with the backlog.
pub(super) const LAUNCH_BYTES: usize = HELD_KIB * 1024 / (4 * IN_FLIGHT);

/// Batches compressed and not yet published, oldest first, each with its
/// share of [`HELD_KIB`]: gathered while every publish awaits its confirms,
/// then sent by the next one free, up to [`LAUNCH_BYTES`] at a time.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) batches: std::collections::VecDeque<(
        crate::publisher::Prepared,
        tokio::sync::OwnedSemaphorePermit,
    )>,
}

impl Outbox {
    pub(super) fn add(
        &mut self,
        prepared: crate::publisher::Prepared,
        held: tokio::sync::OwnedSemaphorePermit,
    ) {
        self.batches.push_back((prepared, held));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The oldest batches, merged, up to [`LAUNCH_BYTES`] (one at least).
    pub(super) fn take(
        &mut self,
    ) -> Option<(
        crate::publisher::Prepared,
        tokio::sync::OwnedSemaphorePermit,
    )> {
        let (mut messages, mut held) = self.batches.pop_front()?;
        while let Some((next, _)) = self.batches.front() {
            if messages.bytes() + next.bytes() > LAUNCH_BYTES {
                break;
            }
            let Some((next, share)) = self.batches.pop_front() else {
                break;
            };
            messages.append(next);
            held.merge(share);
        }
        Some((messages, held))
    }
}

/// The most NDJSON bytes in one message (whole hand-offs, so one hand-off
/// of 64 large events may exceed it alone): well under what the writer
/// decodes (64 MiB), however much metadata the app attaches.
pub(super) const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Hand-offs grouped, in order, into messages of up to `events_per_message`
/// events and [`MAX_MESSAGE_BYTES`] (a hand-off never holds more events).
pub(super) fn group(
    handoffs: impl IntoIterator<Item = Lines>,
    events_per_message: usize,
) -> Vec<Vec<Lines>> {
    let mut messages: Vec<Vec<Lines>> = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    for lines in handoffs {
        if messages.is_empty()
            || events + lines.count > events_per_message
            || bytes + lines.body.len() > MAX_MESSAGE_BYTES
        {
            messages.push(Vec::new());
            (events, bytes) = (0, 0);
        }
        events += lines.count;
        bytes += lines.body.len();
        if let Some(last) = messages.last_mut() {
            last.push(lines);
        }
    }
    messages
}

pub(super) async fn publish_loop(
    mut rx: mpsc::Receiver<Lines>,
    publisher: Publisher,
    spiller: Arc<Spiller>,
    (config, signals): (Arc<AuditConfig>, Arc<Signals>),
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let held = Arc::new(tokio::sync::Semaphore::new(HELD_KIB));
    let mut outbox = Outbox::default();
    let mut handoffs = Vec::new();
    let mut closing = signals.closing.subscribe();
    // Sends what the outbox holds on a publish of its own.
    let launch = |outbox: &mut Outbox, permit: tokio::sync::OwnedSemaphorePermit| {
        let Some((messages, held)) = outbox.take() else {
            return;
        };
        let (publisher, spiller) = (publisher.clone(), spiller.clone());
        let hurry = signals.hurry.subscribe();
        tokio::spawn(async move {
            publish_or_spill(&publisher, &spiller, &messages, hurry).await;
            drop((held, permit));
        });
    };
    loop {
        let closed = *closing.borrow_and_update();
        let taken = if closed {
            // Shutdown: what is queued is taken (hand-offs from now on are
            // spilled), then the loop ends.
            rx.close();
            rx.recv_many(&mut handoffs, MAX_BATCH / HANDOFF).await
        } else {
            tokio::select! {
                taken = rx.recv_many(&mut handoffs, MAX_BATCH / HANDOFF) => taken,
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
        let mut count: usize = handoffs.iter().map(|l: &Lines| l.count).sum();
        if count < config.events_per_message {
            // Linger so that a busy app hands over hundreds of events per
            // wake-up, and they leave in few messages (not at shutdown).
            if !closed {
                tokio::select! {
                    () = tokio::time::sleep(config.linger) => {}
                    () = signals.batch_queued.notified() => {}
                    _ = closing.changed() => {}
                }
            }
            while count < MAX_BATCH {
                match rx.try_recv() {
                    Ok(lines) => {
                        count += lines.count;
                        handoffs.push(lines);
                    }
                    Err(_) => break,
                }
            }
        }
        let prepared = prepare(&mut handoffs, &config, &publisher, &spiller);
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
        outbox.add(prepared, share);
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
    // Every batch confirmed or given to the spool's writer (shutdown then
    // waits for that too).
    let _ = in_flight.acquire_many(IN_FLIGHT as u32).await;
    signals.drained.send_replace(true);
}

/// Publishes `messages`; should the broker refuse them, or shutdown's grace
/// run out (`hurry`) before it confirms, their events go to the spool.
///
/// New events do not wait behind spooled ones: the spool is replayed
/// alongside. Sending everything through the spool while it is not empty
/// would make it the path of every event under load (an fsync, a read and a
/// re-parse each), and the app could never catch up again. Order in the
/// queue carries no meaning: every event has its `occurred_at`.
async fn publish_or_spill(
    publisher: &Publisher,
    spiller: &Arc<Spiller>,
    messages: &crate::publisher::Prepared,
    mut hurry: watch::Receiver<bool>,
) {
    let published = tokio::select! {
        published = publisher.send_prepared(messages) => published.is_ok(),
        _ = hurry.wait_for(|h| *h) => false,
    };
    if !published {
        spiller.spill(messages.ndjson().into_iter().filter_map(|body| match body {
            Ok(body) => Some(Lines {
                count: body.iter().filter(|b| **b == b'\n').count(),
                body,
                action: Action::None,
            }),
            Err(e) => {
                // Compressed here a moment ago: not expected.
                tracing::error!(error = %e, "audit events could not be decoded for the spool");
                None
            }
        }));
    }
}

/// Groups the hand-offs into messages and compresses them now, so that what
/// waits for the broker is small and the workers' buffers go round again at
/// once.
fn prepare(
    handoffs: &mut Vec<Lines>,
    config: &AuditConfig,
    publisher: &Publisher,
    spiller: &Spiller,
) -> crate::publisher::Prepared {
    let messages = group(handoffs.drain(..), config.events_per_message);
    let prepared = {
        let bodies: Vec<(String, Vec<&[u8]>)> = messages
            .iter()
            .map(|parts| {
                let key = routing_key(parts, config);
                (key, parts.iter().map(|l| l.body.as_slice()).collect())
            })
            .collect();
        publisher.prepare_ndjson(&bodies)
    };
    for lines in messages.into_iter().flatten() {
        spiller.buffers.give_back(lines.body);
    }
    prepared
}
